"""Float64 references for every gpt-oss building block, written from the published gpt-oss math.

Why this exists: a kernel can only be called wrong against something that is right. Each function here is the
published model's arithmetic (OpenAI's gpt-oss reference and model card) evaluated in float64, with no shortcuts
that could hide a fault: no fused kernels, no max subtraction needed for stability beyond what float64 gives.

Conventions:
- Every function takes torch tensors of any dtype, converts them to float64 (the values as the kernel under test
  received them, i.e. already rounded to the test dtype) and returns float64 tensors on the CPU.
- Shapes are documented per function; "T" is tokens, "H" hidden size, "D" head_dim, "E" experts, "V" vocabulary.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64

# gpt-oss constants (OpenAI gpt_oss/torch/model.py and the model card).
RMS_EPS = 1e-5
ROPE_THETA = 150000.0
YARN_FACTOR = 32.0
YARN_BETA_FAST = 32.0  # "ntk_beta": bounds the high-frequency (extrapolated) end of the ramp
YARN_BETA_SLOW = 1.0  # "ntk_alpha": bounds the low-frequency (interpolated) end of the ramp
YARN_ORIGINAL_CONTEXT = 4096
SLIDING_WINDOW = 128
SWIGLU_LIMIT = 7.0
SWIGLU_ALPHA = 1.702
# E2M1 code -> value (bit 3 is the sign, codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6).
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
E8M0_BIAS = 127


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", F64)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis. x [..., H], weight [H]."""
    x = _f64(x)
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * _f64(weight)


def yarn_correction_bounds(head_dim: int, truncate: bool, base: float = ROPE_THETA) -> tuple[float, float]:
    """The YaRN ramp bounds (low, high) in units of rotary-pair index; truncation rounds them outwards.

    A pair i rotates (original_context / (2 pi)) * base^(-2i/D) times over the original context; the ramp runs
    between the pair that rotates beta_fast times (low) and the one that rotates beta_slow times (high).
    """
    half = head_dim / 2

    def bound(rotations: float) -> float:
        return half * math.log(YARN_ORIGINAL_CONTEXT / (rotations * 2 * math.pi)) / math.log(base)

    low, high = bound(YARN_BETA_FAST), bound(YARN_BETA_SLOW)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0.0), min(high, head_dim - 1.0)


def yarn_inv_freq(
    head_dim: int = 64, truncate: bool = False, base: float = ROPE_THETA, factor: float = YARN_FACTOR
) -> tuple[torch.Tensor, float]:
    """(inv_freq [D/2] in radians per position, attention scaling) for YaRN.

    gpt-oss uses fractional ramp bounds (truncate=False); truncate=True is the YaRN paper's integer bounds.
    The attention scaling ("concentration") 0.1 ln(factor) + 1 multiplies cos and sin.
    """
    freq = base ** (torch.arange(0, head_dim, 2, dtype=F64) / head_dim)
    extrapolation = 1.0 / freq
    interpolation = 1.0 / (factor * freq)
    low, high = yarn_correction_bounds(head_dim, truncate, base)
    if high == low:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=F64) - low) / (high - low)).clamp(0.0, 1.0)
    # ramp 0: high frequency, kept as trained (extrapolation); ramp 1: low frequency, interpolated by the factor.
    inv_freq = interpolation * ramp + extrapolation * (1.0 - ramp)
    return inv_freq, 0.1 * math.log(factor) + 1.0


