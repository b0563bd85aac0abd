"""Judging one implementation of one kernel: error in rounding steps, the baseline ratio, batch invariance,
run-to-run determinism, and the verdict.

Why this exists: "40x over its bf16 baseline" says a layer is off; this says which kernel, and whether it is wrong
(fails against float64 on an input built to exercise it) or only imprecise (within 2x of what plain torch at the
same dtype gets, the rule FlashAttention's tests use).

Units. The error unit at a reference value r is the spacing of the unit dtype (the kernel's output dtype) at
max(|r|, mean |r| over the row's last axis, smallest normal): one rounding step there. The row floor keeps a value
that happens to cross zero from reading as millions of steps. Pass rule: max |out - ref| <= 2 * max |baseline -
ref| + slack, where slack is one rounding step at the largest |ref| (FlashAttention adds the same kind of slack,
and it is what lets an exact baseline, error 0, still admit a correctly rounded result). Exact kernels (MXFP4) must
be bitwise equal to the reference instead. Determinism (three calls bitwise equal) counts in the verdict; batch
invariance is measured and reported, and counts only when asked for (see judge).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kernels_check.base import BOUNDARY, Case, KernelSpec, Row, torch_dtype

F64 = torch.float64
REPEATS = 3


@contextlib.contextmanager
def own_work() -> Iterator[None]:
    """One torch thread for the checker's own arithmetic (references, comparisons): small float64 ops run faster on
    one thread, far faster on a shared machine where spinning worker threads wait for cores. Implementations are
    always called with the process's normal thread count, the configuration the stacks run in."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Comparison:
    """Error of one output against the float64 reference. Absolute values in the output's units, ulp in rounding
    steps of the unit dtype. worst: where the largest error in steps sits. fail: a kernel-specific failure (for
    example top-K ids that are not the reference's), None if none. bitwise: exact equality (exact kernels only)."""

    max_abs: float
    mean_abs: float
    max_ulp: float
    mean_ulp: float
    worst: str = ""
    fail: str | None = None
    bitwise: bool | None = None


def ulp_unit(ref: torch.Tensor, dtype: torch.dtype, row_floor: bool = True) -> torch.Tensor:
    """The rounding step of dtype at each reference value (float64 tensor of ref's shape); see the module doc."""
    fi = torch.finfo(dtype)
    mag = ref.abs().to(F64)
    mag = torch.where(torch.isfinite(mag), mag, torch.zeros_like(mag))
    if row_floor and mag.dim() >= 1 and mag.shape[-1] > 1:
        mag = torch.maximum(mag, mag.mean(-1, keepdim=True))
    mag = mag.clamp(min=fi.tiny)
    _, exponent = torch.frexp(mag)  # mag = m * 2**exponent with m in [0.5, 1)
    return torch.ldexp(torch.full_like(mag, fi.eps), exponent - 1)


