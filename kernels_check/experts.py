"""The routed expert MLPs: both matmuls with biases, the clamped SwiGLU between them and the weighted sum.

Why this exists: this is where the implementations differ most (Transformers alone has eager, grouped_mm and
batched_mm; vLLM's CPU build fuses everything in one op with its own SwiGLU), and where a fault can hide behind
the tiny model: its activations never reach the clamp. The inputs push pre-activations to a standard deviation of
8 so the clamp bites, and route every token to two experts so the others get none (empty groups).

Inputs (keyword arguments of every implementation): x [T, H], ids [T, k] int64, weights [T, k] (test dtype),
w13 [E, H, 2I] (gate/linear interleaved), b13 [E, 2I], w2 [E, I, H], b2 [E, H] (Transformers' layout, test
dtype) -> [T, H].
"""

from __future__ import annotations

import functools

import torch

from kernels_check import reference as R
from kernels_check.base import Case, Impl, KernelSpec, prefix_stable, torch_dtype
from kernels_check.moe import swiglu_baseline
from kernels_check.registry import hf_version, module_available, vllm_version

E_SMALL, K_SMALL, HID, INTER = 4, 2, 128, 128  # the tiny model's 4 experts, top-2
CUDA_ONLY = {"deepgemm": "DeepGEMM kernels (CUDA, sm90+)", "sonicmoe": "SonicMoE kernels (CUDA)"}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=2)
def _hf_experts_config(experts_impl: str):
    from transformers import GptOssConfig

    cfg = GptOssConfig(
        hidden_size=HID,
        intermediate_size=INTER,
        num_local_experts=E_SMALL,
        num_experts_per_tok=K_SMALL,
        num_hidden_layers=2,
        vocab_size=128,
        head_dim=64,
    )
    cfg._experts_implementation = experts_impl
    return cfg


def experts_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)
    rows = ("x", "ids", "weights")

    def build(kind: str, seed: int):
        def make(n: int) -> dict:
            g = _gen(seed)
            w_scale = 0.5 if kind == "clamp-hit" else HID**-0.5
            logits = torch.randn(n, E_SMALL, generator=g)
            if kind == "one-expert":
                logits[:, 0] += 100.0
                logits[:, 1] += 50.0  # every token to experts 0 and 1; experts 2 and 3 get nothing
            values, ids = logits.topk(K_SMALL, dim=-1)
            return {
                "x": torch.randn(n, HID, generator=g).to(dt),
                "ids": ids,
                "weights": torch.softmax(values, -1).to(dt),
                "w13": (torch.randn(E_SMALL, HID, 2 * INTER, generator=g) * w_scale).to(dt),
                "b13": (torch.randn(E_SMALL, 2 * INTER, generator=g) * 0.5).to(dt),
                "w2": (torch.randn(E_SMALL, INTER, HID, generator=g) * INTER**-0.5).to(dt),
                "b2": (torch.randn(E_SMALL, HID, generator=g) * 0.1).to(dt),
            }

        return prefix_stable(make, rows, 300)

    return [
        Case("random", build("random", 51), 64, rows, invariance=True),
        Case("clamp-hit", build("clamp-hit", 52), 64, rows, note="pre-activations with std 8: the clamp bites"),
        Case("one-expert", build("one-expert", 53), 64, rows, invariance=True, note="two experts get no tokens"),
    ]


def experts_baseline(x, ids, weights, w13, b13, w2, b2):
    """The published expert MLP in the test dtype, one expert at a time: its tokens' matmul with bias, SwiGLU, the
    second matmul with bias, scaled by each token's routing weight and summed in the test dtype."""
    out = torch.zeros_like(x)
    for e in ids.unique().tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        h = swiglu_baseline(x[tok] @ w13[e] + b13[e], R.SWIGLU_LIMIT, R.SWIGLU_ALPHA)
        out.index_add_(0, tok, (h @ w2[e] + b2[e]) * weights[tok, slot, None])
    return out


EXPERTS = KernelSpec(
    name="experts",
    title="routed expert MLPs (biases, clamped SwiGLU, weighted sum)",
    dtypes=("bfloat16", "float16", "float32"),
    cases=experts_cases,
    reference=lambda i: R.experts(i["x"], i["ids"], i["weights"], i["w13"], i["b13"], i["w2"], i["b2"]),
    baseline=experts_baseline,
)


