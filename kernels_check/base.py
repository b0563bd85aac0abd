"""The shared vocabulary of kernels_check: a kernel spec, an input case, an implementation and a result row.

Why this exists: every kernel family module (norm_rope, attention, moe, mxfp4, logprobs) describes its kernel in
the same terms, so one checker (checks.py) can judge any implementation of any kernel, including an arbitrary
callable handed in by a test or a user.

Calling convention: an implementation is a callable taking the case's inputs as keyword arguments (tensors already
on the target device, in the test dtype unless the kernel says otherwise) and returning the kernel's output:
a tensor, or a tuple of tensors for kernels with several outputs. Row axis 0 of every output tensor corresponds
to row axis 0 of the row inputs, which is what the batch-invariance check relies on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("bfloat16", "float16", "float32")
BOUNDARY = (255, 300)  # a prefix of 255 rows against 300: crosses a 128- or 256-row kernel block boundary
BATCH_SIZES = (3, 8, 64)


def torch_dtype(name: str):
    """'bfloat16' -> torch.bfloat16 (imports torch lazily)."""
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


@dataclass
class Case:
    """One input for one kernel at one dtype.

    make(n) returns the inputs with n rows along axis 0 of every name in row_keys (other entries are shared:
    weights, parameters). Rows are prefix-stable: row i is the same whatever n is, and row 0 is the probe row of
    the batch-invariance check. n is the row count used for the accuracy check. invariance: run the batch checks
    on this case (batch_sizes: the batches the probe row is placed in).
    boundary_axes: for the 255-versus-300 check, the axis of each input along which a prefix is taken (None: the
    row axis of row_keys), with out_boundary_axis the matching axis of the outputs; boundary False skips it.
    boundary_suffix: take the last 255 of 300 instead of the first (attention: the queries of a second prefill
    chunk against the same keys, which keeps every query's position).
    """

    name: str
    make: Callable[[int], dict[str, Any]]
    n: int
    row_keys: tuple[str, ...]
    invariance: bool = False
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    boundary: bool = True
    boundary_rows: int = 1  # rows (along axis 0) of the 300-long input when boundary_axes is not the row axis
    boundary_axes: dict[str, int] | None = None
    out_boundary_axis: int = 0
    boundary_suffix: bool = False
    note: str = ""

    @functools.cached_property
    def inputs(self) -> dict[str, Any]:
        return self.make(self.n)


def prefix_stable(build: Callable[[int], dict[str, Any]], row_keys: tuple[str, ...], max_rows: int):
    """Wrap build(n) so that make(n) slices one cached build(max(n, max_rows)): rows never depend on n."""
    cache: dict[str, Any] = {}

    def make(n: int) -> dict[str, Any]:
        if not cache or cache["_rows"] < n:
            cache.clear()
            cache.update(build(max(n, max_rows)))
            cache["_rows"] = max(n, max_rows)
        return {k: (v[:n] if k in row_keys else v) for k, v in cache.items() if k != "_rows"}

    return make


@dataclass
class KernelSpec:
    """A gpt-oss building block: how to build its inputs, its float64 reference and how to judge an output.

    reference(inputs) -> float64 output (tensor or tuple) on the CPU.
    cases(dtype_name, quick) -> list of Case.
    compare(out, ref, inputs, unit_dtype) -> checks.Comparison; None means elementwise in units of unit_dtype.
    unit_dtype(dtype_name) -> the dtype whose rounding step is the error unit (the output dtype of the kernel).
    exact: the check is bitwise equality with the reference (MXFP4 dequantization).
    fixed_dtype: the kernel's dtype is intrinsic (the YaRN table is float32 in every stack): it runs at its own
    dtype whatever dtypes a run asks for.
    """

    name: str
    title: str
    dtypes: tuple[str, ...]
    cases: Callable[[str, bool], list[Case]]
    reference: Callable[[dict[str, Any]], Any]
    baseline: Callable[..., Any]
    compare: Callable[..., Any] | None = None
    unit_dtype: Callable[[str], str] = lambda d: d
    exact: bool = False
    fixed_dtype: bool = False
    canon: Callable[[Any], Any] = lambda out: out


@dataclass
class Impl:
    """One implementation of one kernel found (or not) on this machine.

    make(device) builds the callable (lazily: a skipped implementation is never constructed).
    dtypes: test dtypes it supports (None: all the kernel's); devices: where it can run.
    note: what it really is (the op or module called), and anything a reader needs to interpret its row.
    """

    name: str
    kernel: str
    library: str
    version: str | None
    make: Callable[[str], Callable[..., Any]] | None
    available: bool = True
    skip_reason: str | None = None
    dtypes: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kernel": self.kernel,
            "library": self.library,
            "version": self.version,
            "available": self.available,
            "skip_reason": self.skip_reason,
            "note": self.note,
        }


@dataclass
class Row:
    """The verdict for one (kernel, implementation, dtype, input case).

    max_err_ulp / mean_err_ulp: |out - ref| in rounding steps of the unit dtype at the reference's magnitude
    (see checks.ulp_unit). max_abs_err / baseline_max_abs_err: the same in absolute value for this implementation
    and for the plain-torch baseline on the same input. ratio: max_abs_err / baseline_max_abs_err (None when the
    baseline is exact). batch_invariant / deterministic: True, False, or None when not checked for this case.
    verdict: "pass", "fail" or "skip"; reason: one line naming kernel, input and dtype when not a pass.
    """

    kernel: str
    impl: str
    dtype: str
    input: str
    max_err_ulp: float | None = None
    mean_err_ulp: float | None = None
    max_abs_err: float | None = None
    baseline_max_abs_err: float | None = None
    ratio: float | None = None
    batch_invariant: bool | None = None
    deterministic: bool | None = None
    verdict: str = "skip"
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return self.reason or f"{self.kernel} [{self.input}, {self.dtype}]: {self.verdict}"

    def as_json(self) -> dict[str, Any]:
        keys = (
            "kernel",
            "impl",
            "dtype",
            "input",
            "max_err_ulp",
            "mean_err_ulp",
            "max_abs_err",
            "baseline_max_abs_err",
            "ratio",
            "batch_invariant",
            "deterministic",
            "verdict",
            "reason",
            "seconds",
            "details",
        )
        return {k: getattr(self, k) for k in keys}
