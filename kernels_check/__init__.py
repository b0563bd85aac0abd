"""kernels_check: every gpt-oss building block, in every implementation on the machine, against float64.

When a layer-level diff says "attention in layer 1 is 40x over its bf16 baseline", the next questions are which
kernel, and whether it is wrong or only imprecise. This package checks each kernel directly on inputs built to
exercise it (the SwiGLU clamp, router near-ties, the sliding-window edge, sinks, long positions), against a float64
reference written from the published gpt-oss math, and judges error, the ratio to plain torch at the same dtype,
batch invariance and determinism.

Entry points (importing this package imports neither torch nor any stack; they load on first use):
  run_all(device, dtypes, kernels, quick) -> KernelsReport      everything, as a typed result (.as_json())
  check_kernel(kernel, fn, dtype=..., device=...) -> [Row]     an arbitrary callable as an implementation
  report_html(doc) -> str                                      the HTML table for a result document
  rig_logprobs_topk(logits, k)                                 the rig's own logprob capture, checked as "rig-capture"
  KERNELS                                                      the kernel names
The CLI command is kernels_check.cli.kernels_command ("rig kernels").
"""

from __future__ import annotations

from typing import Any

from kernels_check.registry import KERNELS

__all__ = ["KERNELS", "check_kernel", "report_html", "rig_logprobs_topk", "run_all"]

_LAZY = {
    "check_kernel": "kernels_check.checks",
    "run_all": "kernels_check.run",
    "report_html": "kernels_check.report",
    "rig_logprobs_topk": "kernels_check.logprobs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels_check' has no attribute {name!r}")
