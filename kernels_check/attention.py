"""Attention with per-head sinks, GQA and the 128-token sliding window: spec, inputs and implementations.

Why this exists: every known gpt-oss attention bug lives in one of three places this check aims at directly: the
sink (dropped by a backend that "supports" it), the window (off by one, or unmasked blocks), and GQA head mapping.
The inputs are built so that each fault moves the output by far more than rounding: queries aimed exactly at the
key one step outside the window, a query of zeros whose answer is the closed form exp(s) / (N + exp(s)) for the
sink, sinks that dominate, prefill and decode, a 1,024-token sequence.

Inputs (keyword arguments of every implementation):
  q [B, Tq, Hq, D], k and v [B, S, Hkv, D] (test dtype; the queries are the last Tq of the S positions),
  sinks [Hq] (test dtype), scale (float, 1/sqrt(D)), window (int or None)        -> [B, Tq, Hq, D]
"""

from __future__ import annotations

import functools
import math

import torch

from kernels_check import reference as R
from kernels_check.base import Case, Impl, KernelSpec, prefix_stable, torch_dtype
from kernels_check.registry import hf_version, module_available, vllm_version

HQ, HKV, D = 4, 2, 64
SCALE = 1.0 / math.sqrt(D)
BLOCK = 128  # vLLM's default CPU KV-cache block size


