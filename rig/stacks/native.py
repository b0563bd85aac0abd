"""C kernels the rig compiles for the CPU it runs on, and loads with ctypes.

Why: on the CPU, the rig's own per-step work (rig.stacks.capture) is a few passes over 8 x 201,088 logits, and
torch runs each pass as a separate operation with its own dispatch, temporaries and thread barrier. One C pass does the
same in a third of the time (docs/performance.md). Nothing here is needed for correctness: every caller keeps its torch
form, which is what runs on GPUs, without a C compiler, or with RIG_NATIVE=0.

How: the C source ships in the package (rig/stacks/*.c). On first use it is compiled with the system's C compiler
(`$CC`, else cc, gcc or clang) with `-O3 -march=native -ffp-contract=off` into
`$XDG_CACHE_HOME/rig/native/NAME-HASH.so` (about 0.4 s, once per machine); HASH covers the source, the compiler, the
flags and the CPU's model and feature flags, so a cache shared between different machines (an NFS home) never loads a
build made for another CPU. If `-march=native` is refused the build is retried without it. Every outcome, built,
reused or refused and why, is returned as a reason that the stack records (`resolved.capture_kernel`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

ENV = "RIG_NATIVE"  # "auto" (default): build and use the kernels on the CPU; "0": never (the torch forms run)
FLAGS = ["-O3", "-ffp-contract=off", "-fPIC", "-shared"]
ARCH_FLAGS = ["-march=native"]
BUILD_TIMEOUT_S = 120

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
SIGNATURES: dict[str, dict[str, tuple[Any, list[Any]]]] = {
    # name of the source (rig/stacks/NAME.c) -> {function: (restype, argtypes)}
    "capture": {
        "rig_capture_rows": (_I64, [_P, _I64, _I64, _I64, _I64, _P, _P, _P, _P]),
        "rig_token_logprobs": (_I64, [_P, _I64, _I64, _P, _I64, _P, _P, _P]),
        "rig_use_openmp": (None, [_P, _P, _P]),
    },
}


class Native(NamedTuple):
    lib: Any  # the loaded ctypes.CDLL, or None
    reason: str  # how it was obtained, or why there is none


def enabled() -> bool:
    return os.environ.get(ENV, "auto").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rig" / "native"


def compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_identity() -> str:
    """The CPU's model and feature flags: a build with -march=native is valid for exactly these."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part", "CPU implementer"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


@functools.cache
def load(name: str, arch: tuple[str, ...] | None = None) -> Native:
    """The compiled kernel library `name` (rig/stacks/NAME.c) for this machine: built on first use, then reused.
    `arch`: the target flags; by default -march=native, then none if the compiler refuses it (tests pass others)."""
    if not enabled():
        return Native(None, f"{ENV}=0: the torch form runs")
    if platform.system() == "Windows":
        return Native(None, "no native kernels on Windows: the torch form runs")
    source = Path(__file__).with_name(f"{name}.c")
    cc = compiler()
    if cc is None:
        return Native(None, "no C compiler ($CC, cc, gcc, clang) on PATH: the torch form runs")
    text = source.read_bytes()
    errors = []
    for flags in [[*FLAGS, *arch]] if arch is not None else [FLAGS + ARCH_FLAGS, FLAGS]:
        key = hashlib.sha256(b"\0".join([text, cc.encode(), " ".join(flags).encode(), _cpu_identity().encode()]))
        target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
        how = f"cached build ({Path(cc).name} {' '.join(flags)}) {target}"
        if not target.exists():
            ok, note = _build(cc, flags, source, target)
            if not ok:
                errors.append(note)
                continue
            how = f"built with {Path(cc).name} {' '.join(flags)} {note}: {target}"
        try:
            lib = ctypes.CDLL(str(target))
            for fn, (restype, argtypes) in SIGNATURES[name].items():
                f = getattr(lib, fn)
                f.restype, f.argtypes = restype, argtypes
        except (OSError, AttributeError) as exc:
            errors.append(f"could not load {target} ({exc})")
            continue
        return Native(lib, how)
    return Native(None, f"{'; '.join(errors)}: the torch form runs")


def _build(cc: str, flags: list[str], source: Path, target: Path) -> tuple[bool, str]:
    """Compile source into target, atomically: (True, "in N s"), or (False, why not)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return False, f"cannot write to {target.parent} ({exc})"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [cc, *flags, "-o", tmp, str(source), "-lm"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        Path(tmp).unlink(missing_ok=True)
        return False, f"{Path(cc).name} {' '.join(flags)} failed: {exc}"
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        return False, f"{Path(cc).name} {' '.join(flags)} failed: {lines[-1] if lines else proc.returncode}"
    os.replace(tmp, target)  # a concurrent run sees no build or a whole one
    return True, f"in {time.perf_counter() - t0:.2f} s"


def torch_openmp() -> Native:
    """The OpenMP runtime torch itself loaded (its libgomp or libiomp5, found among the process's mapped files
    under torch's own directories), so that a kernel can run its rows on torch's intra-op threads. None (with the
    reason) when there is not exactly one, as with a torch built on another threading layer: kernels then stay on one
    thread. Another library's OpenMP runtime (scikit-learn ships its own) would add a second pool of threads
    competing with torch's for the same cores, so only torch's is taken."""
    try:
        import torch
    except ImportError:
        return Native(None, "torch is not installed")
    roots = {Path(torch.__file__).resolve().parent, Path(torch.__file__).resolve().parent.parent / "torch.libs"}
    try:
        mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line}
    except OSError:
        return Native(None, "no /proc/self/maps to find torch's OpenMP runtime in")
    found = sorted(
        p
        for p in mapped
        if Path(p).name.startswith(("libgomp", "libiomp5")) and any(root in Path(p).resolve().parents for root in roots)
    )
    if len(found) != 1:
        return Native(None, f"torch's OpenMP runtime not found exactly once among the mapped files ({found or 'none'})")
    try:
        lib = ctypes.CDLL(found[0])  # already loaded: the same instance, the same threads
        for fn in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"):
            getattr(lib, fn)
    except (OSError, AttributeError) as exc:
        return Native(None, f"{found[0]} is not usable ({exc})")
    return Native(lib, found[0])


def address(lib: Any, name: str) -> int:
    """The address of function `name` in a ctypes library."""
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
