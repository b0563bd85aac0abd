"""`rig compare`: one suite on many endpoints, each diffed against the reference, one provider page.

The plumbing (the endpoints file, a failure isolated to its endpoint, resume on rerun, reuse, the page) runs on the
torch-free stub stack in seconds. The real thing runs at the end: the tiny gpt-oss through Transformers and vLLM
offline, plus a real vLLM OpenAI-compatible server on 127.0.0.1 reached directly and through a proxy that is cut
half-way through its run (tests/_backoff_proxy.py), at --samples 2 on an imported GPQA-shaped suite.
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

import pytest
from click.testing import CliRunner

from rig.cli import main
from rig.compare.endpoints import load_endpoints
from rig.errors import UserError

pytest.importorskip("math_verify")  # the suite is GPQA-shaped: its answers are scored by math-verify and lm-eval
pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[1]

GPQA = [
    ("Which particle has no electric charge?", "neutron", "proton", "electron", "positron"),
    ("What is the chemical formula of water?", "H2O", "CO2", "NaCl", "O3"),
    ("How many chromosomes does a human somatic cell have?", "46", "23", "44", "48"),
]


@pytest.fixture(scope="module")
def gpqa_suite(tmp_path_factory) -> Path:
    """A GPQA-shaped CSV imported through `rig suite import --preset gpqa`."""
    import csv

    d = tmp_path_factory.mktemp("suite")
    cols = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with (d / "gpqa.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, row in enumerate(GPQA):
            w.writerow([f"rec{i}", *row])
    res = CliRunner().invoke(
        main, ["suite", "import", str(d / "gpqa.csv"), "--preset", "gpqa", "--out", str(d / "s.jsonl")]
    )
    assert res.exit_code == 0, res.output
    return d / "s.jsonl"


def _toml(path: Path, endpoints: list[dict], reference: str, extra: str = "") -> Path:
    lines = [f'reference = "{reference}"', extra, "[defaults]", "logprobs = 5", "batch_size = 2"]
    lines += ["[defaults.sampling]", "max_new_tokens = 12"]
    for e in endpoints:
        lines.append("[[endpoint]]")
        for k, v in e.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def _compare(toml: Path, suite: Path, out: Path, *extra: str):
    args = ["compare", str(toml), "--suite", str(suite), "--samples", "2", "--out", str(out), "-q", *extra]
    return CliRunner().invoke(main, args)


def _rows(out: Path) -> dict[str, dict]:
    return {r["endpoint"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}


# ---- the endpoints file ------------------------------------------------------------------------------------------


def test_endpoints_file_is_checked(tmp_path):
    stub = {"stack": "stub", "model": "stub"}
    good = _toml(tmp_path / "e.toml", [{"name": "a", **stub}, {"name": "b", **stub}], "a")
    config = load_endpoints(good, {"samples": 4})
    assert [e.name for e in config.endpoints] == ["a", "b"] and config.reference == "a"
    assert all(e.spec.sampling.samples == 4 and e.spec.sampling.temperature == 1.0 for e in config.endpoints)
    assert config.choices[0]["choice"] == "temperature 1.0" and "greedy" in config.choices[0]["reason"]
    assert all(e.spec.logprobs == 5 and e.spec.sampling.max_new_tokens == 12 for e in config.endpoints)
    bad = [
        ([{"name": "a", **stub}, {"name": "a", **stub}], "a", "used twice"),
        ([{"name": "a", **stub}], "zz", "reference 'zz' is not an endpoint"),
        ([{"name": "a b", **stub}], "a b", "'name' must be"),
        ([{"name": "a", "stack": "stub"}], "a", "has no model"),
        ([{"name": "a", **stub, "colour": "red"}], "a", "unknown field 'colour'"),
    ]
    for endpoints, ref, message in bad:
        with pytest.raises(UserError, match=message):
            load_endpoints(_toml(tmp_path / "bad.toml", endpoints, ref))


# ---- plumbing on the stub stack ----------------------------------------------------------------------------------


def test_failed_endpoint_is_isolated_and_a_rerun_completes_it(gpqa_suite, tmp_path):
    stub = {"stack": "stub", "model": "stub"}
    endpoints = [
        {"name": "ref", **stub},
        {"name": "other", **stub, "engine_args": {"perturb": 0.5, "perturb_seed": 1}},
        # 6 sequences in batches of 3: the second batch call dies, so the first run stops half-way and the resumed
        # run (a fresh stack, whose first call is the missing batch) completes
        {"name": "flaky", **stub, "batch_size": 3, "engine_args": {"fail_at_batch": 1}},
    ]
    toml = _toml(tmp_path / "e.toml", endpoints, "ref")
    out = tmp_path / "out"
    res = _compare(toml, gpqa_suite, out)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith("rig: error: 1 of 3 endpoints did not complete (flaky)")
    rows = _rows(out)
    assert rows["flaky"]["status"] == "failed" and "planted failure at batch call 1" in rows["flaky"]["error"]
    assert "flaky failed: RuntimeError: stub stack: planted failure at batch call 1" in res.output
    for name in ("ref", "other"):  # the others' results stand
        assert rows[name]["status"] == "complete" and rows[name]["accuracy"] is not None
    assert rows["other"]["sequences"] == 6 and rows["other"]["drift_source"] == "scored"
    assert rows["other"]["verdict_exit_code"] == 1  # planted perturbation: confident splits
    assert (out / "diffs" / "other.json").exists() and not (out / "diffs" / "flaky.json").exists()
    assert "planted failure" in (out / "logs" / "flaky.log").read_text()
    first_parts = sorted((out / "runs" / "flaky" / "tokens").glob("part-*.parquet"))
    assert len(first_parts) == 1

    res = _compare(toml, gpqa_suite, out)  # the rerun resumes flaky and reuses the others
    assert res.exit_code == 1, res.output
    doc = json.loads((out / "compare.json").read_text())
    outcome = {e["name"]: e["outcome"] for e in doc["endpoints"]}
    assert [a["action"] for a in outcome["flaky"]["attempts"]] == ["new", "resume"]
    assert outcome["flaky"]["attempts"][1]["tokens_before"] > 0 and outcome["flaky"]["status"] == "complete"
    assert [a["action"] for a in outcome["ref"]["attempts"]] == ["new"]  # reused, not regenerated
    rows = _rows(out)
    assert rows["flaky"]["status"] == "complete" and rows["flaky"]["failed_attempts"] == 1
    assert rows["flaky"]["share_identical"] == 1.0  # same stub, same coupled noise: the resumed run matches the ref
    page = (out / "compare.html").read_text()
    assert "<h2>Endpoints</h2>" in page and "flaky" in page and "planted failure" in page and "<svg" in page
    task = doc["endpoints"][1]["task"]
    assert task["samples_max"] == 2 and len(task["per_prompt"]) == 3 and "prompt_level" in task


def test_a_changed_spec_is_refused_without_force(gpqa_suite, tmp_path):
    stub = {"stack": "stub", "model": "stub"}
    out = tmp_path / "out"
    toml = _toml(tmp_path / "e.toml", [{"name": "a", **stub}, {"name": "b", **stub}], "a")
    assert _compare(toml, gpqa_suite, out).exit_code == 0
    res = _compare(toml, gpqa_suite, out, "--max-new-tokens", "5")
    assert res.exit_code == 2 and "pass --force to rerun it" in res.output and "Traceback" not in res.output
    assert _compare(toml, gpqa_suite, out, "--max-new-tokens", "5", "--force").exit_code == 0


# ---- the real stacks on the tiny model ---------------------------------------------------------------------------

KEY_ENV = "RIG_COMPARE_TEST_KEY"
SECRET = "sk-rig-compare-test-made-up-51a2"
SERVED = "tiny-gpt-oss"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """http://127.0.0.1:PORT of a vLLM OpenAI-compatible server with the rig's coupled logits processor."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model)]
    cmd += ["--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16"]
    cmd += ["--enforce-eager", "--max-model-len", "4096", "--api-key", SECRET, "--no-enable-prefix-caching"]
    cmd += ["--logits-processors", "rig.stacks.vllm_coupled:RigCoupledLogitsProcessor"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 400
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
    os.environ[KEY_ENV] = SECRET
    yield url
    os.environ.pop(KEY_ENV, None)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_compare_local_stacks_and_a_vllm_server(tiny_model, server, gpqa_suite, tmp_path):
    from _backoff_proxy import BackoffProxy

    proxy = BackoffProxy(server).start()
    served = {"stack": "openai", "model": SERVED, "api_key_env": KEY_ENV, "concurrency": 1}
    fast_fail = {"server_coupled": True, "max_retries": 1, "backoff_base_s": 0.05}
    endpoints = [
        {"name": "local-hf", "stack": "hf", "model": str(tiny_model)},
        {"name": "local-vllm", "stack": "vllm", "model": str(tiny_model), "max_model_len": 4096},
        {"name": "server", **served, "base_url": server + "/v1", "engine_args": {"server_coupled": True}},
        {"name": "server-cut", **served, "base_url": proxy.url + "/v1", "engine_args": fast_fail},
    ]
    toml = _toml(tmp_path / "endpoints.toml", endpoints, "local-hf")
    out = tmp_path / "out"
    first_part = out / "runs" / "server-cut" / "tokens" / "part-00000.parquet"

    def cut_after_first_part() -> None:
        deadline = time.monotonic() + 600
        while not first_part.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.stop()

    killer = threading.Thread(target=cut_after_first_part)
    killer.start()
    try:
        res = _compare(toml, gpqa_suite, out)
    finally:
        killer.join()
    assert res.exit_code == 2, res.output
    rows = _rows(out)
    assert rows["server-cut"]["status"] == "failed" and "unreachable" in rows["server-cut"]["error"]
    for name in ("local-hf", "local-vllm", "server"):
        r = rows[name]
        assert r["status"] == "complete" and r["accuracy_ci95"] is not None and r["samples"] == 2, (name, r)
    for name in ("local-vllm", "server"):  # logprobs returned: teacher-forced drift of the reference's tokens
        r = rows[name]
        assert r["drift_source"] == "scored" and r["drift_mean_abs_delta"] < 0.5, (name, r)
        assert r["sampling_mode"] == "coupled" and r["share_identical"] is not None, (name, r)
        assert r["throughput"]["tokens_per_s"] > 0
    assert rows["server"]["retries"] == 0
    m = json.loads((out / "runs" / "server" / "manifest.json").read_text())
    assert m["stack"]["resolved"]["sampler"]["value"] == "coupled" and m["spec"]["sampling"]["samples"] == 2

    proxy.start()  # the endpoint is back on the same port: the rerun completes it and touches nothing else
    try:
        res = _compare(toml, gpqa_suite, out)
    finally:
        proxy.stop()
    assert res.exit_code in (0, 1), res.output
    rows = _rows(out)
    assert all(r["status"] == "complete" for r in rows.values()), rows
    assert rows["server-cut"]["failed_attempts"] == 1 and rows["server-cut"]["drift_source"] == "scored"
    doc = json.loads((out / "compare.json").read_text())
    actions = {e["name"]: [a["action"] for a in e["outcome"]["attempts"]] for e in doc["endpoints"]}
    assert actions == {"local-hf": ["new"], "local-vllm": ["new"], "server": ["new"], "server-cut": ["new", "resume"]}
    # the cut run, resumed, holds every sequence once (its tokens can differ from "server"'s: both endpoints shared
    # the server's batches while they ran concurrently, and bf16 logits depend on the batch without batch invariance)
    from rig.run.store import RunReader

    cut = RunReader(out / "runs" / "server-cut")
    assert cut.manifest["status"] == "complete" and cut.manifest["counts"]["sequences"] == 6
    assert "local-vllm" in res.output and "accuracy [95% CI]" in res.output