def _edge_qk(n: int, t: int, window: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries that score highest on the keys at distance window-1 (inside) and window (one step outside).

    Key j carries 8 * e_(j mod D); the query at position p carries 8 * (e_((p-window+1) mod D) + e_((p-window) mod D)),
    so its top-scoring keys (logit 8 after the 1/8 scale) sit on both sides of the window edge. A window that is one
    too wide or too narrow changes which of them count, and the output by a large fraction of a value vector.
    """
    pos = torch.arange(t)
    k = torch.zeros(n, t, HKV, D)
    k[:, pos, :, pos % D] = 8.0
    q = torch.zeros(n, t, HQ, D)
    q[:, pos, :, (pos - window + 1) % D] += 8.0
    q[:, pos, :, (pos - window) % D] += 8.0
    return q + 0.05 * torch.randn(q.shape, generator=g), k + 0.05 * torch.randn(k.shape, generator=g)


def attention_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)
    sinks = torch.tensor([-2.0, 0.0, 3.0, 8.0]).to(dt)
    qkv = ("q", "k", "v")

    def build(seed: int, t: int, tq: int, window: int | None, kind: str):
        def make(n: int) -> dict:
            g = torch.Generator().manual_seed(seed)
            if kind == "edge":
                q, k = _edge_qk(n, t, window, g)
                q = q[:, t - tq :]
            else:
                q, k = torch.randn(n, tq, HQ, D, generator=g), torch.randn(n, t, HKV, D, generator=g)
            if kind == "zero-q":
                q = torch.zeros_like(q)
            v = torch.randn(n, t, HKV, D, generator=g)
            return {"q": q.to(dt), "k": k.to(dt), "v": v.to(dt), "sinks": sinks, "scale": SCALE, "window": window}

        return prefix_stable(make, qkv, 64)

    chunk = {"boundary_axes": {"q": 1}, "out_boundary_axis": 1, "boundary_suffix": True}
    cases = [
        Case("prefill-300", build(21, 300, 300, None, "random"), 2, qkv, invariance=True, batch_sizes=(3, 8), **chunk),
        Case(
            "window-edge",
            build(22, 300, 300, R.SLIDING_WINDOW, "edge"),
            1,
            qkv,
            invariance=True,
            batch_sizes=(3,),
            note="top keys at distance 127 and 128",
            **chunk,
        ),
        Case(
            "sink-zero-query",
            build(23, 300, 300, R.SLIDING_WINDOW, "zero-q"),
            1,
            qkv,
            note="closed form: the sink takes exp(s) / (N + exp(s))",
        ),
        Case(
            "decode-window-edge",
            build(24, 300, 1, R.SLIDING_WINDOW, "edge"),
            4,
            qkv,
            invariance=True,
            boundary=False,
            note="one query at position 299 against 300 keys",
        ),
    ]
    if not quick:
        cases.append(Case("prefill-1024", build(25, 1024, 1024, R.SLIDING_WINDOW, "random"), 1, qkv))
    return cases


def attention_baseline(q, k, v, sinks, scale, window):
    """OpenAI's reference sdpa, everything in the test dtype: scores, mask, sink column, softmax, weighted sum."""
    b, tq, hq, _ = q.shape
    s, hkv = k.shape[1], k.shape[2]
    k = k.repeat_interleave(hq // hkv, dim=2)
    v = v.repeat_interleave(hq // hkv, dim=2)
    scores = torch.einsum("bqhd,bshd->bhqs", q, k) * scale
    visible = R.attention_mask(torch.arange(s - tq, s), s, window).to(q.device)
    scores = scores.masked_fill(~visible, -math.inf)
    logits = torch.cat([scores, sinks.to(q.dtype).view(1, hq, 1, 1).expand(b, hq, tq, 1)], dim=-1)
    weights = torch.softmax(logits, dim=-1)[..., :-1]
    return torch.einsum("bhqs,bshd->bqhd", weights, v)


ATTENTION = KernelSpec(
    name="attention",
    title="attention with sinks, GQA 2:1, 128-token sliding window",
    dtypes=("bfloat16", "float16", "float32"),
    cases=attention_cases,
    reference=lambda i: R.attention(i["q"], i["k"], i["v"], i["sinks"], i["scale"], i["window"]),
    baseline=attention_baseline,
)


@functools.lru_cache(maxsize=1)
def _hf_config():
    from transformers import GptOssConfig

    cfg = GptOssConfig(
        hidden_size=64,
        head_dim=D,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        num_hidden_layers=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        intermediate_size=64,
        vocab_size=128,
        sliding_window=R.SLIDING_WINDOW,
    )
    cfg._attn_implementation = "eager"
    return cfg


def _hf_attention(interface: str):
    """Transformers' GptOssAttention core: its mask functions (masking_utils) and the chosen attention interface."""

    def factory(device: str):
        from transformers import masking_utils as mu
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, eager_attention_forward

        module = GptOssAttention(_hf_config(), layer_idx=0).to(device).eval()
        if interface == "eager":
            forward, make_mask = eager_attention_forward, mu.eager_mask
        else:
            from transformers.integrations.flex_attention import flex_attention_forward

            forward, make_mask = flex_attention_forward, mu.flex_attention_mask

        def fn(q, k, v, sinks, scale, window):
            b, tq, s = q.shape[0], q.shape[1], k.shape[1]
            module.sinks = torch.nn.Parameter(sinks.clone(), requires_grad=False)
            mask_fn = mu.sliding_window_causal_mask_function(window) if window else mu.causal_mask_function
            kwargs = {"dtype": q.dtype} if interface == "eager" else {}
            mask = make_mask(
                batch_size=b,
                q_length=tq,
                kv_length=s,
                q_offset=s - tq,
                mask_function=mask_fn,
                device=q.device,
                **kwargs,
            )
            out, _ = forward(
                module,
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                mask,
                scaling=scale,
                dropout=0.0,
                sliding_window=window,
                s_aux=module.sinks,
            )
            return out

        return fn

    return factory


def _vllm_cpu_attention(device: str):
    """vLLM's CPU attention op, driven the way its CPU backend drives it: a paged KV cache of 128-token blocks,
    reshape_and_cache, scheduler metadata, then cpu_attention_with_kv_cache with the sinks as s_aux."""
    import vllm._custom_ops as ops
    from vllm import envs
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    def fn(q, k, v, sinks, scale, window):
        b, tq, hq, d = q.shape
        s, hkv = k.shape[1], k.shape[2]
        isa = _get_attn_isa(q.dtype, BLOCK, d)
        per_seq = -(-s // BLOCK)
        cache = torch.zeros(b * per_seq, hkv, 2 * BLOCK, d, dtype=q.dtype)
        key_cache, value_cache = cache.chunk(2, dim=2)
        slots = (torch.arange(b)[:, None] * per_seq * BLOCK + torch.arange(s)[None, :]).reshape(-1)
        ops.cpu_attn_reshape_and_cache(
            k.reshape(b * s, hkv, d), v.reshape(b * s, hkv, d), key_cache, value_cache, slots, isa
        )
        q_start = (torch.arange(b + 1) * tq).to(torch.int32)
        seq_lens = torch.full((b,), s, dtype=torch.int32)
        table = (torch.arange(b)[:, None] * per_seq + torch.arange(per_seq)[None, :]).to(torch.int32)
        w = window if window else -1
        meta = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=b,
            num_heads=hq,
            num_kv_heads=hkv,
            head_dim=d,
            seq_lens=seq_lens,
            dtype=q.dtype,
            query_start_loc=q_start,
            causal=True,
            sliding_window_size=w,
            isa=isa,
            enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
        )
        out = torch.empty(b * tq, hq, d, dtype=q.dtype)
        s_aux = sinks if sinks.dtype in (torch.bfloat16, torch.float32) else sinks.float()  # as the backend does
        ops.cpu_attention_with_kv_cache(
            query=q.reshape(b * tq, hq, d).contiguous(),
            key_cache=key_cache,
            value_cache=value_cache,
            output=out,
            query_start_loc=q_start,
            seq_lens=seq_lens,
            scale=scale,
            causal=True,
            alibi_slopes=None,
            sliding_window=w,
            block_table=table,
            softcap=0.0,
            scheduler_metadata=meta,
            s_aux=s_aux,
        )
        return out.reshape(b, tq, hq, d)

    return fn


def _vllm_flash_attn(device: str):
    """vLLM's FlashAttention 3 with sinks (s_aux), varlen, contiguous K/V (unverified without a Hopper GPU)."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    def fn(q, k, v, sinks, scale, window):
        b, tq, hq, d = q.shape
        s = k.shape[1]
        cu_q = (torch.arange(b + 1, device=q.device) * tq).to(torch.int32)
        cu_k = (torch.arange(b + 1, device=q.device) * s).to(torch.int32)
        out = flash_attn_varlen_func(
            q.reshape(b * tq, hq, d),
            k.reshape(b * s, *k.shape[2:]),
            v.reshape(b * s, *v.shape[2:]),
            tq,
            cu_q,
            s,
            cu_seqlens_k=cu_k,
            softmax_scale=scale,
            causal=True,
            window_size=[window - 1, 0] if window else [-1, -1],
            s_aux=sinks.float(),
            fa_version=3,
        )
        return out.reshape(b, tq, hq, d)

    return fn


def _vllm_triton_attention(device: str):
    """vLLM's Triton unified attention with sinks on a paged cache [blocks, 16, Hkv, D] (unverified without a GPU)."""
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    def fn(q, k, v, sinks, scale, window):
        b, tq, hq, d = q.shape
        s, hkv, blk = k.shape[1], k.shape[2], 16
        per_seq = -(-s // blk)
        kc = torch.zeros(b * per_seq * blk, hkv, d, dtype=q.dtype, device=q.device)
        vc = torch.zeros_like(kc)
        idx = (torch.arange(b, device=q.device)[:, None] * per_seq * blk + torch.arange(s, device=q.device)).reshape(-1)
        kc[idx], vc[idx] = k.reshape(b * s, hkv, d), v.reshape(b * s, hkv, d)
        out = torch.empty(b * tq, hq, d, dtype=q.dtype, device=q.device)
        table = torch.arange(b, device=q.device)[:, None] * per_seq + torch.arange(per_seq, device=q.device)
        unified_attention(
            q=q.reshape(b * tq, hq, d),
            k=kc.view(-1, blk, hkv, d),
            v=vc.view(-1, blk, hkv, d),
            out=out,
            cu_seqlens_q=(torch.arange(b + 1, device=q.device) * tq).to(torch.int32),
            max_seqlen_q=tq,
            seqused_k=torch.full((b,), s, dtype=torch.int32, device=q.device),
            max_seqlen_k=s,
            softmax_scale=scale,
            causal=True,
            window_size=(window - 1, 0) if window else (-1, -1),
            block_table=table.to(torch.int32),
            softcap=0,
            q_descale=None,
            k_descale=None,
            v_descale=None,
            sinks=sinks.float(),
        )
        return out.reshape(b, tq, hq, d)

    return fn


def implementations(device: str) -> list[Impl]:
    """Every attention implementation this machine has (CUDA ones listed as skipped on the CPU)."""
    hv, vv = hf_version(), vllm_version()
    hf_ok, hf_why = module_available("transformers.models.gpt_oss.modeling_gpt_oss")
    v_ok, v_why = module_available("vllm._custom_ops")
    fa_ok, fa_why = module_available("vllm.vllm_flash_attn") if device == "cuda" else (False, "needs CUDA")
    tr_ok, tr_why = (
        module_available("vllm.v1.attention.ops.triton_unified_attention")
        if device == "cuda"
        else (False, "needs CUDA")
    )
    return [
        Impl(
            "torch",
            "attention",
            "torch",
            torch.__version__,
            lambda d: attention_baseline,
            note="OpenAI reference sdpa in the test dtype",
        ),
        Impl(
            "hf-eager",
            "attention",
            "transformers",
            hv,
            _hf_attention("eager"),
            hf_ok,
            hf_why,
            note="masking_utils.eager_mask + eager_attention_forward (sinks concatenated, max subtracted)",
        ),
        Impl(
            "hf-flex_attention",
            "attention",
            "transformers",
            hv,
            _hf_attention("flex"),
            hf_ok and device == "cuda",
            hf_why
            or ("Transformers refuses attention sinks with flex attention on the CPU" if device != "cuda" else None),
            devices=("cuda",),
            note="flex_attention_forward with s_aux (torch.compile)",
        ),
        Impl(
            "vllm-cpu_attention_with_kv_cache",
            "attention",
            "vllm",
            vv,
            _vllm_cpu_attention,
            v_ok and device == "cpu",
            v_why or (None if device == "cpu" else "the CPU backend's op; runs on the CPU"),
            devices=("cpu",),
            note="the CPU_ATTN backend's op on a paged cache of 128-token blocks",
        ),
        Impl(
            "vllm-flash_attn_varlen_func",
            "attention",
            "vllm",
            vv,
            _vllm_flash_attn,
            fa_ok,
            fa_why,
            devices=("cuda",),
            note="FlashAttention 3 with s_aux sinks (Hopper); adapter unverified on a GPU",
        ),
        Impl(
            "vllm-triton_unified_attention",
            "attention",
            "vllm",
            vv,
            _vllm_triton_attention,
            tr_ok,
            tr_why,
            devices=("cuda",),
            note="Triton unified attention with sinks; adapter unverified on a GPU",
        ),
    ]


SPECS = (ATTENTION,)
