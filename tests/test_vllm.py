"""The vLLM stack on the tiny gpt-oss: a real engine in its worker process, shared by this module's tests.

Starting an engine costs about 20 s on two cores, so one module-scoped engine serves the generation, scoring and
describe tests; the `rig score` test goes through the real CLI (its own engine) to check exit codes and a clean
shutdown end to end. The last test closes the shared engine and checks that its worker exited with code 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rig.errors import UserError
from rig.run import runner
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.store import RunReader
from rig.run.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def engine(tiny_model):
    from rig.stacks.vllm import VLLMStack

    spec = RunSpec(
        stack="vllm",
        model=str(tiny_model),
        max_model_len=4096,
        sampling=SamplingSpec(max_new_tokens=MAX_NEW_TOKENS),
        engine_args=(("max_num_seqs", 16),),
    )
    stack = VLLMStack(spec)
    stack.load()
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def greedy_runs(engine, tmp_path_factory):
    """Two greedy runs of the default suite through the runner, on the shared engine."""
    out = tmp_path_factory.mktemp("vllm-runs")
    suite = load_suite("default")
    a = runner.execute(engine.spec, out / "a", suite=suite, telemetry_hz=0, stack=engine)
    b = runner.execute(engine.spec, out / "b", suite=suite, telemetry_hz=0, stack=engine)
    return RunReader(a), RunReader(b)


def test_import_stays_light():
    code = "import sys, rig.stacks.vllm, rig.stacks.openai\n"
    code += "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_model_is_a_user_error(tmp_path):
    from rig.stacks.vllm import VLLMStack

    with pytest.raises(UserError, match="unknown model"):
        VLLMStack(RunSpec(stack="vllm", model=str(tmp_path / "nope"))).load()


@pytest.mark.slow
def test_greedy_twice_gives_identical_tokens(greedy_runs):
    a, b = (r.tokens() for r in greedy_runs)
    assert 0 < a.num_rows <= 29 * MAX_NEW_TOKENS
    for col in ("prompt_id", "sample", "pos", "token_id", "logprob", "topk_ids", "topk_logprobs"):
        assert a.column(col).equals(b.column(col)), col


@pytest.mark.slow
def test_greedy_logprob_is_the_top1_entry(greedy_runs):
    t = greedy_runs[0].tokens()
    k = greedy_runs[0].k
    ids = np.asarray(t.column("topk_ids").to_pylist(), np.int32)
    lps = np.asarray(t.column("topk_logprobs").to_pylist(), np.float32)
    assert ids.shape == (t.num_rows, k) == (t.num_rows, 20)
    np.testing.assert_array_equal(t.column("logprob").to_numpy(), lps[:, 0])
    # The token is the top-1 entry, except where the top two tie exactly (bf16 logits tie often on the tiny model):
    # vLLM's CPU argmax and torch.topk may then name different tokens of equal logprob.
    token = t.column("token_id").to_numpy()
    differs = token != ids[:, 0]
    assert (lps[differs, 0] == lps[differs, 1]).all()
    assert differs.mean() < 0.1
    assert (np.diff(lps, axis=1) <= 0).all(), "top-K must be sorted best first"
    assert (lps <= 0).all() and np.isfinite(lps).all()


@pytest.mark.slow
def test_score_of_own_output_matches_generation(engine, greedy_runs, tmp_path):
    source = greedy_runs[0]
    scored = RunReader(runner.execute(engine.spec, tmp_path / "s", source=source, telemetry_hz=0, stack=engine))
    assert scored.manifest["kind"] == "score"
    assert scored.manifest["source_run"]["tokens_hash"] == source.tokens_hash()
    g, s = source.tokens(), scored.tokens()
    np.testing.assert_array_equal(g.column("token_id").to_numpy(), s.column("token_id").to_numpy())
    delta = np.abs(g.column("logprob").to_numpy() - s.column("logprob").to_numpy())
    # prefill (scoring) and decode (generation) run different kernels in bf16: close, not always bit-equal. The bound
    # follows from the precision (the logits' bf16 grid, read from the run), not from what this CPU happened to give.
    from rig.analysis.numerics import logit_grid

    topk = np.asarray(g.column("topk_logprobs").to_pylist(), np.float32)
    grid = logit_grid(topk, "bfloat16")["grid"]
    assert np.percentile(delta, 99) <= 2 * grid and delta.mean() < grid / 4, (grid, delta.max(), delta.mean())


@pytest.mark.slow
def test_pipelined_batches_record_the_same_run(engine, greedy_runs, tmp_path):
    """On a GPU the runner writes batch i while the worker computes batch i + 1 (rig.stacks.vllm submit); the CPU
    engine runs unpipelined and says why. Forced on here, the pipelined path records the same run, part by part,
    generation and scoring alike."""
    resolved = greedy_runs[0].manifest["stack"]["resolved"]["pipelining"]
    assert resolved["value"] is False and "CPU" in resolved["reason"]
    suite = load_suite("default")
    spec = engine.spec.replace(batch_size=8)  # 4 batches: three overlapped writes and a last one
    engine._pipelined = True
    try:
        piped = RunReader(runner.execute(spec, tmp_path / "p", suite=suite, telemetry_hz=0, stack=engine))
        engine._pipelined = False
        plain = RunReader(runner.execute(spec, tmp_path / "q", suite=suite, telemetry_hz=0, stack=engine))
        engine._pipelined = True
        scored = RunReader(runner.execute(spec, tmp_path / "s", source=piped, telemetry_hz=0, stack=engine))
    finally:
        engine._pipelined = False
    assert piped.manifest["status"] == "complete" and len(piped.manifest["parts_plan"]) == 4
    for col in ("prompt_id", "sample", "pos", "token_id", "logprob", "topk_ids", "topk_logprobs"):
        assert piped.tokens().column(col).equals(plain.tokens().column(col)), col
    assert [c["prompt_id"] for c in piped.completions] == [c["prompt_id"] for c in plain.completions]
    np.testing.assert_array_equal(
        scored.tokens().column("token_id").to_numpy(), piped.tokens().column("token_id").to_numpy()
    )


@pytest.mark.slow
def test_describe_records_what_the_engine_resolved(engine, greedy_runs):
    stack = greedy_runs[0].manifest["stack"]
    assert stack["stack"] == "vllm"
    resolved = stack["resolved"]
    for key in (
        "attention",
        "experts",
        "quantization",
        "kv_cache_dtype",
        "batch_invariant",
        "execution",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "max_num_seqs",
        "max_model_len",
        "dtype",
        "device",
        "vllm_version",
        "prefix_caching",
        "sampler",
    ):
        assert key in resolved, key
        assert resolved[key]["reason"], key
    assert resolved["attention"]["value"] and resolved["experts"]["value"]
    assert resolved["device"]["value"] == "cpu"
    assert resolved["prefix_caching"]["value"] is False
    assert resolved["max_model_len"]["value"] == 4096 and resolved["max_model_len"]["reason"] == "requested"
    assert resolved["max_num_seqs"] == {"value": 16, "reason": "requested (--engine-arg max_num_seqs=16)"}
    assert resolved["sampler"]["value"] == "greedy"
    assert stack["engine_kwargs"]["max_num_seqs"] == 16
    assert stack["versions"]["vllm"] == resolved["vllm_version"]["value"]


@pytest.mark.slow
def test_rig_score_cli_scores_an_hf_run(hf_run_bf16, tiny_model, tmp_path):
    out = tmp_path / "vllm-on-hf"
    cmd = [sys.executable, "-m", "rig", "score", str(hf_run_bf16), "--stack", "vllm", "--model", str(tiny_model)]
    cmd += ["--out", str(out), "--telemetry-hz", "0", "--max-model-len", "4096", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "Aborted" not in proc.stderr
    source, scored = RunReader(hf_run_bf16), RunReader(out)
    assert scored.manifest["status"] == "complete"
    assert scored.manifest["source_run"]["name"] == source.name
    assert scored.manifest["source_run"]["tokens_hash"] == source.tokens_hash()
    assert scored.manifest["source_run"]["spec_hash"] == source.manifest["spec_hash"]
    a, b = source.tokens(), scored.tokens()
    np.testing.assert_array_equal(a.column("token_id").to_numpy(), b.column("token_id").to_numpy())
    delta = np.abs(a.column("logprob").to_numpy() - b.column("logprob").to_numpy())
    assert delta.mean() < 0.1, delta.mean()  # the same model under two bf16 stacks


@pytest.mark.slow
def test_zz_engine_shuts_down_cleanly(engine):
    engine.close()
    assert engine.exit_code == 0
