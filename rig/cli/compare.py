"""`rig compare ENDPOINTS.toml --suite S --samples N --out DIR`: one suite on many endpoints, one provider page.

The work is rig.compare (running, resuming, diffing, the rows and the exit code); this module parses the options,
shows progress, and prints the rows as one table. Exit codes: 0 every endpoint agrees with the reference, 1 at least
one diverges (rig diff's floor-aware verdict), 2 an endpoint did not complete (rerun the same command to resume it)
or bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Any, scale: float = 100.0) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]"


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def row_cells(r: dict[str, Any]) -> list[str]:
    """The table cells of one compare row (also used by tests)."""
    status = r["status"] if r["status"] == "complete" else "FAILED (below)"
    diff = "" if r["diff_vs_reference"] is None else f"{100 * r['diff_vs_reference']:+.1f} pp{_ci(r['diff_ci95'])}"
    if r["role"] == "reference":
        diff = "(reference)"
    identical = "-" if r["share_identical"] is None else f"{_pct(r['share_identical'])} of {r['sequences']}"
    drift = "-"
    if r["drift_mean_abs_delta"] is not None:
        drift = f"{r['drift_mean_abs_delta']:.4f} ({r['drift_source']})"
    tps = (r.get("throughput") or {}).get("tokens_per_s")
    verdict = {0: "agree", 1: "DIVERGED"}.get(r["verdict_exit_code"], "-")
    return [
        f"{r['endpoint']} ({r['stack']})",
        status,
        f"{_pct(r['accuracy'])}{_ci(r['accuracy_ci95'])}",
        diff,
        identical,
        _num(r["confident"]),
        drift,
        "-" if tps is None else f"{tps:.1f}",
        str(r["retries"]),
        str(r["failed_attempts"]),
        verdict,
    ]


COLUMNS = (
    "endpoint",
    "status",
    "accuracy [95% CI]",
    "vs reference [95% CI]",
    "identical",
    "confident splits",
    "TF drift, nats",
    "tokens/s",
    "retries",
    "errors",
    "verdict",
)


def print_page(console: Console, doc: dict[str, Any]) -> None:
    s = doc["suite"]
    sm = doc["sampling"]
    console.print(
        f"[bold]rig compare[/bold] suite {s['name']} ({s['n_prompts']} prompts, hash {s['hash']}) x{sm['samples']} "
        f"samples, T={sm['temperature']}, seed {sm['seed']}{', coupled' if sm['coupled'] else ''}; "
        f"reference {doc['reference']}" + (f", floor {doc['floor']}" if doc["floor"] else "")
    )
    t = Table(title_justify="left")
    for c in COLUMNS:
        t.add_column(c, overflow="fold")
    for r in doc["rows"]:
        t.add_row(*row_cells(r))
    console.print(t)
    for r in doc["rows"]:
        if r["status"] != "complete":
            console.print(f"{r['endpoint']} failed: {r['error']}", markup=False, highlight=False, soft_wrap=True)
    color = {0: "green", 1: "red"}.get(doc["exit_code"], "yellow")
    console.print(f"[bold {color}]{doc['line']}[/bold {color}]")
    console.print(f"page: {Path(doc['out']) / 'compare.html'}; JSON: {Path(doc['out']) / 'compare.json'}")


@click.command("compare")
@click.argument("endpoints_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--suite", "suite_name", default="default", show_default=True, help="Bundled suite name or JSONL path.")
@click.option("--samples", type=int, default=None, help="Samples per prompt on every endpoint (x16, x32 ...).")
@click.option("--temperature", type=float, default=None, help="On every endpoint. [default: 1.0 when --samples > 1]")
@click.option("--max-new-tokens", type=int, default=None, help="On every endpoint.")
@click.option("--seed", type=int, default=None, help="Sampling seed on every endpoint.")
@click.option("--date", "conversation_date", default=None, help="Harmony conversation date. [default: 2025-08-05]")
@click.option("--reasoning-effort", type=click.Choice(["low", "medium", "high"]), help="[default: medium]")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--score/--no-score", default=True, show_default=True, help="Teacher-force the reference's tokens.")
@click.option("--force", is_flag=True, help="Rerun endpoints whose recorded run has another spec or suite.")
@click.option("--telemetry-hz", type=float, default=0.0, show_default=True, help="Telemetry rate of each run.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the task-level bootstrap.")
@click.option("-q", "--quiet", is_flag=True, help="No progress.")
def compare(
    endpoints_file,
    suite_name,
    samples,
    temperature,
    max_new_tokens,
    seed,
    conversation_date,
    reasoning_effort,
    out,
    score,
    force,
    telemetry_hz,
    bootstrap_seed,
    quiet,
):
    """Run a suite on every endpoint of ENDPOINTS_FILE, diff each against the reference, print one provider page.

    \b
    reference = "local-hf"
    [[endpoint]]
    name = "local-hf"
    stack = "hf"
    model = "models/tiny"
    [[endpoint]]
    name = "local-vllm"
    stack = "vllm"
    model = "models/tiny"

    \b
    rig compare endpoints.toml --suite suites/gpqa.jsonl --samples 16 --out runs/gpqa-x16

    Remote endpoints run concurrently, local ones (hf, vllm) one after another. Rerunning the same command resumes
    what failed or was killed and reuses what completed. Writes OUT/compare.json and OUT/compare.html.
    """
    from rig.compare import run_compare
    from rig.run.suite import RenderOptions

    given = {"conversation_date": conversation_date, "reasoning_effort": reasoning_effort}
    render = RenderOptions(**{**RenderOptions().to_dict(), **{k: v for k, v in given.items() if v}})
    err = Console(stderr=True)

    def log(line: str) -> None:
        if not quiet:
            err.print(f"[dim]rig compare:[/dim] {escape(line)}", highlight=False, soft_wrap=True)

    def progress(name: str):
        last = [-1]

        def update(done: int, total: int) -> None:  # one line per tenth of the batches, from each endpoint's thread
            step = 10 * done // max(total, 1)
            if step != last[0]:
                last[0] = step
                log(f"{name}: {done}/{total} batches")

        return update

    doc = run_compare(
        endpoints_file,
        suite_name,
        out,
        samples=samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        render=render,
        score=score,
        force=force,
        telemetry_hz=telemetry_hz,
        bootstrap_seed=bootstrap_seed,
        log=log,
        progress=None if quiet else progress,
    )
    print_page(Console(width=200), doc)
    if doc["exit_code"] == 2:
        click.echo(f"rig: error: {doc['line']}", err=True)
    sys.exit(doc["exit_code"])


COMMANDS = (compare,)
