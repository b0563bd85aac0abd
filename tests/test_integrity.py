"""Damaged run directories never yield a verdict: the write-time record, the read-time check, `rig verify`, repair.

The fuzz-style test damages copies of a complete stub run in each way a copy or an archive can (a truncated part,
flipped bytes inside one, a part missing, every part missing, a stray file, a part from another run, a manifest whose
counts disagree with its parts, an edited prompts.jsonl, an edited completion, completions.jsonl reordered) and
requires of every command that reads runs (diff, report, show, score, verify): exit 2, one line on stderr, no
traceback, nothing modified; of `rig verify`: the damage listed; of `rig run --resume`: each repairable run back to
the undamaged original (the stub stack is deterministic), and the others refused with nothing changed. Definitions:
docs/metrics.md, "Run integrity and exit codes".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.cli import EXIT_BUG, main
from rig.errors import UserError
from rig.files import sha256_file
from rig.run import runner
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.store import RunError, RunReader
from rig.run.suite import load_suite
from rig.run.verify import check_run
from rig.stacks import get_stack

STUB = ["--stack", "stub", "--model", "stub", "-q", "--telemetry-hz", "0"]


def _spec(**kw) -> RunSpec:
    return RunSpec(stack="stub", model="stub", sampling=SamplingSpec(max_new_tokens=12), batch_size=4, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A complete stub run (8 parts of 4 sequences), a perturbed one to diff it against, and a third of another batch
    size whose parts do not fit the first."""
    root = tmp_path_factory.mktemp("runs")
    suite = load_suite("default")
    return {
        "a": runner.execute(_spec(), root / "a", suite=suite, telemetry_hz=0),
        "b": runner.execute(_spec(engine_args=(("perturb", 0.5),)), root / "b", suite=suite, telemetry_hz=0),
    }


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _part(run: Path, i: int) -> Path:
    return run / "tokens" / f"part-{i:05d}.parquet"


def _truncate(run: Path, others: dict[str, Path]) -> None:
    p = _part(run, 1)
    p.write_bytes(p.read_bytes()[:500])


def _flip(run: Path, others: dict[str, Path]) -> None:
    p = _part(run, 2)
    data = bytearray(p.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))


def _missing(run: Path, others: dict[str, Path]) -> None:
    _part(run, 3).unlink()


def _every_part(run: Path, others: dict[str, Path]) -> None:
    for p in (run / "tokens").glob("*.parquet"):
        p.unlink()


def _stray(run: Path, others: dict[str, Path]) -> None:
    shutil.copy(_part(run, 0), _part(run, 99))


def _foreign(run: Path, others: dict[str, Path]) -> None:
    shutil.copy(_part(others["b"], 4), _part(run, 4))


def _counts(run: Path, others: dict[str, Path]) -> None:
    m = json.loads((run / "manifest.json").read_text())
    m["counts"]["tokens"] += 7
    (run / "manifest.json").write_text(json.dumps(m, indent=2))


def _prompts_edited(run: Path, others: dict[str, Path]) -> None:
    p = run / "prompts.jsonl"
    lines = p.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["reference"] = "something else"
    lines[3] = json.dumps(rec)
    p.write_text("\n".join(lines) + "\n")


def _completion_edited(run: Path, others: dict[str, Path]) -> None:
    p = run / "completions.jsonl"
    lines = p.read_text().splitlines()
    rec = json.loads(lines[9])  # part 2
    rec["final"] = "42"
    lines[9] = json.dumps(rec, ensure_ascii=False)
    p.write_text("\n".join(lines) + "\n")


def _completions_reordered(run: Path, others: dict[str, Path]) -> None:
    p = run / "completions.jsonl"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[1:] + lines[:1]) + "\n")


