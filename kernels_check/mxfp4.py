"""MXFP4 dequantization (E2M1 values times E8M0 block scales): spec, inputs and implementations.

Why this exists: gpt-oss ships its expert weights in MXFP4, and every stack upcasts them somewhere. The upcast is
exact (each value is a 2-bit-exponent, 1-bit-mantissa number times a power of two), so there is no "imprecise"
here: any bit that differs from the float64 reference is a bug (a nibble order swapped, a scale bias of 128
instead of 127, subnormals flushed to zero). The check is bitwise; the inputs hit every byte value and every scale
the test dtype can hold exactly, subnormal results included.

Inputs: blocks [R, G, 16] uint8 (two codes per byte, low nibble first), scales [R, G] uint8, dtype (torch dtype
of the output) -> [R, G * 32] in dtype.
"""

from __future__ import annotations

import torch

from kernels_check import reference as R
from kernels_check.base import Case, Impl, KernelSpec, prefix_stable, torch_dtype
from kernels_check.checks import Comparison, bitwise_equal, elementwise
from kernels_check.registry import hf_version, module_available, vllm_version

GROUPS = 4
# E8M0 exponents (scale - 127) whose products with every E2M1 value are exact in the dtype: the largest value
# 6 * 2^e must stay finite, the smallest step 0.25 * 2^e must not fall under the dtype's smallest subnormal.
EXACT_EXPONENTS = {"bfloat16": (-127, 125), "float32": (-127, 125), "float16": (-22, 13)}


def mxfp4_cases(dtype: str, quick: bool) -> list[Case]:
    lo, hi = EXACT_EXPONENTS[dtype]
    dt = torch_dtype(dtype)

    def build(kind: str, seed: int):
        def make(n: int) -> dict:
            g = torch.Generator().manual_seed(seed)
            if kind == "all-codes":
                blocks = (torch.arange(n * GROUPS * 16) % 256).reshape(n, GROUPS, 16)
                exps = torch.randint(-4, 5, (n, GROUPS), generator=g)
            else:
                blocks = torch.randint(0, 256, (n, GROUPS, 16), generator=g)
                if kind == "typical-scales":
                    exps = torch.randint(-12, 4, (n, GROUPS), generator=g)
                else:  # both ends of the exact range, subnormal results included
                    edges = torch.tensor([lo, lo + 1, lo + 2, hi - 1, hi])
                    exps = edges[torch.randint(0, len(edges), (n, GROUPS), generator=g)]
            return {"blocks": blocks.to(torch.uint8), "scales": (exps + R.E8M0_BIAS).to(torch.uint8), "dtype": dt}

        return prefix_stable(make, ("blocks", "scales"), 300)

    return [
        Case(
            "all-codes",
            build("all-codes", 61),
            16,
            ("blocks", "scales"),
            invariance=True,
            note="every byte value (every pair of E2M1 codes)",
        ),
        Case("typical-scales", build("typical-scales", 62), 32, ("blocks", "scales")),
        Case(
            "extreme-scales",
            build("extreme-scales", 63),
            32,
            ("blocks", "scales"),
            note=f"exponents {lo}, {lo + 1}, {lo + 2}, {hi - 1}, {hi}: subnormal and largest exact results",
        ),
    ]


def mxfp4_baseline(blocks, scales, dtype):
    """Plain torch: a 16-entry lookup for the codes, times 2^(scale - 127) in float32, cast to the dtype (exact)."""
    table = torch.tensor(R.FP4_E2M1, dtype=torch.float32, device=blocks.device)
    b = blocks.long()
    codes = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(b.shape[0], b.shape[1], -1)
    scale = torch.exp2((scales.long() - R.E8M0_BIAS).float())
    return (table[codes] * scale[..., None]).reshape(b.shape[0], -1).to(dtype)


def mxfp4_compare(out: torch.Tensor, ref: torch.Tensor, inputs: dict, unit: torch.dtype) -> Comparison:
    """Bitwise against the reference rounded to the dtype (exact by construction of the inputs)."""
    want = ref.to(inputs["dtype"])
    stats = elementwise(out, ref, inputs["dtype"])
    if not torch.equal(want.to(torch.float64), ref):
        stats.fail = "the case is not exactly representable in the dtype (a bug in the case)"
    stats.bitwise = bitwise_equal(out.to("cpu"), want) if out.dtype == want.dtype else False
    if out.dtype != want.dtype:
        stats.fail = f"output dtype {out.dtype} instead of {want.dtype}"
    return stats


MXFP4 = KernelSpec(
    name="mxfp4",
    title="MXFP4 dequantization (bitwise)",
    dtypes=("bfloat16", "float16", "float32"),
    cases=mxfp4_cases,
    reference=lambda i: R.mxfp4_dequant(i["blocks"], i["scales"]),
    baseline=mxfp4_baseline,
    compare=mxfp4_compare,
    exact=True,
)


def _hf_mxfp4(device: str):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    def fn(blocks, scales, dtype):
        # Transformers takes [E, R, G, 16] and returns the [E, G * 32, R] layout of GptOssExperts' weights.
        return convert_moe_packed_tensors(blocks[None], scales[None], dtype=dtype)[0].transpose(0, 1)

    return fn


def _vllm_mxfp4(device: str):
    from vllm.model_executor.layers.quantization.utils.mxfp4_utils import _dequant_mxfp4

    def fn(blocks, scales, dtype):
        return _dequant_mxfp4(blocks.reshape(blocks.shape[0], -1), scales, dtype)

    return fn


def implementations(device: str) -> list[Impl]:
    """Transformers' dequantizer, vLLM's (needs amd-quark) and the plain-torch baseline."""
    hf_ok, hf_why = module_available("transformers.integrations.mxfp4")
    v_ok, v_why = module_available("vllm.model_executor.layers.quantization.utils.mxfp4_utils")
    q_ok, _ = module_available("quark.torch.kernel")
    return [
        Impl(
            "torch",
            "mxfp4",
            "torch",
            torch.__version__,
            lambda d: mxfp4_baseline,
            note="lookup table and exp2 in float32, cast to the dtype",
        ),
        Impl(
            "hf-convert_moe_packed_tensors",
            "mxfp4",
            "transformers",
            hf_version(),
            _hf_mxfp4,
            hf_ok,
            hf_why,
            note="transformers.integrations.mxfp4: lookup in the dtype, ldexp in place (the dequantize=True path)",
        ),
        Impl(
            "vllm-mxfp4_utils._dequant_mxfp4",
            "mxfp4",
            "vllm",
            vllm_version(),
            _vllm_mxfp4,
            v_ok and q_ok,
            v_why or (None if q_ok else "needs the amd-quark package (quark.torch.kernel.mx), not installed"),
            note="layout assumed [R, G*16] packed bytes and [R, G] scales; adapter unverified",
        ),
    ]


SPECS = (MXFP4,)
