"""`rig diff` and `rig report`: thin click commands over rig.report (the lead registers them in rig/cli.py).

Exit codes: 0 within thresholds, 1 divergent beyond them, 2 on an error the user can fix (incomparable runs, a bad
run directory), so `rig diff` can gate CI and serve as a bisect verdict.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from rig.errors import UserError

RunPath = click.Path(path_type=Path)


def _fail(exc: UserError) -> None:
    click.echo(f"rig: error: {exc}", err=True)
    sys.exit(2)


@click.command("diff")
@click.argument("run_a", type=RunPath)
@click.argument("run_b", type=RunPath)
@click.option("--scored", type=RunPath, help="A run that teacher-forced A's tokens under B's stack (kind 'score').")
@click.option("--floor", nargs=2, type=RunPath, default=None, help="Two runs of one spec (A A2): the noise floor.")
@click.option("--floor-scored", type=RunPath, help="A run that teacher-forced the floor's first run under its spec.")
@click.option(
    "--tau",
    type=float,
    default=None,
    help="Near-tie margin, nats. [default: two rounding steps of the runs' logits, or twice the floor's p99 |delta|]",
)
@click.option("--force", is_flag=True, help="Compare the identical prompts when prompt token hashes differ.")
@click.option("--json", "json_path", type=RunPath, help="Write the whole result as JSON here.")
@click.option("--max-divergent-share", type=float, default=None, help="Exit 1 above this share of divergent sequences.")
@click.option(
    "--max-confident",
    type=int,
    default=0,
    show_default=True,
    help="Exit 1 above this many confident disagreements (-1 disables).",
)
@click.option("--max-mean-abs-delta", type=float, default=None, help="Exit 1 above this teacher-forced mean |delta|.")
@click.option(
    "--max-spikes", type=int, default=None, help="Exit 1 above this many |delta| spikes. [default: report only]"
)
@click.option(
    "--alpha", type=float, default=0.01, show_default=True, help="Level of the one-sided tests against the floor."
)
@click.option(
    "--min-effect",
    type=float,
    default=None,
    help="Drift over the floor (nats per token) that fails the verdict. [default: half a logit rounding step]",
)
@click.option("--rows", type=int, default=20, show_default=True, help="Divergent sequences to list.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the task-level bootstrap.")
def diff_command(
    run_a,
    run_b,
    scored,
    floor,
    floor_scored,
    tau,
    force,
    json_path,
    max_divergent_share,
    max_confident,
    max_mean_abs_delta,
    max_spikes,
    alpha,
    min_effect,
    rows,
    seed,
):
    """Compare two runs token by token: first divergence, margins, teacher-forced metrics, task accuracy.

    Exits 0 within the thresholds, 1 beyond them, 2 when the runs cannot be compared.
    """
    from rig.analysis.compare import diff_paths
    from rig.analysis.summary import Thresholds, dumps
    from rig.report.terminal import print_diff, progress_bar

    console = Console(stderr=False)
    th = Thresholds(
        max_divergent_share=max_divergent_share,
        max_confident=None if max_confident is not None and max_confident < 0 else max_confident,
        max_mean_abs_delta=max_mean_abs_delta,
        max_spikes=max_spikes,
        alpha=alpha,
        min_effect=min_effect,
    )
    try:
        with progress_bar(Console(stderr=True)) as progress:
            doc = diff_paths(
                run_a,
                run_b,
                scored=scored,
                floor=floor or None,
                floor_scored=floor_scored,
                tau=tau,
                force=force,
                thresholds=th,
                seed=seed,
                progress=progress,
            )
    except UserError as exc:
        _fail(exc)
    if json_path:
        json_path.write_text(dumps(doc) + "\n")
    print_diff(console, doc, rows=rows)
    sys.exit(doc["verdict"]["exit_code"])


@click.command("report")
@click.argument("runs", nargs=-1, type=RunPath)
@click.option("-o", "--output", type=RunPath, default=Path("report.html"), show_default=True, help="HTML file.")
@click.option(
    "--scored",
    multiple=True,
    type=RunPath,
    help="Scored run(s) of the first run's tokens; each pairs with the run whose spec hash it carries.",
)
@click.option("--floor", nargs=2, type=RunPath, default=None, help="Two runs of one spec (A A2): the noise floor.")
@click.option(
    "--tau",
    type=float,
    default=None,
    help="Near-tie margin, nats. [default: two rounding steps of the runs' logits, or twice the floor's p99 |delta|]",
)
@click.option("--force", is_flag=True, help="Compare the identical prompts when prompt token hashes differ.")
@click.option("--max-prompts", type=int, default=40, show_default=True, help="Token-level diff views per pair.")
@click.option(
    "--kernels", "kernels_json", type=RunPath, multiple=True, help="A `rig kernels --json` file: adds its table."
)
@click.option(
    "--layers", "layers_json", type=RunPath, multiple=True, help="A `rig layers --json` file: adds its heatmaps."
)
@click.option(
    "--sweep", "sweep_json", type=RunPath, multiple=True, help="A `rig sweep --json` file: adds its heatmap page."
)
def report_command(runs, output, scored, floor, tau, force, max_prompts, kernels_json, layers_json, sweep_json):
    """Write one self-contained HTML report (no network needed) comparing RUNS against the first."""
    from rig.report.html import build_report
    from rig.report.terminal import progress_bar

    try:
        sections = [("Kernels: " + p.name, _kernels_section(p)) for p in kernels_json]
        sections += [("Layers: " + p.name, _layers_section(p)) for p in layers_json]
        sections += [("Sweep: " + p.name, _sweep_section(p)) for p in sweep_json]
        with progress_bar(Console(stderr=True)) as progress:
            path = build_report(
                runs,
                output,
                scored=scored,
                floor=floor or None,
                tau=tau,
                force=force,
                max_prompts=max_prompts,
                progress=progress,
                sections=sections,
            )
    except UserError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


def _read_json(path: Path, marker: str, command: str) -> dict:
    """A JSON document written by `command --json` (it carries the field `marker`); UserError for anything else."""
    import json

    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict) or marker not in doc:
        raise UserError(f"{path}: not a `{command} --json` document (no {marker!r} field)")
    return doc


def _kernels_section(path: Path) -> str:
    """The HTML table of a `rig kernels --json` document."""
    from kernels_check import report_html

    return report_html(_read_json(path, "rig_kernels", "rig kernels"))


def _sweep_section(path: Path) -> str:
    """The matrix and heatmaps of a `rig sweep --json` document."""
    from rig.report.sweep_html import sweep_section

    return sweep_section(_read_json(path, "rig_sweep", "rig sweep"))


def _layers_section(path: Path) -> str:
    """The heatmaps of a `rig layers --json` document (its own <section>, so no extra wrapper title is added)."""
    from rig.report.layers_html import layers_section

    return layers_section(_read_json(path, "rig_layers", "rig layers"))


COMMANDS = (diff_command, report_command)