# name: (damage, repairable by a resume, what `rig verify` must list)
DAMAGES = {
    "truncated part": (_truncate, True, "part-00001.parquet: 500 bytes where the manifest records"),
    "flipped bytes in a part": (_flip, True, "part-00002.parquet: sha256 differs from the manifest's record"),
    "part missing": (_missing, True, "part-00003.parquet: missing"),
    "every part missing": (_every_part, True, "tokens: none of the 8 planned parts is there"),
    "stray file": (_stray, False, "part-00099.parquet: not a part of this run"),
    "part from another run": (_foreign, True, "part-00004.parquet: "),
    "manifest counts disagree": (_counts, True, "manifest.json: field 'counts.tokens' is"),
    "prompts.jsonl edited": (_prompts_edited, False, "prompts.jsonl: differs from the manifest's record"),
    "completion edited": (_completion_edited, True, "the lines of part 00002 differ from the manifest's record"),
    "completions reordered": (_completions_reordered, True, "completions.jsonl: differs from the manifest's record"),
}


def _one_error_line(res) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rig: error: "), res.stderr
    return lines[0]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "timings"} for r in rows]


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_damage_never_yields_a_verdict_and_resume_repairs(kind, runs, tmp_path):
    damage, repairable, listed = DAMAGES[kind]
    run = tmp_path / "damaged"
    shutil.copytree(runs["a"], run)
    damage(run, runs)
    before = _snapshot(run)
    cli = CliRunner()
    commands = {
        "diff": ["diff", str(run), str(runs["b"])],
        "diff (second)": ["diff", str(runs["b"]), str(run)],
        "report": ["report", str(run), str(runs["b"]), "-o", str(tmp_path / "r.html")],
        "show": ["show", str(run)],
        "score": ["score", str(run), *STUB, "--out", str(tmp_path / "scored")],
        "verify": ["verify", str(run), str(runs["b"])],
    }
    for name, args in commands.items():
        res = cli.invoke(main, args)
        line = _one_error_line(res)
        assert str(run) in line, (name, line)
        assert _snapshot(run) == before, f"{name} modified the run"
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "scored").exists()
    # show still shows the run, and says it is damaged and where
    res = cli.invoke(main, ["show", str(run), "--no-prompts"])
    assert "DAMAGED" in res.stdout and listed in res.stdout, res.stdout
    # verify lists it, says whether a resume repairs it, and passes the sound run
    res = cli.invoke(main, ["verify", str(run), str(runs["b"])])
    assert listed in res.stdout, res.stdout
    assert f"{runs['b']}: sound" in res.stdout and "every part decoded" in res.stdout
    assert ("repair: rig run --resume" in res.stdout) == repairable, res.stdout
    # the read-time check raises RunError (a UserError: exit 2) naming a file of the run
    with pytest.raises(RunError, match=str(run)):
        RunReader(run)

    res = cli.invoke(main, ["run", "--resume", str(run), "-q", "--telemetry-hz", "0"])
    if not repairable:
        _one_error_line(res)
        assert _snapshot(run) == before, "a refused resume changed the run"
        return
    assert res.exit_code == 0, res.output
    assert check_run(run, decode=True).ok
    a, r = RunReader(runs["a"]), RunReader(run)
    assert r.tokens().equals(a.tokens())
    assert _strip(r.completions) == _strip(a.completions)
    assert r.manifest["counts"] == a.manifest["counts"]
    for p in sorted((runs["a"] / "tokens").glob("*.parquet")):  # the stub is deterministic: the same bytes
        assert (run / "tokens" / p.name).read_bytes() == p.read_bytes()
    assert sorted(p.name for p in (run / "tokens").iterdir()) == sorted(
        p.name for p in (runs["a"] / "tokens").iterdir()
    )
    (repair,) = r.manifest["repairs"]
    assert repair["problems"] and "completed_at" in repair
    # what the original recorded stays
    for key in ("spec", "spec_hash", "suite", "environment", "timings", "created_at", "parts_plan"):
        assert r.manifest.get(key) == a.manifest.get(key), key
    res = cli.invoke(main, ["diff", str(run), str(runs["a"])])
    assert res.exit_code == 0, res.output


