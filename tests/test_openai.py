"""The openai stack against a real vLLM OpenAI-compatible server on 127.0.0.1, started once for this module.

The server runs the tiny gpt-oss with an API key (so the key must really be sent) and with the rig's coupled logits
processor loaded (so coupled sampling can travel in `vllm_xargs`). A loopback proxy (tests/_backoff_proxy.py) sits in
front of it where a test needs HTTP 429 answers or a dead endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _backoff_proxy import BackoffProxy
from click.testing import CliRunner

from rig.cli import main
from rig.errors import UserError
from rig.run import runner
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.store import RunReader
from rig.run.suite import load_suite

pytestmark = pytest.mark.slow

KEY_ENV = "RIG_TEST_API_KEY"
SECRET = "sk-rig-test-made-up-0d6f3c2a9b8e7f41"
SERVED = "tiny-gpt-oss"
ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """http://127.0.0.1:PORT of a vLLM OpenAI-compatible server serving the tiny model as SERVED."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", KEY_ENV: ""}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model)]
    cmd += ["--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16"]
    cmd += ["--enforce-eager", "--max-model-len", "4096", "--api-key", SECRET, "--no-enable-prefix-caching"]
    cmd += ["--logits-processors", "rig.stacks.vllm_coupled:RigCoupledLogitsProcessor"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/version", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"vLLM server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = SECRET
    yield url
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory) -> Path:
    """The default suite's first prompts, as a suite file."""
    src = (ROOT / "rig" / "run" / "suites" / "default.jsonl").read_text().splitlines()[:N_PROMPTS]
    path = tmp_path_factory.mktemp("suite") / "small.jsonl"
    path.write_text("\n".join(src) + "\n")
    return path


def _spec(base_url: str, **changes) -> RunSpec:
    fields = {"stack": "openai", "model": SERVED, "base_url": base_url, "api_key_env": KEY_ENV}
    fields["sampling"] = SamplingSpec(max_new_tokens=8)
    return RunSpec(**{**fields, **changes})


def _cli(*args: str):
    return CliRunner().invoke(main, [*args, "-q", "--telemetry-hz", "0"])


def _assert_secret_absent(*dirs: Path) -> None:
    for d in dirs:
        for path in Path(d).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def test_generate_and_score_through_the_cli(server, hf_run_bf16, small_suite, tmp_path):
    a, s = tmp_path / "a", tmp_path / "s"
    common = ["--stack", "openai", "--model", SERVED, "--base-url", server + "/v1", "--api-key-env", KEY_ENV]
    res = _cli("run", *common, "--suite", str(small_suite), "--max-new-tokens", "8", "--out", str(a))
    assert res.exit_code == 0, res.output
    run = RunReader(a)
    stack = run.manifest["stack"]
    assert run.manifest["status"] == "complete" and run.manifest["counts"]["sequences"] == N_PROMPTS
    assert stack["resolved"]["api"]["value"] == "completions"
    assert stack["resolved"]["prompt_tokens"]["value"] == "rig"
    assert stack["server"]["version"] == "0.32.0"
    assert [m["id"] for m in stack["server"]["models"]["data"]] == [SERVED]
    assert stack["api_key_env"] == KEY_ENV
    t = run.tokens()
    lps = np.asarray(t.column("topk_logprobs").to_pylist(), np.float32)
    assert lps.shape == (t.num_rows, 20) and (np.diff(lps, axis=1) <= 0).all()
    np.testing.assert_array_equal(t.column("logprob").to_numpy(), lps[:, 0])  # greedy: the top-1 entry

    res = _cli("score", str(hf_run_bf16), *common, "--out", str(s))
    assert res.exit_code == 0, res.output
    source, scored = RunReader(hf_run_bf16), RunReader(s)
    assert scored.manifest["source_run"]["tokens_hash"] == source.tokens_hash()
    assert scored.manifest["stack"]["resolved"]["scoring"]["value"] == "prompt_logprobs"
    x, y = source.tokens(), scored.tokens()
    np.testing.assert_array_equal(x.column("token_id").to_numpy(), y.column("token_id").to_numpy())
    delta = np.abs(x.column("logprob").to_numpy() - y.column("logprob").to_numpy())
    assert delta.mean() < 0.1, delta.mean()
    _assert_secret_absent(a, s)


def test_retries_on_429_are_counted(server, small_suite, tmp_path):
    from rig.stacks.openai import OpenAIStack

    proxy = BackoffProxy(server).start()
    try:
        spec = _spec(proxy.url + "/v1")
        stack = OpenAIStack(spec)
        stack.load()
        proxy.fail_next(2, 429, "/v1/completions")
        out = runner.execute(spec, tmp_path / "r", suite=load_suite(str(small_suite)), telemetry_hz=0, stack=stack)
        stack.close()
    finally:
        proxy.stop()
    run = RunReader(out)
    assert run.manifest["status"] == "complete"
    assert len(proxy.failed) == 2
    assert sum(c["timings"]["retries"] for c in run.completions) == 2
    assert run.manifest["stack"]["requests"]["retries"] == 2
    assert run.manifest["stack"]["requests"]["failed"] == 0
    _assert_secret_absent(out)


