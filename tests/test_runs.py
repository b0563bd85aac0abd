"""Run directories: a writer/reader round trip, refusals, and resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rig.errors import UserError
from rig.files import sha256_file
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.store import RunError, RunReader, RunWriter
from rig.run.suite import Prompt, token_hash
from rig.run.verify import check_run
from rig.stacks.base import SequenceResult


def _prompt(pid, ids):
    return Prompt(id=pid, token_ids=tuple(ids), sha256=token_hash(ids), kind="tokens")


def _result(pid, sample, ids, k=3):
    n = len(ids)
    return SequenceResult(
        prompt_id=pid,
        sample=sample,
        token_ids=ids,
        logprobs=-np.arange(n, dtype=np.float32) / 10,
        topk_ids=np.tile(np.arange(k, dtype=np.int32), (n, 1)),
        topk_logprobs=np.tile(-np.arange(k, dtype=np.float32), (n, 1)),
        finish_reason="length",
    )


def _manifest(k=3):
    spec = RunSpec(model="m", logprobs=k, batch_size=2, sampling=SamplingSpec(samples=2))
    return {
        "kind": "generate",
        "spec": spec.to_dict(),
        "spec_hash": spec.hash(),
        "suite": {"name": "t", "hash": "h"},
        "stack": {},
        "parts_plan": {"0": 2, "1": 2},
    }


def test_round_trip(tmp_path):
    prompts = [_prompt("p1", [1, 2]), _prompt("p2", [3])]
    w = RunWriter(tmp_path / "r")
    w.create(_manifest(), prompts)
    w.write_part(
        1,
        [_result("p2", 0, [7, 8, 9]), _result("p2", 1, [3])],
        [{"prompt_id": "p2", "sample": 0, "n_tokens": 3}, {"prompt_id": "p2", "sample": 1, "n_tokens": 1}],
    )
    w.write_part(
        0,
        [_result("p1", 0, [4]), _result("p1", 1, [5, 6])],
        [{"prompt_id": "p1", "sample": 0, "n_tokens": 1}, {"prompt_id": "p1", "sample": 1, "n_tokens": 2}],
    )
    w.finish()
    r = RunReader(tmp_path / "r")
    assert r.manifest["status"] == "complete" and r.manifest["counts"] == {
        "prompts": 2,
        "sequences": 4,
        "tokens": 7,
        "parts": 2,
    }
    t = r.tokens()
    assert t.column("prompt_id").to_pylist() == ["p1", "p1", "p1", "p2", "p2", "p2", "p2"]
    assert t.column("sample").to_pylist() == [0, 1, 1, 0, 0, 0, 1]
    assert t.column("pos").to_pylist() == [0, 0, 1, 0, 1, 2, 0]
    assert t.column("token_id").to_pylist() == [4, 5, 6, 7, 8, 9, 3]
    assert t.column("topk_ids").type.list_size == 3
    assert [c["prompt_id"] for c in r.completions] == ["p1", "p1", "p2", "p2"]
    # the integrity record (docs/architecture.md): each part's file, rows and sequences; prompts and completions
    integrity = r.manifest["integrity"]
    for key, rows in (("00000", 3), ("00001", 4)):
        part = tmp_path / "r" / "tokens" / f"part-{key}.parquet"
        rec = integrity["parts"][key]
        assert (rec["rows"], rec["sequences"], rec["bytes"]) == (rows, 2, part.stat().st_size)
        assert rec["sha256"] == sha256_file(part)
    assert integrity["prompts"]["sha256"] == sha256_file(tmp_path / "r" / "prompts.jsonl")
    assert integrity["completions"] == {
        "rows": 4,
        "bytes": (tmp_path / "r" / "completions.jsonl").stat().st_size,
        "sha256": sha256_file(tmp_path / "r" / "completions.jsonl"),
    }
    assert check_run(tmp_path / "r", decode=True).ok
    # pandas and polars read the parts directly
    import pandas as pd

    df = pd.read_parquet(tmp_path / "r" / "tokens")
    assert len(df) == 7 and set(df.columns) >= {"prompt_id", "logprob", "topk_logprobs"}
    assert not list((tmp_path / "r").rglob("*.tmp"))


def test_complete_run_is_never_overwritten(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.create(_manifest(), [_prompt("p1", [1])])
    w.finish()
    with pytest.raises(UserError, match="--force"):
        RunWriter(tmp_path / "r").create(_manifest(), [_prompt("p1", [1])])
    RunWriter(tmp_path / "r").create(_manifest(), [_prompt("p1", [1])], force=True)


def test_reader_names_file_and_field(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.create(_manifest(), [_prompt("p1", [1, 2])])
    w.finish()
    prompts = tmp_path / "r" / "prompts.jsonl"
    rec = json.loads(prompts.read_text())
    rec["token_ids"] = [1, 3]
    prompts.write_text(json.dumps(rec) + "\n")
    with pytest.raises(RunError, match=r"prompts.jsonl: differs from the manifest's record \(sha256\)"):
        RunReader(tmp_path / "r")
    problems = [str(p) for p in check_run(tmp_path / "r").problems]
    assert any(re.search(r"prompts.jsonl: line 1: field 'sha256' does not match", p) for p in problems), problems
    assert any(re.search(r"tokens: none of the 2 planned parts is there", p) for p in problems), problems
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    m["schema_version"] = 99
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunError, match="field 'schema_version'"):
        RunReader(tmp_path / "r")
    with pytest.raises(RunError, match="missing"):
        RunReader(tmp_path)


def _rig(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "rig", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory):
    """Twelve prompts of the default suite, so a batch-2 run has six parts."""
    from importlib import resources

    lines = resources.files("rig.run.suites").joinpath("default.jsonl").read_text().splitlines()[:12]
    path = tmp_path_factory.mktemp("suite") / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_resume_after_sigkill_matches_uninterrupted(small_suite, tmp_path):
    """Plumbing, so the torch-free stub stack (slowed to 0.3 s a batch so that the kill lands half-way)."""
    args = ["--stack", "stub", "--model", "stub", "--suite", str(small_suite), "--batch-size", "2"]
    args += ["--max-new-tokens", "24", "--engine-arg", "batch_delay_s=0.3", "-q", "--telemetry-hz", "5"]
    proc = _rig("run", *args, "--out", str(tmp_path / "a"))
    tokens = tmp_path / "a" / "tokens"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tokens.glob("part-*.parquet")) if tokens.exists() else []) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(tokens.glob("part-*.parquet")))
    assert 2 <= done_before < 6, "the kill must land half-way"
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["status"] == "running"

    resume = _rig("run", "--resume", str(tmp_path / "a"), "-q", "--telemetry-hz", "5")
    uninterrupted = _rig("run", *args, "--out", str(tmp_path / "b"))
    for p in (resume, uninterrupted):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = RunReader(tmp_path / "a"), RunReader(tmp_path / "b")
    assert a.manifest["status"] == "complete" and a.manifest["counts"] == b.manifest["counts"]
    assert a.tokens().equals(b.tokens())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "timings"} for r in rows]  # noqa: E731
    assert strip(a.completions) == strip(b.completions)
    assert len(list((tmp_path / "a" / "tokens").glob("*.parquet"))) == 6
    assert pq.read_table(next((tmp_path / "a" / "tokens").glob("*.parquet"))).num_rows > 0
    assert not list(Path(tmp_path / "a").rglob("*.tmp"))
