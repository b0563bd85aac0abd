"""Shared fixtures: the tiny gpt-oss (built once per session) and real tiny-model runs.

Every test drives real stacks on the tiny model; the runs below are built once and shared, because loading a stack
costs seconds and CI must stay under 30 minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny gpt-oss checkpoint with tokenizer files (built once per test session, about 20 s)."""
    from rig.testing.tiny import build_tiny_model

    cached = os.environ.get("RIG_TINY_MODEL")
    if cached and (Path(cached) / "model.safetensors").exists():
        return Path(cached)
    out = tmp_path_factory.mktemp("tiny") / "tiny-gpt-oss"
    build_tiny_model(out)
    return out


def _hf_run(tiny_model: Path, out: Path, dtype: str, max_new_tokens: int = 24) -> Path:
    from rig.run import runner
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.suite import load_suite

    spec = RunSpec(stack="hf", model=str(tiny_model), dtype=dtype, sampling=SamplingSpec(max_new_tokens=max_new_tokens))
    return runner.execute(spec, out, suite=load_suite("default"), telemetry_hz=10.0)


@pytest.fixture(scope="session")
def hf_run_bf16(tiny_model, tmp_path_factory) -> Path:
    """A complete hf bf16 greedy run of the default suite, 24 tokens per prompt."""
    return _hf_run(tiny_model, tmp_path_factory.mktemp("runs") / "hf-bf16", "bfloat16")


@pytest.fixture(scope="session")
def hf_run_fp32(tiny_model, tmp_path_factory) -> Path:
    """The same in float32."""
    return _hf_run(tiny_model, tmp_path_factory.mktemp("runs") / "hf-fp32", "float32")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def vllm_run(tiny_model, tmp_path_factory) -> Path:
    """A complete vLLM bf16 greedy run of the default suite, 24 tokens per prompt (its own engine, closed after)."""
    from rig.run import runner
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.suite import load_suite

    spec = RunSpec(
        stack="vllm",
        model=str(tiny_model),
        dtype="bfloat16",
        max_model_len=4096,
        sampling=SamplingSpec(max_new_tokens=24),
    )
    return runner.execute(
        spec, tmp_path_factory.mktemp("runs") / "vllm-bf16", suite=load_suite("default"), telemetry_hz=10.0
    )