def test_dead_endpoint_fails_in_one_line_and_resume_completes(server, small_suite, tmp_path):
    # concurrency 1: one request at a time, so the server's batches (and its bf16 numerics) are the same every run
    opts = ["--stack", "openai", "--model", SERVED, "--api-key-env", KEY_ENV, "--suite", str(small_suite)]
    opts += ["--max-new-tokens", "8", "--batch-size", "2", "--concurrency", "1"]
    ref = tmp_path / "ref"
    assert _cli("run", *opts, "--base-url", server + "/v1", "--out", str(ref)).exit_code == 0

    proxy = BackoffProxy(server).start()
    out = tmp_path / "cut"
    first_part = out / "tokens" / "part-00000.parquet"

    def cut_after_first_part() -> None:
        deadline = time.monotonic() + 120
        while not first_part.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.stop()

    killer = threading.Thread(target=cut_after_first_part)
    killer.start()
    res = _cli(
        "run",
        *opts,
        "--base-url",
        proxy.url + "/v1",
        "--out",
        str(out),
        "--engine-arg",
        "max_retries=2",
        "--engine-arg",
        "backoff_base_s=0.1",
    )
    killer.join()
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("rig: error: endpoint http://127.0.0.1:") and "unreachable after 3 tries" in line, line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "unreachable" in manifest["error"]
    parts = sorted((out / "tokens").glob("part-*.parquet"))
    assert parts and len(parts) < N_PROMPTS // 2
    for part in parts:
        assert pq.read_table(part).num_rows > 0
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert {r["part"] for r in rows} == {int(p.stem.split("-")[1]) for p in parts}

    proxy.start()  # the endpoint is back, on the same port
    try:
        res = _cli("run", "--resume", str(out))
    finally:
        proxy.stop()
    assert res.exit_code == 0, res.output
    resumed, reference = RunReader(out).tokens(), RunReader(ref).tokens()
    for col in ("prompt_id", "sample", "pos", "token_id", "logprob", "topk_ids", "topk_logprobs"):
        assert resumed.column(col).equals(reference.column(col)), col
    _assert_secret_absent(ref, out)


def test_unreachable_endpoint_writes_nothing(small_suite, tmp_path):
    out = tmp_path / "never"
    res = _cli(
        "run",
        "--stack",
        "openai",
        "--model",
        SERVED,
        "--base-url",
        f"http://127.0.0.1:{_free_port()}/v1",
        "--suite",
        str(small_suite),
        "--out",
        str(out),
        "--engine-arg",
        "max_retries=1",
        "--engine-arg",
        "backoff_base_s=0.05",
    )
    assert res.exit_code == 2
    assert "unreachable after 2 tries" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_missing_key_variable_is_a_user_error(server):
    from rig.stacks.openai import OpenAIStack

    stack = OpenAIStack(_spec(server + "/v1", api_key_env="RIG_TEST_NO_SUCH_KEY"))
    with pytest.raises(UserError, match="RIG_TEST_NO_SUCH_KEY"):
        stack.load()


def test_chat_only_fallback_records_who_owned_the_prompt(server, small_suite, tmp_path):
    from rig.stacks.openai import OpenAIStack

    spec = _spec(server + "/v1", engine_args=(("api", "chat"),))
    stack = OpenAIStack(spec)
    stack.load()
    out = runner.execute(spec, tmp_path / "chat", suite=load_suite(str(small_suite)), telemetry_hz=0, stack=stack)
    run = RunReader(out)
    resolved = run.manifest["stack"]["resolved"]
    assert resolved["api"]["value"] == "chat"
    assert (
        resolved["prompt_tokens"]["value"] == "server"
        and "not under the rig's control" in resolved["prompt_tokens"]["reason"]
    )
    assert run.manifest["counts"]["tokens"] > 0
    with pytest.raises(UserError, match="only chat"):
        stack.score([])
    stack.close()


def test_coupled_sampling_through_the_server(server, small_suite, tiny_model):
    """With the server running rig's logits processor, coupled samples repeat and track hf's coupled samples."""
    from rig.stacks.hf import HFStack
    from rig.stacks.openai import OpenAIStack

    sampling = SamplingSpec(max_new_tokens=16, temperature=1.0, seed=3)
    prompts = load_suite(str(small_suite)).prompts
    reqs = runner.generation_requests(prompts, 1)
    runs = []
    for _ in range(2):
        stack = OpenAIStack(
            _spec(server + "/v1", sampling=sampling, concurrency=1, engine_args=(("server_coupled", True),))
        )
        stack.load()
        assert stack.describe()["resolved"]["sampler"]["value"] == "coupled"
        runs.append(stack.generate(reqs))
        stack.close()
    for x, y in zip(*runs, strict=True):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
    hf = HFStack(RunSpec(stack="hf", model=str(tiny_model), sampling=sampling))
    hf.load()
    ref = hf.generate(reqs)
    hf.close()
    matched = [
        next((i for i, (a, b) in enumerate(zip(x.token_ids, y.token_ids, strict=False)) if a != b), 16)
        for x, y in zip(runs[0], ref, strict=True)
    ]
    assert np.mean(matched) >= 8, matched  # offline vLLM against hf: 90% of positions before the first split
