"""Log-softmax plus top-K over gpt-oss's 201,088-token vocabulary: the step the rig itself uses to record logprobs.

Why this exists: every number the rig reports passes through this reduction, in each stack's own form. If the
recorder were off, every diff downstream would be off with it. "rig-capture" is rig.stacks.capture as a run uses
it per generated step and per scored chunk: on the CPU its C form (one pass: a running top-K threshold and an exp sum
in double lanes), elsewhere its torch form. "rig-capture-torch" is the torch form on any device (a blocked
log-sum-exp and an exact blocked top-K of the raw logits, ties to the lower token id): what GPUs run. "rig-log-softmax"
is the form both replaced (one float32 log_softmax over the row, then torch.topk), kept so that the precision it gave
up stays on record.

Inputs: logits [N, V] (test dtype: what the model emits), k (int).
Output: (logprobs [N, V] float32, top-K logprobs [N, k] float32 in descending order, their token ids [N, k]).
Errors are in float32 rounding steps (the recorded dtype). Top-K ids pass when each one's exact logprob is at least
the exact K-th largest minus two float32 steps (ties and near-ties may resolve either way), without duplicates.
"""

from __future__ import annotations

import torch

from kernels_check import reference as R
from kernels_check.base import Case, Impl, KernelSpec, prefix_stable, torch_dtype
from kernels_check.checks import Comparison, elementwise, ulp_unit
from kernels_check.registry import module_available, vllm_version

VOCAB = 201_088
TOP_K = 20


def rig_logprobs_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rig's capture (rig.stacks.capture): logit minus a blocked log-sum-exp, exact top-k of the raw logits.

    Returns (logprobs [N, V] float32, top-k logprobs [N, k], ids [N, k]); the chosen token's logprob is its raw
    logit minus the same log-sum-exp.
    """
    from rig.stacks.capture import capture_rows

    x = logits.float()
    norm, values, ids = capture_rows(x, k)
    return norm.logprobs(x), values, ids


def rig_torch_form_logprobs_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch form of the rig's capture (what runs on GPUs), on any device."""
    from rig.stacks.capture import RowCapture

    x = logits.float()
    norm, values, ids = RowCapture(k, native=False)(x)
    return norm.logprobs(x), values, ids


def log_softmax_logprobs_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The capture the rig used before rig.stacks.capture: one float32 log-softmax over the row, then its top-k."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logprobs, k, dim=-1)
    return logprobs, values, ids


def logprobs_cases(dtype: str, quick: bool) -> list[Case]:
    dt = torch_dtype(dtype)

    def build(kind: str, seed: int):
        def make(n: int) -> dict:
            g = torch.Generator().manual_seed(seed)
            if kind == "near-uniform":
                x = torch.randn(n, VOCAB, generator=g) * 0.02  # a randomly initialised model: endless near-ties
            else:
                x = torch.randn(n, VOCAB, generator=g) * 3
                x[:, :50] += torch.rand(n, 50, generator=g) * 20  # a peaked head, like a trained model's
                if kind == "large-logits":
                    x = x + 1000.0  # exp() overflows without the max subtraction; coarse steps at |x| ~ 1000
            return {"logits": x.to(dt), "k": TOP_K}

        return prefix_stable(make, ("logits",), 64 if kind == "peaked" else 8)

    return [
        # Rows are independent reductions here, so the 255-versus-300 block test adds nothing but 0.3 GB of logits.
        Case("peaked", build("peaked", 71), 4, ("logits",), invariance=True, boundary=False),
        Case("near-uniform", build("near-uniform", 72), 4, ("logits",), note="ties at the top-K boundary"),
        Case("large-logits", build("large-logits", 73), 4, ("logits",)),
    ]


def logprobs_baseline(logits, k):
    """Plain torch in float32: x - logsumexp(x), then top-k."""
    x = logits.float()
    lp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    values, ids = torch.topk(lp, k, dim=-1)
    return lp, values, ids


