"""rig report: a self-contained HTML file (no network), checked as text and rendered in headless Chromium.

The browser test opens the report of two real tiny-model runs, requires the element the page's script adds once it has
run (with its count of plots and token views), no console messages, and keeps a screenshot in tests/artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import prompt, scored_pair, seq, write_run
from rich.console import Console

from rig.analysis.compare import diff_paths
from rig.cli import main
from rig.cli.diff import report_command
from rig.report.html import build_report
from rig.report.terminal import print_diff

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def three_runs(tmp_path: Path) -> list[Path]:
    prompts = [prompt(f"p{i}", category="math" if i % 2 else "chat") for i in range(6)]
    base = [seq(p.id, [200005, 35644, 200008, 40617, 2375, 11, 12]) for p in prompts]
    flip = [
        seq(p.id, [200005, 35644, 200008, 40617, 9999 if i < 3 else 2375, 11, 12], margins=[1, 1, 1, 1, 0.05, 1, 1])
        for i, p in enumerate(prompts)
    ]
    return [
        write_run(tmp_path / "a", prompts, base),
        write_run(tmp_path / "b", prompts, flip),
        write_run(tmp_path / "c", prompts, base),
    ]


def test_report_is_self_contained(tmp_path):
    runs = three_runs(tmp_path)
    out = build_report(runs, tmp_path / "r.html", floor=(runs[0], runs[2]))
    html = out.read_text()
    assert not re.search(r"<script[^>]+src=|<link\b|@import|url\(", html)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)  # the SVG namespace is a name, not a fetch
    assert html.count('<svg class="plot"') >= 4  # histogram + |delta| for each of the two pairs
    assert html.count('class="tokdiff"') == 3 and 'class="tok div"' in html
    assert "Pairwise matrix" in html and "Against the noise floor" in html
    assert 'title="pos 4' in html  # tooltips carry the position and both runs' alternatives


def test_report_with_scored_run(tmp_path):
    a, b, s = scored_pair(tmp_path, [0.0, 0.1, -0.2, 0.3])
    html = build_report([a, b], tmp_path / "r.html", scored=[s]).read_text()
    assert "scored (mean 0.15)" in html  # the per-position |delta| plot has the scored series


def test_report_cli_and_refusal(tmp_path):
    runs = three_runs(tmp_path)
    res = CliRunner().invoke(report_command, [str(r) for r in runs[:2]] + ["-o", str(tmp_path / "ok.html")])
    assert res.exit_code == 0 and (tmp_path / "ok.html").exists()
    other = write_run(tmp_path / "other", [prompt("p0", (9,))], [seq("p0", [5])])
    res = CliRunner().invoke(report_command, [str(runs[0]), str(other), "-o", str(tmp_path / "no.html")])
    assert res.exit_code == 2 and "'p0'" in res.output and not (tmp_path / "no.html").exists()


def test_terminal_view_renders(tmp_path):
    runs = three_runs(tmp_path)
    doc = diff_paths(runs[0], runs[1], floor=(runs[0], runs[2]))
    console = Console(record=True, width=160)
    print_diff(console, doc)
    text = console.export_text()
    assert "near-tie flips" in text and "clears floor" in text and "First divergences (3 of 3)" in text


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(hf_run_bf16, hf_run_fp32, tmp_path, artifacts_dir):
    out = build_report([hf_run_bf16, hf_run_fp32], tmp_path / "report.html")
    url = out.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<div id="rig-ready" data-plots="(\d+)" data-diffs="(\d+)"', dom.stdout)
    assert m, "the page's script did not run to the end"
    n_plots, n_diffs = int(m.group(1)), int(m.group(2))
    assert n_plots >= 2  # divergence histogram and |delta| per position (plus telemetry timelines)
    assert n_diffs == len(re.findall(r'class="tokdiff"', out.read_text()))
    assert "data-tip=" in dom.stdout and 'title="pos' not in dom.stdout  # tooltips moved to the script's box
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = artifacts_dir / "report.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path)
    assert res.returncode == 0 and shot.stat().st_size > 20_000


def test_report_draws_gpu_telemetry(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs = three_runs(tmp_path)
    tel = runs[1] / "telemetry"
    tel.mkdir()
    t = [0.0, 0.5, 1.0, 1.5] * 2
    pq.write_table(
        pa.table(
            {
                "t_s": t,
                "gpu_index": [0] * 4 + [1] * 4,
                "power_mw": [1e5, 3e5, 3.2e5, 1e5] * 2,
                "temp_c": [40, 60, 65, 50] * 2,
            }
        ),
        tel / "gpu.parquet",
    )
    pq.write_table(
        pa.table({"name": ["load", "batch"], "start_s": [0.0, 0.4], "end_s": [0.4, 1.5]}), tel / "phases.parquet"
    )
    html = build_report(runs[:2], tmp_path / "r.html").read_text()
    assert "GPU power (W)" in html and "GPU temperature (C)" in html and ">gpu 1<" in html
    assert "<h3>a</h3>" not in html  # run a has no telemetry: no empty section for it


def test_report_shows_a_kernels_table(tmp_path):
    """`rig report --kernels FILE` adds the table of a `rig kernels --json` document, with or without runs."""
    row = {"kernel": "swiglu", "impl": "torch", "dtype": "bfloat16", "input": "clamp-hit", "max_err_ulp": 0.5}
    row |= {"mean_err_ulp": 0.1, "ratio": 1.0, "batch_invariant": True, "deterministic": True, "verdict": "pass"}
    row |= {"reason": "", "max_abs_err": 1e-3, "baseline_max_abs_err": 1e-3}
    doc = {"rig_kernels": 1, "device": "cpu", "implementations": [], "rows": [row], "summary": {"pass": 1}}
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(main, ["report", "--kernels", str(path), "-o", str(tmp_path / "k.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "k.html").read_text()
    assert '<table class="kernels"' in page and "swiglu" in page and "clamp-hit" in page
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = CliRunner().invoke(main, ["report", "--kernels", str(bad), "-o", str(tmp_path / "b.html")])
    assert res.exit_code == 2 and "rig kernels --json" in res.output
    res = CliRunner().invoke(main, ["report", "-o", str(tmp_path / "none.html")])
    assert res.exit_code == 2 and "nothing to report" in res.output
