"""Run every check: all kernels x all implementations found x the chosen dtypes, into one typed result.

Why this exists: `rig kernels` and the benchmark need one call that does the whole job and returns something a
program can read (KernelsReport, with one Row per kernel, implementation, dtype and input) and something a file can
keep (as_json(): the document `rig report --kernels` renders).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernels_check.base import DTYPES, Impl, Row

SCHEMA = 1


def capture_environment() -> dict[str, Any]:
    """The run manifest's environment block (rig's envinfo; its module path is moving, so both are tried)."""
    try:
        from rig.telemetry.envinfo import capture
    except ImportError:
        try:
            from rig.envinfo import capture
        except ImportError as exc:
            return {"error": f"rig's envinfo is not importable: {exc}"}
    return capture(torch=True)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. Raises ValueError for 'cuda' without one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device (torch " + torch.__version__ + ")")
    return device


@dataclass
class KernelsReport:
    """The result of a run. rows: one per (kernel, implementation, dtype, input), skipped implementations as one
    row each with verdict "skip"; seconds: wall time of the whole run including imports of the stacks."""

    device: str
    dtypes: list[str]
    quick: bool
    require_invariance: bool
    implementations: list[Impl]
    rows: list[Row]
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> dict[str, Any]:
        counts = {v: sum(r.verdict == v for r in self.rows) for v in ("pass", "fail", "skip")}
        verdicts: dict[str, dict[str, str]] = {}
        for r in self.rows:
            per = verdicts.setdefault(r.kernel, {})
            if per.get(r.impl) != "fail":
                per[r.impl] = r.verdict
        return {
            **counts,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "verdicts": verdicts,
            "failures": [f"{r.impl}: {r.reason}" for r in self.failed],
            "not_batch_invariant": [
                f"{r.impl}: {r.details['batch_variance']}" for r in self.rows if "batch_variance" in r.details
            ],
        }

    def as_json(self) -> dict[str, Any]:
        return _finite(
            {
                "rig_kernels": SCHEMA,
                "device": self.device,
                "dtypes": self.dtypes,
                "quick": self.quick,
                "require_batch_invariance": self.require_invariance,
                "environment": self.environment,
                "implementations": [i.as_json() for i in self.implementations],
                "rows": [r.as_json() for r in self.rows],
                "summary": self.summary(),
            }
        )


def _finite(value: Any) -> Any:
    """JSON has no inf or NaN: they become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def run_all(
    device: str = "cpu",
    dtypes: tuple[str, ...] | None = None,
    kernels: tuple[str, ...] | None = None,
    quick: bool = False,
    require_invariance: bool = False,
    environment: bool = True,
    progress: Callable[[str], None] | None = None,
) -> KernelsReport:
    """Check every implementation of every chosen kernel at every chosen dtype the kernel supports.

    require_invariance makes a batch-variant result a failure (by default it is reported, not failed).
    progress(message) is called as each kernel and dtype starts.
    """
    t0 = time.perf_counter()
    from kernels_check.checks import judge, prepare
    from kernels_check.registry import KERNELS, discover, specs

    device = resolve_device(device)
    chosen = tuple(k for k in KERNELS if not kernels or k in kernels)
    dtypes = tuple(d for d in DTYPES if not dtypes or d in dtypes)
    impls = discover(device, chosen)
    rows: list[Row] = [
        Row(kernel=i.kernel, impl=i.name, dtype="-", input="-", verdict="skip", reason=i.skip_reason or "")
        for i in impls
        if not i.available
    ]
    for kernel in chosen:
        spec = specs()[kernel]
        for dtype in spec.dtypes if spec.fixed_dtype else [d for d in dtypes if d in spec.dtypes]:
            runnable = [i for i in impls if i.kernel == kernel and i.available and (not i.dtypes or dtype in i.dtypes)]
            if not runnable:
                continue
            if progress:
                progress(f"{kernel} {dtype}: {len(runnable)} implementations")
            contexts = prepare(spec, dtype, device, quick=quick)
            for impl in runnable:
                try:
                    fn = impl.make(device)
                except Exception as exc:  # it imported but could not be built: a failure of that implementation
                    msg = f"{kernel} [-, {dtype}]: could not build {impl.name}: {type(exc).__name__}: {exc}"
                    rows.append(Row(kernel, impl.name, dtype, "-", verdict="fail", reason=msg.splitlines()[0]))
                    continue
                rows.extend(
                    judge(spec, impl.name, fn, ctx, dtype, device, True, require_invariance) for ctx in contexts
                )
    env = capture_environment() if environment else {}
    return KernelsReport(device, list(dtypes), quick, require_invariance, impls, rows, env, time.perf_counter() - t0)