def logprobs_compare(out, ref: torch.Tensor, inputs: dict, unit: torch.dtype) -> Comparison:
    """Full-row error, top-K values against the exact logprobs of the returned ids, and the ids' validity."""
    lp, values, ids = out
    k = inputs["k"]
    stats = elementwise(lp, ref, unit)
    ids = ids.to("cpu", torch.long)
    top_ref = ref.gather(-1, ids)
    top = elementwise(values, top_ref, unit)
    if top.max_ulp > stats.max_ulp:
        stats.max_abs, stats.max_ulp, stats.worst = max(stats.max_abs, top.max_abs), top.max_ulp, "top-K " + top.worst
    kth = torch.topk(ref, k, dim=-1).values[:, -1:]
    floor = kth - 2 * ulp_unit(kth, unit, row_floor=False)
    bad = top_ref < floor
    dup = torch.tensor([len(set(r.tolist())) != k for r in ids])
    unsorted = (values[:, 1:] > values[:, :-1]).any(-1)
    if bad.any():
        r, c = (int(i) for i in torch.nonzero(bad)[0])
        stats.fail = (
            f"top-K id {int(ids[r, c])} (row {r}, rank {c}) has exact logprob {float(top_ref[r, c]):.6g}, "
            f"below the K-th largest {float(kth[r, 0]):.6g}"
        )
    elif dup.any():
        stats.fail = f"duplicate top-K ids in row {int(torch.nonzero(dup)[0])}"
    elif unsorted.any():
        stats.fail = f"top-K logprobs not in descending order in row {int(torch.nonzero(unsorted)[0])}"
    return stats


LOGPROBS = KernelSpec(
    name="logprobs",
    title="log-softmax + top-20 over the 201,088-token vocabulary",
    dtypes=("bfloat16", "float16", "float32"),
    cases=logprobs_cases,
    reference=lambda i: R.log_softmax(i["logits"]),
    baseline=logprobs_baseline,
    compare=logprobs_compare,
    unit_dtype=lambda d: "float32",
)


def _vllm_sampler(device: str):
    from vllm.v1.sample.sampler import Sampler

    def fn(logits, k):
        lp = Sampler.compute_logprobs(logits)
        values, ids = torch.topk(lp, k, dim=-1)
        return lp, values, ids

    return fn


def _capture_note(device: str) -> str:
    from rig.stacks.capture import capture_kernel_for

    kernel, reason = capture_kernel_for(device.split(":")[0], TOP_K)
    form = "its C form (one pass, exp sum in double lanes)" if kernel == "native" else f"its torch form ({reason})"
    return f"rig.stacks.capture as a run uses it on {device}: {form}"


def implementations(device: str) -> list[Impl]:
    """The rig's own two forms, vLLM's sampler form and the plain-torch baseline."""
    v_ok, v_why = module_available("vllm.v1.sample.sampler")
    tv = torch.__version__
    return [
        Impl("torch", "logprobs", "torch", tv, lambda d: logprobs_baseline, note="float32 x - logsumexp(x), top-k"),
        Impl(
            "rig-capture",
            "logprobs",
            "rig",
            tv,
            lambda d: rig_logprobs_topk,
            note=_capture_note(device),
        ),
        Impl(
            "rig-capture-torch",
            "logprobs",
            "rig",
            tv,
            lambda d: rig_torch_form_logprobs_topk,
            note="rig.stacks.capture's torch form: blocked log-sum-exp, exact blocked top-k (what GPUs run)",
        ),
        Impl(
            "rig-log-softmax",
            "logprobs",
            "rig",
            tv,
            lambda d: log_softmax_logprobs_topk,
            note="the capture before rig.stacks.capture: float32 log_softmax over the row, then torch.topk",
        ),
        Impl(
            "vllm-Sampler.compute_logprobs",
            "logprobs",
            "vllm",
            vllm_version(),
            _vllm_sampler,
            v_ok,
            v_why,
            note="log_softmax(dtype=float32) on the raw logits, then torch.topk (as gather_logprobs does)",
        ),
    ]


SPECS = (LOGPROBS,)