def yarn_table(head_dim: int = 64, truncate: bool = False) -> torch.Tensor:
    """[D/2 + 1]: the inverse frequencies followed by the attention scaling (the yarn-freqs kernel's output)."""
    inv_freq, scale = yarn_inv_freq(head_dim, truncate)
    return torch.cat([inv_freq, torch.tensor([scale], dtype=F64)])


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, truncate: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX-style (half-split) YaRN rotary embedding. q [T, Hq, D], k [T, Hkv, D], positions [T] (integers)."""
    q, k = _f64(q), _f64(k)
    d = q.shape[-1]
    inv_freq, scale = yarn_inv_freq(d, truncate)
    angle = _f64(positions)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = (torch.cos(angle) * scale)[:, None, :]
    sin = (torch.sin(angle) * scale)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    return rotate(q), rotate(k)


def attention_mask(q_positions: torch.Tensor, kv_len: int, window: int | None) -> torch.Tensor:
    """Boolean [Tq, S]: key j is visible to the query at position p when j <= p and (no window or j > p - window).

    A window of 128 therefore shows exactly 128 keys, the query's own included (OpenAI's mask hides j <= p - 128).
    """
    p = q_positions.to("cpu", torch.long)[:, None]
    j = torch.arange(kv_len)[None, :]
    visible = j <= p
    if window is not None:
        visible &= j > p - window
    return visible


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Causal GQA attention with a learned sink logit per head. Queries are the last Tq of the S positions.

    q [B, Tq, Hq, D], k and v [B, S, Hkv, D], sinks [Hq] (logits). Each head's softmax runs over its visible keys
    plus the sink; the sink's probability is dropped (it takes mass, contributes no value). Returns [B, Tq, Hq, D].
    """
    q, k, v, s = _f64(q), _f64(k), _f64(v), _f64(sinks)
    b, tq, hq, d = q.shape
    kv_len, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bshd->bhqs", q, k) * scale
    visible = attention_mask(torch.arange(kv_len - tq, kv_len), kv_len, window)
    scores = scores.masked_fill(~visible, -math.inf)
    sink = s.view(1, hq, 1, 1).expand(b, hq, tq, 1)
    logits = torch.cat([scores, sink], dim=-1)
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    return torch.einsum("bhqs,bshd->bqhd", probs, v)


def router(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Top-k of the logits, then a softmax over the k winners. logits [T, E] -> dense weights [T, E] (0 if unpicked)."""
    x = _f64(logits)
    values, idx = torch.topk(x, top_k, dim=-1)
    weights = torch.softmax(values, dim=-1)
    return torch.zeros_like(x).scatter(-1, idx, weights)


def swiglu(gate_up: torch.Tensor, limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    """gpt-oss SwiGLU on interleaved halves: [T, 2I] -> [T, I].

    gate = x[..., 0::2] clamped above at limit, linear = x[..., 1::2] clamped to +-limit,
    out = gate * sigmoid(alpha * gate) * (linear + 1).
    """
    x = _f64(gate_up)
    gate = x[..., 0::2].clamp(max=limit)
    linear = x[..., 1::2].clamp(-limit, limit)
    return gate * torch.sigmoid(alpha * gate) * (linear + 1.0)


def experts(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13: torch.Tensor,
    b13: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """The routed expert MLP. x [T, H]; ids and weights [T, k]; w13 [E, H, 2I] (gate/linear interleaved), b13 [E, 2I],
    w2 [E, I, H], b2 [E, H] (Transformers' layout). out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t])."""
    x, wts = _f64(x), _f64(weights)
    w13, b13, w2, b2 = _f64(w13), _f64(b13), _f64(w2), _f64(b2)
    ids = ids.to("cpu", torch.long)
    out = torch.zeros(x.shape[0], w2.shape[-1], dtype=F64)
    for e in ids.unique().tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        h = swiglu(x[tok] @ w13[e] + b13[e])
        out.index_add_(0, tok, (h @ w2[e] + b2[e]) * wts[tok, slot, None])
    return out


def mxfp4_dequant(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """MXFP4: blocks [R, G, 16] uint8 (two E2M1 codes per byte, low nibble first), scales [R, G] uint8 (E8M0,
    2^(s - 127)) -> [R, G * 32] float64. Exact: every product is representable in float64."""
    table = torch.tensor(FP4_E2M1, dtype=F64)
    b = blocks.to("cpu", torch.long)
    codes = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(*b.shape[:-1], -1)  # [R, G, 32]
    exponent = scales.to("cpu", torch.long) - E8M0_BIAS
    values = table[codes] * torch.pow(torch.tensor(2.0, dtype=F64), exponent.to(F64))[..., None]
    return values.reshape(b.shape[0], -1)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log p over the last axis, in float64. logits [N, V] -> [N, V]."""
    return torch.log_softmax(_f64(logits), dim=-1)


def sink_probability(sink: float, n_visible: int) -> float:
    """Closed form for a query of zeros: every visible key has logit 0, so the sink takes exp(s) / (N + exp(s))."""
    return math.exp(sink) / (n_visible + math.exp(sink))