def slack(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """One rounding step of dtype at the largest finite |ref| (the absolute slack of the pass rule)."""
    finite = ref[torch.isfinite(ref)].abs()
    top = finite.max() if finite.numel() else torch.tensor(0.0, dtype=F64)
    return float(ulp_unit(top.reshape(1), dtype, row_floor=False)[0])


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


def elementwise(out: torch.Tensor, ref: torch.Tensor, unit_dtype: torch.dtype) -> Comparison:
    """|out - ref| elementwise; non-finite where the reference is finite counts as an infinite error."""
    got = out.detach().to("cpu", F64)
    if got.shape != ref.shape:
        return Comparison(
            float("inf"),
            float("inf"),
            float("inf"),
            float("inf"),
            fail=f"shape {tuple(got.shape)} != {tuple(ref.shape)}",
        )
    diff = (got - ref).abs()
    same = (got == ref) | (torch.isnan(got) & torch.isnan(ref))
    diff = torch.where(same, torch.zeros_like(diff), torch.nan_to_num(diff, nan=float("inf")))
    ulps = diff / ulp_unit(ref, unit_dtype)
    if diff.numel() == 0:
        return Comparison(0.0, 0.0, 0.0, 0.0)
    flat = int(torch.argmax(ulps.reshape(-1)))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ulps.shape))
    worst = f"worst at {idx}: got {float(got[idx]):.9g}, want {float(ref[idx]):.9g}"
    return Comparison(
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        max_ulp=float(ulps.max()),
        mean_ulp=float(ulps.mean()),
        worst=worst,
    )


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (NaN payloads and signed zeros included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def outputs_equal(a: Any, b: Any) -> bool:
    fa, fb = _flat(a), _flat(b)
    return len(fa) == len(fb) and all(bitwise_equal(x, y) for x, y in zip(fa, fb, strict=True))


def max_diff(a: Any, b: Any) -> float:
    """Largest |a - b| over all float outputs (for messages about bitwise differences)."""
    worst = 0.0
    for x, y in zip(_flat(a), _flat(b), strict=True):
        if x.shape == y.shape and x.is_floating_point():
            d = (x.to(F64) - y.to(F64)).abs().nan_to_num(nan=float("inf"))
            worst = max(worst, float(d.max()) if d.numel() else 0.0)
    return worst


def _to(inputs: dict[str, Any], device: str) -> dict[str, Any]:
    """A fresh copy of the inputs on the device (implementations that work in place cannot spoil later calls)."""
    return {k: (v.to(device, copy=True) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def call(spec: KernelSpec, fn: Callable[..., Any], inputs: dict[str, Any], device: str) -> Any:
    """Run fn on a device copy of inputs; the canonical output, detached, on the CPU."""
    with torch.no_grad():
        out = spec.canon(fn(**_to(inputs, device)))
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    return tuple(t.detach().cpu() for t in out) if isinstance(out, tuple | list) else out.detach().cpu()


def _rows(out: Any, index: slice | int, axis: int = 0) -> Any:
    def take(t: torch.Tensor) -> torch.Tensor:
        if isinstance(index, int):
            return t.narrow(axis, index, 1)
        return t.narrow(axis, index.start or 0, index.stop - (index.start or 0))

    return tuple(take(t) for t in out) if isinstance(out, tuple) else take(out)


def batch_invariance(spec: KernelSpec, fn: Callable[..., Any], case: Case, device: str) -> tuple[bool, str]:
    """Row 0 computed alone against the same row placed in the middle of each batch in case.batch_sizes, and 255
    rows against the same rows of a 300-row call (the first 255, or the last 255 with case.boundary_suffix, along
    case.boundary_axes). (True, "") or (False, what differed)."""
    alone = call(spec, fn, case.make(1), device)
    for n in case.batch_sizes:
        order = list(range(1, n))
        order.insert(n // 2, 0)
        inputs = {k: (v[order] if k in case.row_keys else v) for k, v in case.make(n).items()}
        inside = _rows(call(spec, fn, inputs, device), n // 2)
        if not outputs_equal(alone, inside):
            return (
                False,
                f"row alone differs from the same row in a batch of {n} (max diff {max_diff(alone, inside):.3g})",
            )
    if case.boundary:
        short, long_ = BOUNDARY
        start = long_ - short if case.boundary_suffix else 0
        if case.boundary_axes is None:
            small, big = case.make(short), case.make(long_)
        else:
            axes, base = case.boundary_axes, case.make(case.boundary_rows)
            big = {k: (v.narrow(axes[k], 0, long_) if k in axes else v) for k, v in base.items()}
            small = {k: (v.narrow(axes[k], start, short) if k in axes else v) for k, v in big.items()}
        out_small = call(spec, fn, small, device)
        out_big = _rows(call(spec, fn, big, device), slice(start, start + short), case.out_boundary_axis)
        if not outputs_equal(out_small, out_big):
            which = "last" if case.boundary_suffix else "first"
            return False, (
                f"the {which} {short} rows of a {long_}-row call differ from the same rows computed alone "
                f"(max diff {max_diff(out_small, out_big):.3g})"
            )
    return True, ""


def compare(spec: KernelSpec, out: Any, ref: Any, inputs: dict[str, Any], dtype: str) -> Comparison:
    """The kernel's own comparison, else elementwise in units of its unit dtype."""
    unit = torch_dtype(spec.unit_dtype(dtype))
    with own_work():
        return spec.compare(out, ref, inputs, unit) if spec.compare is not None else elementwise(out, ref, unit)


@dataclass
class CaseContext:
    """A case with its float64 reference and the plain-torch baseline's error on it (computed once, shared)."""

    case: Case
    ref: Any
    baseline: Comparison
    slack: float


def prepare(spec: KernelSpec, dtype: str, device: str, quick: bool = False, only: Iterable[str] | None = None):
    """The cases of a kernel at a dtype, each with its reference and baseline error."""
    wanted = set(only) if only else None
    contexts = []
    for case in spec.cases(dtype, quick):
        if wanted is not None and case.name not in wanted:
            continue
        with own_work():
            ref = spec.reference(case.inputs)
        base_out = call(spec, spec.baseline, case.inputs, device)
        base = compare(spec, base_out, ref, case.inputs, dtype)
        first_ref = _flat(ref)[0]
        contexts.append(CaseContext(case, ref, base, slack(first_ref, torch_dtype(spec.unit_dtype(dtype)))))
    return contexts


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x == x and x not in (float("inf"),) else str(x)


def judge(
    spec: KernelSpec,
    impl_name: str,
    fn: Callable[..., Any],
    ctx: CaseContext,
    dtype: str,
    device: str,
    invariance: bool = True,
    require_invariance: bool = False,
) -> Row:
    """Run one implementation on one prepared case: accuracy, determinism, batch invariance, verdict.

    The verdict counts accuracy (the 2x rule, bitwise for exact kernels, kernel-specific checks such as valid top-K
    ids) and determinism. Batch invariance is measured and reported (row.batch_invariant, details["batch_variance"])
    but counts only with require_invariance: stock CPU kernels (Transformers' eager experts, vLLM's CPU attention in
    float16 and float32) are not batch-invariant, by design rather than by fault, and vLLM makes it an opt-in mode.
    """
    case = ctx.case
    row = Row(kernel=spec.name, impl=impl_name, dtype=dtype, input=case.name)
    head = f"{spec.name} [{case.name}, {dtype}]"
    t0 = time.perf_counter()
    try:
        outs = [call(spec, fn, case.inputs, device) for _ in range(REPEATS)]
        cmp_ = compare(spec, outs[0], ctx.ref, case.inputs, dtype)
        row.deterministic = all(outputs_equal(outs[0], o) for o in outs[1:])
        if invariance and case.invariance:
            row.batch_invariant, why_variant = batch_invariance(spec, fn, case, device)
        else:
            why_variant = ""
    except Exception as exc:  # an implementation that crashes fails its check; the message says how
        row.verdict, row.seconds = "fail", time.perf_counter() - t0
        row.reason = f"{head}: raised {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        return row
    row.max_err_ulp, row.mean_err_ulp = cmp_.max_ulp, cmp_.mean_ulp
    row.max_abs_err, row.baseline_max_abs_err = cmp_.max_abs, ctx.baseline.max_abs
    row.ratio = cmp_.max_abs / ctx.baseline.max_abs if ctx.baseline.max_abs > 0 else None
    row.details = {"worst": cmp_.worst, "slack_abs": ctx.slack, "baseline_max_err_ulp": ctx.baseline.max_ulp}
    problems = []
    if cmp_.fail:
        problems.append(cmp_.fail)
    if spec.exact:
        if not cmp_.bitwise:
            problems.append(f"not bit-exact: max error {_fmt(cmp_.max_ulp)} ulp ({cmp_.worst})")
    elif not cmp_.max_abs <= 2 * ctx.baseline.max_abs + ctx.slack:
        times = f"{_fmt(row.ratio)}x the torch baseline" if row.ratio is not None else "the torch baseline is exact"
        problems.append(f"max error {_fmt(cmp_.max_ulp)} ulp, {times} ({cmp_.worst})")
    if row.deterministic is False:
        problems.append(f"not deterministic: {REPEATS} repeats differ (max diff {max_diff(outs[0], outs[1]):.3g})")
    if row.batch_invariant is False:
        row.details["batch_variance"] = f"{head}: not batch-invariant: {why_variant}"
        if require_invariance:
            problems.append(f"not batch-invariant: {why_variant}")
    row.verdict = "fail" if problems else "pass"
    row.reason = f"{head}: " + "; ".join(problems) if problems else ""
    row.seconds = time.perf_counter() - t0
    return row


def check_kernel(
    kernel: str,
    impl: Callable[..., Any],
    *,
    dtype: str = "bfloat16",
    device: str = "cpu",
    name: str | None = None,
    cases: Iterable[str] | None = None,
    quick: bool = False,
    invariance: bool = True,
    require_invariance: bool = False,
) -> list[Row]:
    """Check an arbitrary callable as an implementation of a kernel; one Row per input case.

    impl takes the kernel's inputs as keyword arguments (see the kernel's module) and returns its output.
    Example: check_kernel("swiglu", my_swiglu, dtype="bfloat16") -> rows; [r.message for r in rows if r.verdict ==
    "fail"] names the failing inputs.
    """
    from kernels_check.registry import kernel_spec

    spec = kernel_spec(kernel)
    contexts = prepare(spec, dtype, device, quick=quick, only=cases)
    label = name or getattr(impl, "__name__", "custom")
    return [judge(spec, label, impl, ctx, dtype, device, invariance, require_invariance) for ctx in contexts]