def _hf_experts(experts_impl: str):
    def factory(device: str):
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

        module = GptOssExperts(_hf_experts_config(experts_impl)).to(device).eval()

        def fn(x, ids, weights, w13, b13, w2, b2):
            for name, value in (
                ("gate_up_proj", w13),
                ("gate_up_proj_bias", b13),
                ("down_proj", w2),
                ("down_proj_bias", b2),
            ):
                setattr(module, name, torch.nn.Parameter(value.clone(), requires_grad=False))
            return module(x, ids, weights)

        return fn

    return factory


def _vllm_cpu_fused_moe(device: str):
    """vLLM's unquantized CPU MoE: weights transposed to [E, 2I, H] and [E, H, I] as its gpt-oss loader stores them,
    prepacked for the ISA its CPU experts class picks, fp32 routing weights, activation 'swigluoai'."""
    import vllm._custom_ops as ops
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import X86CPUUnquantizedExperts

    def fn(x, ids, weights, w13, b13, w2, b2):
        amx = x.dtype == torch.bfloat16 and X86CPUUnquantizedExperts._supports_current_device()
        isa = "amx" if amx else "vec"
        p13 = ops.cpu_prepack_moe_weight(w13.transpose(1, 2).contiguous(), isa)
        p2 = ops.cpu_prepack_moe_weight(w2.transpose(1, 2).contiguous(), isa)
        out = torch.empty_like(x)
        ops.cpu_fused_moe(
            out,
            x.contiguous(),
            p13,
            p2,
            b13.contiguous(),
            b2.contiguous(),
            weights.float().contiguous(),
            ids.to(torch.int32).contiguous(),
            "swigluoai",
            isa,
        )
        return out

    return fn


def _experts_impls() -> list[str]:
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        return ["eager", *ALL_EXPERTS_FUNCTIONS.keys()]
    except Exception:  # an older Transformers without the experts interface
        return ["eager"]


def implementations(device: str) -> list[Impl]:
    """Transformers' experts in every experts_implementation it registers, vLLM's CPU MoE, and the MXFP4 MoE paths
    (listed with the reason they do not run here)."""
    hv, vv = hf_version(), vllm_version()
    hf_ok, hf_why = module_available("transformers.models.gpt_oss.modeling_gpt_oss")
    v_ok, v_why = module_available("vllm._custom_ops")
    cuda, cpu = device == "cuda", device == "cpu"
    impls = [
        Impl(
            "torch",
            "experts",
            "torch",
            torch.__version__,
            lambda d: experts_baseline,
            note="per-expert loop in the test dtype",
        )
    ]
    for name in _experts_impls():
        ok, why = (False, f"needs CUDA: {CUDA_ONLY[name]}") if name in CUDA_ONLY and not cuda else (hf_ok, hf_why)
        impls.append(
            Impl(
                f"hf-experts-{name}",
                "experts",
                "transformers",
                hv,
                _hf_experts(name),
                ok,
                why,
                note=f"GptOssExperts with experts_implementation={name!r}",
            )
        )
    amx = bool(cpu and torch.cpu._is_amx_tile_supported())
    impls += [
        Impl(
            "vllm-cpu_fused_moe",
            "experts",
            "vllm",
            vv,
            _vllm_cpu_fused_moe,
            v_ok and cpu,
            v_why or (None if cpu else "vLLM's CPU MoE op"),
            devices=("cpu",),
            note="CPUUnquantizedExperts' op, activation 'swigluoai' (isa amx for bf16 with AMX, else vec)",
        ),
        Impl(
            "vllm-cpu-mxfp4-moe",
            "experts",
            "vllm",
            vv,
            None,
            False,
            v_why
            or (
                "adapter not written yet (CPUExpertsMxfp4 with MXFP4 weights)"
                if amx
                else "needs AMX tiles (CPUExpertsMxfp4); this CPU has none"
            ),
            devices=("cpu",),
        ),
        Impl(
            "vllm-mxfp4-moe (marlin / triton_kernels / flashinfer)",
            "experts",
            "vllm",
            vv,
            None,
            False,
            v_why or "needs CUDA; adapter not written yet (needs a GPU to validate)",
            devices=("cuda",),
        ),
        Impl(
            "hf-Mxfp4GptOssExperts",
            "experts",
            "transformers",
            hv,
            None,
            False,
            hf_why or "needs CUDA and the hub's triton_kernels (downloaded at load time)",
            devices=("cuda",),
        ),
    ]
    return impls


SPECS = (EXPERTS,)
