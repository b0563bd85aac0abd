"""RMSNorm, the YaRN frequency table and the rotary embedding: specs, inputs and every implementation found.

Why this exists: the two stacks differ exactly here in ways that matter (Transformers multiplies the fp32 norm
weight before casting down, vLLM casts first; vLLM once rounded the YaRN ramp bounds to integers where gpt-oss uses
fractional ones). Each kernel is checked on inputs built to expose such faults: an eps-dominated row, massive
activations, positions near the end of the 131,072-token context, both ramp variants.

Inputs (keyword arguments of every implementation):
  rmsnorm:    x [T, H] (test dtype), weight [H] (test dtype values), eps (float)        -> [T, H]
  yarn-freqs: head_dim (int), truncate (bool)                                        -> [D/2 + 1] float32
  rope:       q [T, Hq, D], k [T, Hkv, D] (test dtype), positions [T] int64, truncate -> (q', k')
"""

from __future__ import annotations

import functools

import torch

from kernels_check import reference as R
from kernels_check.base import Case, Impl, KernelSpec, prefix_stable, torch_dtype
from kernels_check.registry import hf_version, module_available, vllm_config, vllm_version

HIDDEN = 2880  # gpt-oss hidden size: the reduction length of the norm
HQ, HKV, HEAD_DIM = 4, 2, 64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- RMSNorm -------------------------------------------------------------------------------------------------------


def rmsnorm_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)
    w = (0.5 + torch.rand(HIDDEN, generator=_gen(1)) * 1.5).to(dt)

    seeds = {"random": 2, "constant": 3, "massive-activation": 4, "eps-dominated": 5}

    def build(kind: str):
        def make(n: int) -> dict:
            g = _gen(seeds[kind])
            if kind == "random":
                x = torch.randn(n, HIDDEN, generator=g) * 2
            elif kind == "constant":
                x = (torch.rand(n, 1, generator=g) * 4 - 2).expand(n, HIDDEN).clone()
            elif kind == "massive-activation":
                x = torch.randn(n, HIDDEN, generator=g)
                x[:, 7] = 600.0
                x[:, 1234] = -900.0
            else:  # eps-dominated: mean(x^2) ~ 1e-6, well under eps = 1e-5
                x = torch.randn(n, HIDDEN, generator=g) * 1e-3
            return {"x": x.to(dt), "weight": w, "eps": R.RMS_EPS}

        return prefix_stable(make, ("x",), 300)

    return [
        Case("random", build("random"), 16, ("x",), invariance=True),
        Case("constant", build("constant"), 8, ("x",), note="closed form w * c / sqrt(c^2 + eps)"),
        Case("massive-activation", build("massive-activation"), 8, ("x",)),
        Case("eps-dominated", build("eps-dominated"), 8, ("x",)),
    ]


def rmsnorm_baseline(x, weight, eps):
    """OpenAI's reference: fp32 compute, the fp32 scale multiplied before the cast down."""
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)
    return (t * weight.float()).to(x.dtype)


RMSNORM = KernelSpec(
    name="rmsnorm",
    title="RMSNorm (fp32 compute, eps 1e-5)",
    dtypes=("bfloat16", "float16", "float32"),
    cases=rmsnorm_cases,
    reference=lambda i: R.rmsnorm(i["x"], i["weight"], i["eps"]),
    baseline=rmsnorm_baseline,
)


def _hf_rmsnorm(device: str):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm

    norm = GptOssRMSNorm(HIDDEN, eps=R.RMS_EPS).to(device).eval()

    def fn(x, weight, eps):
        # gpt-oss lists its norms in _keep_in_fp32_modules, which Transformers honours for float16 models only;
        # either way the fp32 activations promote the weight, so the product is taken in fp32.
        norm.variance_epsilon = eps
        norm.weight = torch.nn.Parameter(weight.to(torch.float32 if x.dtype == torch.float16 else x.dtype))
        return norm(x)

    return fn


def _vllm_rmsnorm_native(device: str):
    from vllm import ir

    native = ir.ops.rms_norm.impls["native"].impl_fn
    return lambda x, weight, eps: native(x, weight.to(x.dtype), eps)


def _vllm_rmsnorm_c(device: str):
    import vllm._custom_ops  # noqa: F401  (loads the compiled ops into torch.ops._C)

    def fn(x, weight, eps):
        out = torch.empty_like(x)
        torch.ops._C.rms_norm(out, x.contiguous(), weight.to(x.dtype).contiguous(), eps)
        return out

    return fn


# ---- YaRN frequencies and rotary embedding --------------------------------------------------------------------------


