"""The CLI through click's CliRunner: help, suite show, run/show, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rig.cli import main


@pytest.fixture()
def cli():
    return CliRunner()


def test_help_lists_commands(cli):
    res = cli.invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("run", "score", "show", "suite", "tiny-model", "demo", "diff", "report", "env"):
        assert f"  {cmd}" in res.output


def test_run_options_are_pinned(cli):
    """A new or renamed `rig run` option must be a deliberate change: update this list with it."""
    from rig.cli.run import run

    names = sorted(o for p in run.params for o in p.opts)
    assert names == sorted(
        [
            "--spec",
            "--stack",
            "--model",
            "--revision",
            "--dtype",
            "--quantization",
            "--attention",
            "--experts",
            "--device",
            "--seed",
            "--temperature",
            "--top-p",
            "--top-k",
            "--max-new-tokens",
            "--stop-token-id",
            "--logprobs",
            "--batch-size",
            "--samples",
            "--coupled",
            "--engine-arg",
            "--max-model-len",
            "--base-url",
            "--api-key-env",
            "--concurrency",
            "--suite",
            "--date",
            "--reasoning-effort",
            "--out",
            "--resume",
            "--force",
            "--telemetry-hz",
            "-q",
            "--quiet",
        ]
    )


def test_suite_show(cli):
    res = cli.invoke(main, ["suite", "show", "default"])
    assert res.exit_code == 0
    assert "arith-mul" in res.output and "tokens" in res.output and "Current date: 2025-08-05" in res.output


def test_run_then_show(cli, tiny_model, tmp_path):
    out = tmp_path / "r"
    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"id": "q", "messages": [{"role": "user", "content": "Hi"}], "category": "x"}) + "\n")
    res = cli.invoke(
        main,
        [
            "run",
            "--model",
            str(tiny_model),
            "--suite",
            str(suite),
            "--max-new-tokens",
            "5",
            "--out",
            str(out),
            "-q",
            "--telemetry-hz",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["tokens"] == 5
    res = cli.invoke(main, ["show", str(out)])
    assert res.exit_code == 0 and "complete" in res.output and "eager" in res.output
    # a complete run is not overwritten without --force, and stays intact
    before = (out / "tokens" / "part-00000.parquet").read_bytes()
    res = cli.invoke(main, ["run", "--model", str(tiny_model), "--suite", str(suite), "--out", str(out), "-q"])
    assert res.exit_code == 2 and "--force" in res.output
    assert (out / "tokens" / "part-00000.parquet").read_bytes() == before


def _one_error_line(res):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("rig: error: ")
    return lines[0]


def test_malformed_suite_exit_2_one_line_nothing_written(cli, tmp_path):
    suite = tmp_path / "bad.jsonl"
    suite.write_text(json.dumps({"id": "a", "text": "fine"}) + "\n" + '{"id": "b", "messages": oops}\n')
    res = cli.invoke(main, ["run", "--model", "whatever", "--suite", str(suite), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert f"{suite}:2" in line
    assert not (tmp_path / "r").exists()


def test_unknown_model_exit_2_nothing_written(cli, tmp_path):
    res = cli.invoke(
        main,
        ["run", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "r"), "--telemetry-hz", "0", "-q"],
    )
    assert res.exit_code == 2
    assert "unknown model" in _one_error_line(res)
    assert not (tmp_path / "r").exists()


def test_bad_spec_and_missing_out(cli, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('model = "m"\nwarp = 9\n')
    res = cli.invoke(main, ["run", "--spec", str(spec), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown field 'warp'" in _one_error_line(res)
    res = cli.invoke(main, ["run", "--model", "m"])
    assert res.exit_code == 2 and "--out" in _one_error_line(res)
    res = cli.invoke(main, ["show", str(tmp_path)])
    assert res.exit_code == 2 and "manifest.json" in _one_error_line(res)


def test_interrupt_exits_130_never_a_verdict(cli, monkeypatch, tmp_path):
    import rig.cli.show as show_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(show_module, "show_run", interrupted)
    res = cli.invoke(main, ["show", str(tmp_path)])
    assert res.exit_code == 130 and "rig: interrupted" in res.output