def test_records_match_the_files(runs):
    m = json.loads((runs["a"] / "manifest.json").read_text())
    integrity = m["integrity"]
    assert m["schema_version"] == 1
    assert sorted(integrity["parts"]) == [f"{i:05d}" for i in range(8)]
    rows = [json.loads(x) for x in (runs["a"] / "completions.jsonl").read_text().splitlines()]
    for key, rec in integrity["parts"].items():
        part = runs["a"] / "tokens" / f"part-{key}.parquet"
        mine = [r for r in rows if r["part"] == int(key)]
        assert rec["sha256"] == sha256_file(part) and rec["bytes"] == part.stat().st_size
        assert rec["rows"] == sum(r["n_tokens"] for r in mine) and rec["sequences"] == len(mine) == 4 - 3 * (
            key == "00007"
        )
    assert integrity["completions"]["sha256"] == sha256_file(runs["a"] / "completions.jsonl")
    assert integrity["completions"]["rows"] == 29
    assert integrity["prompts"]["sha256"] == sha256_file(runs["a"] / "prompts.jsonl")
    report = check_run(runs["a"], decode=True)
    assert report.ok and report.checksums and report.decoded and (report.n_parts, report.n_sequences) == (8, 29)


def test_sound_complete_run_has_nothing_to_resume(runs, tmp_path):
    run = tmp_path / "a"
    shutil.copytree(runs["a"], run)
    before = _snapshot(run)
    res = CliRunner().invoke(main, ["run", "--resume", str(run), "-q", "--telemetry-hz", "0"])
    assert "nothing to resume" in _one_error_line(res)
    assert _snapshot(run) == before


def test_runs_written_before_the_record_still_read_and_repair(runs, tmp_path):
    """A run without manifest["integrity"] is checked for what can be checked, and a resume gives it the record."""
    run = tmp_path / "old"
    shutil.copytree(runs["a"], run)
    m = json.loads((run / "manifest.json").read_text())
    del m["integrity"]
    (run / "manifest.json").write_text(json.dumps(m, indent=2))
    report = check_run(run, decode=True)
    assert report.ok and not report.checksums and "no part checksums" in report.summary()
    assert RunReader(run).tokens().equals(RunReader(runs["a"]).tokens())
    res = CliRunner().invoke(main, ["diff", str(run), str(runs["a"])])
    assert res.exit_code == 0, res.output
    # damage it: a truncated part is still found (footer), a lost completion too (coverage, rows against completions)
    _truncate(run, runs)
    assert "not a readable Parquet file" in _one_error_line(
        CliRunner().invoke(main, ["diff", str(run), str(runs["b"])])
    )
    res = CliRunner().invoke(main, ["run", "--resume", str(run), "-q", "--telemetry-hz", "0"])
    assert res.exit_code == 0, res.output
    repaired = json.loads((run / "manifest.json").read_text())
    assert (
        repaired["integrity"]["parts"].keys()
        == json.loads((runs["a"] / "manifest.json").read_text())["integrity"]["parts"].keys()
    )
    assert check_run(run, decode=True).ok and check_run(run).checksums
    assert RunReader(run).tokens().equals(RunReader(runs["a"]).tokens())