def yarn_cases(dtype: str, quick: bool) -> list[Case]:
    def make(truncate: bool):
        return lambda n: {"head_dim": HEAD_DIM, "truncate": truncate}

    return [
        Case("fractional-ramp", make(False), 1, (), boundary=False, note="gpt-oss: no truncation"),
        Case("truncated-ramp", make(True), 1, (), boundary=False, note="YaRN paper: integer ramp bounds"),
    ]


def yarn_baseline(head_dim, truncate):
    """The published formula evaluated in float32 torch."""
    freq = R.ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    low, high = R.yarn_correction_bounds(head_dim, truncate)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    inv = 1.0 / (R.YARN_FACTOR * freq) * ramp + 1.0 / freq * (1 - ramp)
    return torch.cat([inv, torch.tensor([0.1 * torch.log(torch.tensor(R.YARN_FACTOR)).item() + 1.0])])


YARN = KernelSpec(
    name="yarn-freqs",
    title="YaRN inverse frequencies and attention scaling",
    dtypes=("float32",),
    cases=yarn_cases,
    reference=lambda i: R.yarn_table(i["head_dim"], i["truncate"]),
    baseline=yarn_baseline,
    unit_dtype=lambda d: "float32",
    fixed_dtype=True,
)


@functools.lru_cache(maxsize=4)
def _hf_rope_config(truncate: bool):
    from transformers import GptOssConfig

    return GptOssConfig(
        hidden_size=64,
        head_dim=HEAD_DIM,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        num_hidden_layers=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": R.ROPE_THETA,
            "factor": R.YARN_FACTOR,
            "beta_fast": R.YARN_BETA_FAST,
            "beta_slow": R.YARN_BETA_SLOW,
            "truncate": truncate,
            "original_max_position_embeddings": R.YARN_ORIGINAL_CONTEXT,
        },
    )


def _hf_yarn(device: str):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def fn(head_dim, truncate):
        inv, scale = ROPE_INIT_FUNCTIONS["yarn"](_hf_rope_config(truncate), device=torch.device(device))
        return torch.cat([inv.float(), torch.tensor([scale], dtype=torch.float32, device=inv.device)])

    return fn


