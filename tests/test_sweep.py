"""rig sweep: a grid of cells around a base spec, each an ordinary run, each judged against a reference with a
replicate floor; resumable after a kill; cells a stack refuses recorded as skipped; the same sweep on a real local
Ray cluster, including a worker killed mid-cell.

The tiny-model sweep drives the real hf stack; resume, the plan and the Ray executor use the stub stack (plumbing).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.analysis.compare import diff_paths
from rig.cli import main
from rig.errors import UserError
from rig.run.spec import RunSpec
from rig.run.store import RunReader
from rig.sweep.plan import load_sweep_spec, make_plan, parse_assignments, parse_grid

RIG = str(Path(sys.executable).with_name("rig"))
STUB = ["--stack", "stub", "--model", "stub", "--telemetry-hz", "0"]


def _doc(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def _rows(doc: dict) -> dict[str, dict]:
    return {r["label"]: r for r in doc["cells"]}


# ---- the plan ------------------------------------------------------------------------------------------------------


def test_grid_axes_cells_reference_and_replicates(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'stack = "stub"\nmodel = "stub"\n[sampling]\nmax_new_tokens = 8\n'
        '[grid]\ndtype = ["bfloat16", "float32"]\nkv_cache_dtype = ["auto", "fp8"]\n'
        '[sweep]\nreplicates = 2\nreference = {dtype = "float32"}\n'
    )
    base, grid, sweep = load_sweep_spec(spec, {"sampling.max_new_tokens": 4})
    assert base.sampling.max_new_tokens == 4 and sweep["replicates"] == 2
    axes = parse_grid(["batch_size=1,4", "sampling.temperature=0,1.0"], grid)
    assert [(a.key, a.target, a.name) for a in axes] == [
        ("dtype", "run", "dtype"),
        ("kv_cache_dtype", "engine", "kv_cache_dtype"),
        ("batch_size", "run", "batch_size"),
        ("sampling.temperature", "sampling", "temperature"),
    ]
    assert axes[2].values == (1, 4) and axes[3].values == (0.0, 1.0)
    plan = make_plan(base, axes, reference=sweep["reference"], replicates=sweep["replicates"])
    assert len(plan.cells) == 16 + 2 and [c.role for c in plan.cells[:3]] == ["reference", "replicate", "replicate"]
    ref = plan.reference
    assert ref.values == {"dtype": "float32", "kv_cache_dtype": "auto", "batch_size": 1, "sampling.temperature": 0.0}
    assert dict(ref.spec.engine_args) == {"kv_cache_dtype": "auto"} and ref.spec.dtype == "float32"
    assert all(r.spec == ref.spec for r in plan.replicas) and len({c.id for c in plan.cells}) == len(plan.cells)
    assert len({c.spec.hash() for c in plan.cells if c.role != "replicate"}) == 16
    hot = next(c for c in plan.cells if c.values["sampling.temperature"] == 1.0)
    assert hot.spec.sampling.temperature == 1.0 and hot.id.endswith(hot.spec.hash()[:8])
    assert parse_assignments("dtype=float32,batch_size=4") == {"dtype": "float32", "batch_size": 4}


@pytest.mark.parametrize(
    "grid, reference, message",
    [
        (["dtype=bfloat16,float8"], {}, "dtype must be one of"),
        (["batch_size=1,x"], {}, "not a valid int"),
        (["dtype=float32,float32"], {}, "repeats a value"),
        (["dtype"], {}, "expected KEY=VALUE1"),
        (["sampling=1,2"], {}, "not a field"),
        (["dtype=bfloat16,float32"], {"dtype": "float16"}, "not one of the axis' values"),
        (["dtype=bfloat16,float32"], {"batch_size": 2}, "not a grid axis"),
    ],
)
def test_bad_grids_are_refused_in_one_line(grid, reference, message):
    base = RunSpec(stack="stub", model="stub")
    with pytest.raises(UserError, match=message):
        make_plan(base, parse_grid(grid), reference=reference)


def test_cli_refuses_another_plan_in_the_same_directory(tmp_path):
    out = tmp_path / "s"
    args = ["sweep", *STUB, "--max-new-tokens", "4", "--prompts", "2", "--replicates", "0", "--out", str(out), "-q"]
    res = CliRunner().invoke(main, [*args, "--grid", "dtype=bfloat16,float32"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args, "--grid", "dtype=bfloat16,float16"])
    assert res.exit_code == 2 and "holds another sweep" in res.output


# ---- the tiny model through hf: the matrix, the reference, the verdicts, a skipped cell ----------------------------


def test_tiny_model_sweep_matrix_reference_verdicts_and_skipped_cells(tiny_model, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--stack", "hf", "--model", str(tiny_model), "--max-new-tokens", "8", "--prompts", "4"]
    args += ["--grid", "dtype=bfloat16,float32", "--grid", "batch_size=1,4", "--grid", "quantization=auto,mxfp4"]
    res = CliRunner().invoke(
        main, [*args, "--telemetry-hz", "0", "--out", str(out), "--json", str(tmp_path / "s.json")]
    )
    doc = _doc(out)
    assert res.exit_code == doc["verdict"]["exit_code"] in (0, 1), res.output
    assert json.loads((tmp_path / "s.json").read_text()) == doc
    rows = doc["cells"]
    assert len(rows) == 8 + 1 and [r["role"] for r in rows[:2]] == ["reference", "replicate"]
    ref, rep = rows[0], rows[1]
    assert ref["values"] == {"dtype": "bfloat16", "batch_size": 1, "quantization": "auto"}
    assert doc["reference"] == ref["id"] and ref["verdict"]["line"] == "the reference"
    # the mxfp4 half: the tiny model has no MXFP4 weights, so hf refuses at load; recorded with the reason, no run
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 4 and all(r["values"]["quantization"] == "mxfp4" for r in skipped)
    assert all("no quantization_config" in r["reason"] for r in skipped)
    assert not any((out / r["dir"]).exists() for r in skipped)
    assert sorted(doc["verdict"]["skipped"]) == sorted(r["id"] for r in skipped)
    # a replicate of one spec on one stack is bitwise identical (docs/stacks.md): the floor is zero
    assert rep["verdict"]["exit_code"] == 0 and rep["metrics"]["share_identical"] == 1.0
    # every cell's verdict is exactly `rig diff REF CELL --floor REF REPLICATE`
    ran = [r for r in rows if r["role"] == "cell" and r["status"] == "complete"]
    assert len(ran) == 3
    for r in ran:
        want = diff_paths(out / ref["dir"], out / r["dir"], floor=(out / ref["dir"], out / rep["dir"]))
        assert r["verdict"] == {k: want["verdict"][k] for k in ("exit_code", "line")}
        assert r["metrics"]["share_identical"] == want["summary"]["share_identical"]
        assert r["metrics"]["tf_mean_abs_delta"] == pytest.approx(want["teacher_forced"]["mean_abs_delta"])
        assert r["metrics"]["confident"] == want["summary"]["confident"]
        assert r["metrics"]["tokens_per_s"] > 0 and r["metrics"]["j_per_token"] is None  # no GPU here
        assert json.loads((out / r["diff"]).read_text())["verdict"]["exit_code"] == r["verdict"]["exit_code"]
        assert RunReader(out / r["dir"]).manifest["spec_hash"] == r["spec_hash"]
    diverged = [r["id"] for r in ran if r["verdict"]["exit_code"] == 1]
    assert doc["verdict"]["diverged"] == diverged and doc["verdict"]["exit_code"] == (1 if diverged else 0)
    # the terminal matrix and the heatmap page
    assert "reference" in res.output and "skipped" in res.output and "identical" in res.output
    page = (out / "sweep.html").read_text()
    assert page.count("<tr>") >= 9 and "quantization" in page and "batch_size" not in page.split("Sweep")[0]
    # running it again finds every cell cached and decides the same
    again = CliRunner().invoke(main, [*args, "--telemetry-hz", "0", "--out", str(out), "-q"])
    doc2 = _doc(out)
    assert again.exit_code == res.exit_code
    assert {r["ran"] for r in doc2["cells"] if r["status"] == "complete"} == {"cached"}
    assert [r.get("verdict") for r in doc2["cells"]] == [r.get("verdict") for r in rows]
    assert doc2["timings"]["driver_s_per_cell"] < 1.0


# ---- refusals are skipped, crashes fail and resume -------------------------------------------------------------------


def test_refused_cells_are_skipped_and_crashed_cells_resume(tmp_path):
    """stop_bias=x: the stub cannot parse it (a ValueError at load, as Transformers raises for sdpa on gpt-oss):
    skipped with the reason, no directory. fail_at_batch=1: the cell crashes after committing a part: failed, exit 2,
    and each rerun resumes it from its committed parts until it completes."""
    out = tmp_path / "s"
    args = ["sweep", *STUB, "--max-new-tokens", "4", "--prompts", "6", "--batch-size", "2", "--replicates", "0"]
    args += ["--grid", "stop_bias=-2,x", "--grid", "fail_at_batch=null,1", "--out", str(out), "-q"]
    res = CliRunner().invoke(main, args)
    rows = _rows(_doc(out))
    assert res.exit_code == 2 and "INCOMPLETE" in _doc(out)["verdict"]["line"], res.output
    skipped = [r for r in rows.values() if r["status"] == "skipped"]
    assert len(skipped) == 2 and all(r["values"]["stop_bias"] == "x" for r in skipped)
    assert all(r["reason"].startswith("ValueError: could not convert string to float") for r in skipped)
    assert not any((out / r["dir"]).exists() for r in skipped)
    crashed = rows["stop_bias=-2, fail_at_batch=1"]
    assert crashed["status"] == "failed" and "planted failure" in crashed["reason"]
    manifest = json.loads((out / crashed["dir"] / "manifest.json").read_text())
    assert manifest["status"] == "failed" and len(manifest["integrity"]["parts"]) == 1
    # every rerun starts a fresh stub (its failure counter restarts), so the resumed run gets one batch further
    for parts in (2, 3):
        res = CliRunner().invoke(main, args)
        row = _rows(_doc(out))["stop_bias=-2, fail_at_batch=1"]
        assert len(json.loads((out / row["dir"] / "manifest.json").read_text())["integrity"]["parts"]) == parts
    assert row["status"] == "complete" and row["ran"] == "resumed" and res.exit_code in (0, 1), res.output
    assert _doc(out)["verdict"]["skipped"] == [r["id"] for r in skipped]


# ---- resume after a kill -------------------------------------------------------------------------------------------


def _wait_for(predicate, timeout_s: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _running_cell_with_parts(out: Path) -> Path | None:
    """A cell directory (on the driver) whose run is unfinished and has at least one committed part."""
    for manifest in (out / "runs").glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
        except ValueError:
            continue
        if m["status"] == "running" and len(m.get("integrity", {}).get("parts", {})) >= 1:
            return manifest.parent
    return None


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "s"
    cmd = [RIG, "sweep", *STUB, "--max-new-tokens", "6", "--prompts", "6", "--batch-size", "2", "-q"]
    cmd += ["--grid", "dtype=bfloat16,float32", "--engine-arg", "batch_delay_s=0.4", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # let the reference finish, then kill the driver in the middle of the next cell (after one committed part)
        ref = _wait_for(lambda: next((out / "runs").glob("*/manifest.json"), None), 60, "the reference to start")
        _wait_for(lambda: json.loads(ref.read_text())["status"] == "complete", 60, "the reference to complete")
        victim = _wait_for(lambda: _running_cell_with_parts(out), 60, "a cell with a committed part")
    finally:
        proc.kill()
        proc.wait()
    part0 = victim / "tokens" / "part-00000.parquet"
    before = {p.name: p.stat().st_mtime_ns for p in (victim / "tokens").glob("part-*.parquet")}
    ref_created = json.loads(ref.read_text())["created_at"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["dir"]: r for r in _doc(out)["cells"]}
    assert rows[f"runs/{ref.parent.name}"]["ran"] == "cached"
    assert json.loads(ref.read_text())["created_at"] == ref_created
    assert rows[f"runs/{victim.name}"]["ran"] == "resumed"
    assert part0.stat().st_mtime_ns == before["part-00000.parquet"]  # committed before the kill: kept, not redone
    assert all(r["status"] == "complete" for r in rows.values())
    # the resumed run ends with the tokens of an uninterrupted one
    res = CliRunner().invoke(main, ["sweep", "--resume", str(out), "-q", "--telemetry-hz", "0"])
    assert res.exit_code == 0 and {r["ran"] for r in _doc(out)["cells"]} == {"cached"}


# ---- Ray: a real local cluster (a head and a worker node, started here), a worker killed mid-cell -------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head node and a worker node (custom resource "box2") on this machine; stopped after the module."""
    pytest.importorskip("ray")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    logs = tmp_path_factory.mktemp("ray")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000", "--block"]
    procs = []
    try:
        head_log = logs / "head.log"
        procs.append(
            subprocess.Popen(
                [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                stdout=head_log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        )
        _wait_for(lambda: "Ray runtime started" in head_log.read_text(), 180, "the Ray head")
        address = next(
            line.split("--address='")[1].split("'")[0]
            for line in head_log.read_text().splitlines()
            if "--address='" in line
        )
        worker_log = logs / "worker.log"
        procs.append(
            subprocess.Popen(
                [ray_bin, "start", f"--address={address}", '--resources={"box2": 1}', *common],
                stdout=worker_log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        )
        _wait_for(lambda: "Ray runtime started" in worker_log.read_text(), 180, "the Ray worker node")
        yield {"address": address, "env": env}
    finally:
        for p in reversed(procs):  # the worker node first, then the head; each `ray start --block` stops its own
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_ray_sweep_survives_a_killed_worker(ray_cluster, tmp_path):
    out = tmp_path / "s"
    cmd = [RIG, "sweep", *STUB, "--max-new-tokens", "6", "--prompts", "8", "--batch-size", "2", "-q"]
    cmd += ["--grid", "dtype=bfloat16,float32", "--engine-arg", "batch_delay_s=0.5", "--out", str(out)]
    cmd += ["--ray", ray_cluster["address"], "--place", "stub=box2"]  # every cell on the worker node
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ray_cluster["env"])
    try:
        victim = _wait_for(lambda: _running_cell_with_parts(out), 240, "a cell with a part on the driver")
        committed = set(json.loads((victim / "manifest.json").read_text())["integrity"]["parts"])
        rel = f"runs/{victim.name}"

        def attempt():
            log = out / "ray-attempts.jsonl"
            lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            return next((a for a in lines if a["cell"] == rel), None)

        first = _wait_for(attempt, 60, "the attempt record")
        assert json.loads((victim / "manifest.json").read_text())["status"] == "running"  # still mid-cell
        os.kill(first["pid"], signal.SIGKILL)  # the Ray worker process running this cell
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, output
    doc = _doc(out)
    assert doc["executor"] == "ray" and all(r["status"] == "complete" for r in doc["cells"])
    attempts = [json.loads(x) for x in (out / "ray-attempts.jsonl").read_text().splitlines()]
    mine = [a for a in attempts if a["cell"] == rel]
    # retried, from the driver's copy: every part committed before the kill was kept
    assert len(mine) == 2 and mine[1]["pid"] != mine[0]["pid"] and mine[1]["restored_parts"] >= len(committed)
    final = RunReader(victim)  # sha256 of every part against its record
    assert set(final.manifest["integrity"]["parts"]) >= committed and final.manifest["status"] == "complete"
    # the run directories came back: the same tokens as the same cell run locally, without Ray
    from rig.cli.sweep import _suite
    from rig.run.runner import execute

    row = next(r for r in doc["cells"] if r["dir"] == rel)
    plan_cells = json.loads((out / "plan.json").read_text())["cells"]
    cell_spec = next(RunSpec.from_dict(c["spec"]) for c in plan_cells if c["dir"] == rel)
    execute(cell_spec, tmp_path / "local", suite=_suite({"name": "default", "prompts": 8}), telemetry_hz=0)
    assert RunReader(tmp_path / "local").tokens_hash() == final.tokens_hash() and row["spec_hash"] == cell_spec.hash()
    assert len({a["node_id"] for a in attempts}) == 1  # --place stub=box2: every cell ran on the worker node
    print(f"ray sweep with a killed worker: {elapsed:.1f} s; attempts {len(attempts)}")