def test_lost_completion_line_in_an_old_run(runs, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(runs["a"], run)
    m = json.loads((run / "manifest.json").read_text())
    del m["integrity"]
    (run / "manifest.json").write_text(json.dumps(m, indent=2))
    lines = (run / "completions.jsonl").read_text().splitlines()
    (run / "completions.jsonl").write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    problems = [str(p) for p in check_run(run).problems]
    assert any("part 00001 has 3 completions where the plan has 4" in p for p in problems), problems
    assert check_run(run).damaged_parts == {1}


def test_repair_keeps_what_the_run_recorded(tmp_path):
    """A repair regenerates parts; the run's telemetry, timings and stack description stay the original's."""
    suite = load_suite("default")
    run = runner.execute(_spec(), tmp_path / "t", suite=suite, telemetry_hz=20)
    original = json.loads((run / "manifest.json").read_text())
    telemetry = _snapshot(run / "telemetry")
    _missing(run, {})
    runner.execute(None, run, resume=True, telemetry_hz=20)
    repaired = json.loads((run / "manifest.json").read_text())
    for key in ("telemetry", "timings", "stack", "environment", "counts"):
        assert repaired[key] == original[key], key
    assert _snapshot(run / "telemetry") == telemetry
    (entry,) = repaired["repairs"]
    assert entry["parts"] == [3] and entry["status"] == "complete" and entry["timings"]["generate_s"] >= 0
    assert "part-00003.parquet: missing" in entry["problems"][0]


def test_unfinished_runs_are_not_damaged(tmp_path):
    """A failed run (parts 0-1 committed) reads without complaint, and an uncommitted part is no damage."""
    suite = load_suite("default")
    with pytest.raises(RuntimeError, match="planted failure"):
        runner.execute(_spec(engine_args=(("fail_at_batch", 2),)), tmp_path / "f", suite=suite, telemetry_hz=0)
    run = tmp_path / "f"
    assert check_run(run, decode=True).ok and RunReader(run).manifest["status"] == "failed"
    # a part written but killed before its record: not damage, and a resume adopts it (it is whole)
    m = json.loads((run / "manifest.json").read_text())
    record = m["integrity"]["parts"].pop("00001")
    counts = dict(m["counts"])
    m["counts"].update(parts=1, sequences=4, tokens=counts["tokens"] - record["rows"])  # as the manifest was before it
    (run / "manifest.json").write_text(json.dumps(m, indent=2))
    report = check_run(run)
    assert report.ok and report.sound == {0, 1}
    _truncate(run, {})  # no longer whole: still no damage (a resume drops it), but no longer sound
    report = check_run(run)
    assert report.ok and report.sound == {0}
    # a committed part that is damaged is damage, even in an unfinished run
    m["integrity"]["parts"]["00001"] = record
    m["counts"] = counts
    (run / "manifest.json").write_text(json.dumps(m, indent=2))
    assert check_run(run).damaged_parts == {1}
    stack = get_stack("stub")(_spec())  # the run's own spec plants a failure at every third batch
    stack.load()
    runner.execute(None, run, resume=True, telemetry_hz=0, stack=stack)
    clean = runner.execute(_spec(), tmp_path / "clean", suite=suite, telemetry_hz=0)
    assert check_run(run, decode=True).ok and RunReader(run).tokens().equals(RunReader(clean).tokens())


def test_verify_lists_every_problem_and_modifies_nothing(runs, tmp_path):
    run = tmp_path / "d"
    shutil.copytree(runs["a"], run)
    _truncate(run, runs)
    _flip(run, runs)
    _missing(run, runs)
    before = _snapshot(run)
    res = CliRunner().invoke(main, ["verify", str(run)])
    _one_error_line(res)
    for listed in ("part-00001.parquet: 500 bytes", "part-00002.parquet: sha256", "part-00003.parquet: missing"):
        assert listed in res.stdout
    assert "regenerates parts 00001, 00002, 00003" in res.stdout
    assert _snapshot(run) == before
    res = CliRunner().invoke(main, ["verify", str(runs["a"])])
    assert res.exit_code == 0 and "sound" in res.stdout and not res.stderr
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "nowhere")])
    assert "not a run directory" in _one_error_line(res) or "nowhere" in res.stdout


def test_a_crash_is_never_a_verdict(runs, monkeypatch):
    """An unexpected exception prints its traceback and exits EXIT_BUG: neither 0, 1 nor 2."""
    import rig.run.verify

    def boom(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    import rig.cli.show

    monkeypatch.setattr(rig.run.verify, "check_run", boom)
    monkeypatch.setattr(rig.cli.show, "check_run", boom)
    for args in (["diff", str(runs["a"]), str(runs["b"])], ["show", str(runs["a"])], ["verify", str(runs["a"])]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == EXIT_BUG and EXIT_BUG not in (0, 1, 2), (args, res.exit_code, res.output)
        assert "Traceback" in res.stderr and "planted bug" in res.stderr


def test_run_error_is_a_user_error():
    assert issubclass(RunError, UserError)