@functools.lru_cache(maxsize=16)
def _vllm_rope(truncate: bool, dtype_key: str):
    """One vLLM YaRN rotary module per (truncate, query dtype): vLLM converts its cos/sin cache to the query dtype
    in place on first use, so one shared module would carry one dtype's rounding into the next dtype's check."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import YaRNScalingRotaryEmbedding

    with set_current_vllm_config(vllm_config()):
        return YaRNScalingRotaryEmbedding(
            HEAD_DIM,
            HEAD_DIM,
            R.YARN_ORIGINAL_CONTEXT,
            R.ROPE_THETA,
            True,
            R.YARN_FACTOR,
            torch.float32,
            beta_fast=R.YARN_BETA_FAST,
            beta_slow=R.YARN_BETA_SLOW,
            truncate=truncate,
        )


def _vllm_yarn(device: str):
    def fn(head_dim, truncate):
        rope = _vllm_rope(truncate, "table")
        inv = rope._compute_inv_freq(rope.scaling_factor).float()
        return torch.cat([inv, torch.tensor([rope.mscale], dtype=torch.float32)]).to(device)

    return fn


def rope_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)

    def build(seed: int, lo: int, hi: int):
        def make(n: int) -> dict:
            g = _gen(seed)
            return {
                "q": torch.randn(n, HQ, HEAD_DIM, generator=g).to(dt),
                "k": torch.randn(n, HKV, HEAD_DIM, generator=g).to(dt),
                "positions": torch.randint(lo, hi, (n,), generator=g),
                "truncate": False,
            }

        return prefix_stable(make, ("q", "k", "positions"), 300)

    return [
        Case("positions<4096", build(11, 0, 4096), 64, ("q", "k", "positions"), invariance=True),
        Case("positions>100k", build(12, 100_000, 131_072), 64, ("q", "k", "positions"), note="end of the context"),
    ]


def rope_baseline(q, k, positions, truncate):
    """Published math at the test dtype: fp32 angles and cos/sin (times the YaRN scaling), cast to the test
    dtype, then the half-split rotation in the test dtype (as OpenAI's reference does)."""
    table = yarn_baseline(q.shape[-1], truncate).to(q.device)
    inv, scale = table[:-1], table[-1]
    angle = positions.float()[:, None] * inv[None, :]
    cos = (angle.cos() * scale).to(q.dtype)[:, None, :]
    sin = (angle.sin() * scale).to(q.dtype)[:, None, :]

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    return rot(q), rot(k)


ROPE = KernelSpec(
    name="rope",
    title="YaRN rotary embedding (half-split / NeoX)",
    dtypes=("bfloat16", "float16", "float32"),
    cases=rope_cases,
    reference=lambda i: torch.cat(R.rope(i["q"], i["k"], i["positions"], i["truncate"]), dim=1),
    baseline=rope_baseline,
    canon=lambda out: torch.cat(list(out), dim=1) if isinstance(out, tuple | list) else out,
)


def _hf_rope(device: str):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding, apply_rotary_pos_emb

    modules = {t: GptOssRotaryEmbedding(_hf_rope_config(t)).to(device) for t in (False, True)}

    def fn(q, k, positions, truncate):
        cos, sin = modules[truncate](q, positions[None, :])
        qe, ke = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
        return qe[0].transpose(0, 1), ke[0].transpose(0, 1)

    return fn


def _vllm_rope_fn(method: str):
    def factory(device: str):
        def fn(q, k, positions, truncate):
            rope = _vllm_rope(truncate, f"{q.dtype}/{method}").to(device)
            t = q.shape[0]
            qq, kk = q.reshape(t, -1).clone(), k.reshape(t, -1).clone()
            qo, ko = getattr(rope, method)(positions, qq, kk)
            return qo.reshape(q.shape), ko.reshape(k.shape)

        return fn

    return factory


# ---- discovery ------------------------------------------------------------------------------------------------------


def implementations(device: str) -> list[Impl]:
    """Every RMSNorm / YaRN / rope implementation this machine has, with versions and skip reasons."""
    tv, hv, vv = torch.__version__, hf_version(), vllm_version()
    hf_ok, hf_why = module_available("transformers.models.gpt_oss.modeling_gpt_oss")
    v_ok, v_why = module_available("vllm._custom_ops")
    impls = [
        Impl("torch", "rmsnorm", "torch", tv, lambda d: rmsnorm_baseline, note="OpenAI reference math in plain torch"),
        Impl(
            "hf-GptOssRMSNorm",
            "rmsnorm",
            "transformers",
            hv,
            _hf_rmsnorm,
            hf_ok,
            hf_why,
            note="weight in the model dtype (fp32 for fp16 models), multiplied in fp32 before the cast down",
        ),
        Impl(
            "vllm-ir-native",
            "rmsnorm",
            "vllm",
            vv,
            _vllm_rmsnorm_native,
            v_ok,
            v_why,
            note="vllm.ir.ops.rms_norm 'native' (what RMSNorm runs on the CPU): casts to the weight dtype first",
        ),
        Impl(
            "vllm-_C.rms_norm",
            "rmsnorm",
            "vllm",
            vv,
            _vllm_rmsnorm_c,
            v_ok,
            v_why,
            note="torch.ops._C.rms_norm (the compiled kernel; vLLM's IR dispatch uses it on GPUs)",
        ),
        Impl("torch", "yarn-freqs", "torch", tv, lambda d: yarn_baseline, note="published formula in float32"),
        Impl(
            "hf-rope_init_yarn",
            "yarn-freqs",
            "transformers",
            hv,
            _hf_yarn,
            hf_ok,
            hf_why,
            note="transformers.modeling_rope_utils ROPE_INIT_FUNCTIONS['yarn']",
        ),
        Impl(
            "vllm-YaRNScalingRotaryEmbedding",
            "yarn-freqs",
            "vllm",
            vv,
            _vllm_yarn,
            v_ok,
            v_why,
            note="_compute_inv_freq and mscale of the module vLLM's gpt-oss builds",
        ),
        Impl("torch", "rope", "torch", tv, lambda d: rope_baseline, note="fp32 angles, rotation in the test dtype"),
        Impl(
            "hf-apply_rotary_pos_emb",
            "rope",
            "transformers",
            hv,
            _hf_rope,
            hf_ok,
            hf_why,
            note="GptOssRotaryEmbedding (cos/sin cast to the test dtype) + apply_rotary_pos_emb",
        ),
        Impl(
            "vllm-rope-forward_native",
            "rope",
            "vllm",
            vv,
            _vllm_rope_fn("forward_native"),
            v_ok,
            v_why,
            note="fp32 cos/sin cache cast to the query dtype; the dispatch vLLM's default config picks on the CPU",
        ),
        Impl(
            f"vllm-rope-forward_{'cuda' if device == 'cuda' else 'cpu'}",
            "rope",
            "vllm",
            vv,
            _vllm_rope_fn("forward_cuda" if device == "cuda" else "forward_cpu"),
            v_ok,
            v_why,
            note="torch.ops._C.rotary_embedding (in place, NeoX style)",
        ),
    ]
    return impls


SPECS = (RMSNORM, YARN, ROPE)
