"""`rig sweep`: a grid of settings around a base spec, each cell an ordinary run, each diffed against a reference.

The spec options are RunSpec's (rig.cli.options), plus the grid, the reference and the floor; the work is
rig.sweep.driver.run_sweep with a local or a Ray executor, and the matrix is rendered from the sweep document.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from rig.cli.options import spec_options
from rig.errors import UserError


def _overrides(opts: dict[str, Any]) -> dict[str, Any]:
    """The spec flags given on the command line, as load_spec overrides ("sampling.x" for sampling fields)."""
    from rig.run.spec import RunSpec, SamplingSpec, parse_engine_args

    out: dict[str, Any] = {}
    for prefix, cls in (("", RunSpec), ("sampling.", SamplingSpec)):
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag") is None:
                continue
            value = opts.get(f.name)
            if value is None or value == ():
                continue
            if f.name == "engine_args":
                value = parse_engine_args(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[prefix + f.name] = value
    return out


def _suite(ref: dict[str, Any]):
    """The suite a sweep runs: a bundled name or JSONL path, rendered, optionally cut to its first N prompts."""
    from rig.run.suite import RenderOptions, Suite, load_suite, suite_hash

    render = RenderOptions(**ref.get("render", {}))
    suite = load_suite(ref["name"], render)
    n = ref.get("prompts")
    if n is not None:
        if n < 1:
            raise UserError("--prompts must be at least 1")
        prompts = suite.prompts[:n]
        suite = Suite(f"{suite.name}[:{n}]", prompts, render, suite_hash(prompts, render))
    return suite


def _place(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        stack, sep, resource = item.partition("=")
        if not sep or not stack or not resource:
            raise UserError(f"--place {item!r}: expected STACK=RESOURCE (a custom resource of the nodes for it)")
        out[stack.strip()] = resource.strip()
    return out


def _progress(quiet: bool):
    def report(cell, outcome, done: int, total: int) -> None:
        if outcome.detail:  # a crash that was not a UserError: its traceback, whatever --quiet says
            click.echo(outcome.detail.rstrip(), err=True)
        if quiet:
            return
        what = outcome.ran if outcome.status == "complete" else outcome.reason
        click.echo(f"[{done}/{total}] {cell.label}: {outcome.status} ({what}, {outcome.wall_s:.1f} s)", err=True)

    return report


@click.command("sweep")
@spec_options
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2", help="A grid axis (repeatable); overrides [grid].")
@click.option("--reference", "reference", metavar="KEY=V,...", help="The reference cell. [default: first values]")
@click.option("--replicates", type=int, default=None, help="Runs of the reference's spec for the floor. [default: 1]")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep directory (runs, diffs, sweep.json, sweep.html).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue the sweep in this directory.")
@click.option("--suite", "suite_name", default="default", show_default=True, help="Bundled suite name or JSONL path.")
@click.option("--prompts", type=int, default=None, help="Only the suite's first N prompts.")
@click.option("--date", "conversation_date", default=None, help="Harmony conversation date. [default: 2025-08-05]")
@click.option("--reasoning-effort", type=click.Choice(["low", "medium", "high"]), help="[default: medium]")
@click.option("--telemetry-hz", type=float, default=10.0, show_default=True, help="Per cell; 0 turns it off.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS", help="Run cells as Ray tasks on this cluster.")
@click.option("--ray-retries", type=int, default=3, show_default=True, help="Retries of a cell whose worker dies.")
@click.option("--place", multiple=True, metavar="STACK=RESOURCE", help="Ray: cells of STACK need this node resource.")
@click.option("--gpus-per-cell", type=float, default=None, help="Ray: GPUs per hf/vllm cell. [default: per stack]")
@click.option("--max-confident", type=int, default=0, show_default=True, help="Verdict: confident splits allowed.")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="Verdict: level of the floor tests.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the sweep document here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def sweep(
    grid,
    reference,
    replicates,
    out,
    resume_dir,
    suite_name,
    prompts,
    conversation_date,
    reasoning_effort,
    telemetry_hz,
    ray_address,
    ray_retries,
    place,
    gpus_per_cell,
    max_confident,
    alpha,
    json_path,
    quiet,
    **opts,
):
    """Run a grid of settings around a base spec, diff every cell against a reference with a replicate floor.

    Every cell is an ordinary run directory under OUT/runs (cached by spec hash: running the same command again
    continues a killed sweep). Cells a stack cannot run are recorded as skipped with the reason. Exits 0 when every
    cell agrees with the reference, 1 when one diverges, 2 on bad input or an incomplete sweep.

    \b
    rig sweep --stack hf --model models/tiny --grid dtype=bfloat16,float32 --grid batch_size=1,8 --out sweeps/s1
    rig sweep --spec sweep.toml --out sweeps/s2 --ray auto     # [grid] and [sweep] tables in the spec file
    rig sweep --resume sweeps/s1
    """
    from rig.analysis.summary import Thresholds, dumps
    from rig.sweep.driver import LocalExecutor, run_sweep
    from rig.sweep.plan import load_sweep_spec, make_plan, parse_assignments, parse_grid, plan_from_dict, read_plan
    from rig.sweep.table import print_sweep

    if resume_dir:
        out = resume_dir
        plan = plan_from_dict(read_plan(Path(out)))
        suite = _suite(plan.extra["suite_source"])
        if suite.hash != plan.extra["suite"]["hash"]:
            raise UserError(f"{out}: the suite {suite.name} changed since the sweep started (another hash)")
    else:
        if not out:
            raise UserError("--out DIR is required (or --resume DIR)")
        base, grid_table, sweep_table = load_sweep_spec(opts.get("spec_file"), _overrides(opts))
        if not base.model:
            raise UserError("no model given: pass --model DIR (or a hub id), or set model in the --spec file")
        render = {
            k: v for k, v in {"conversation_date": conversation_date, "reasoning_effort": reasoning_effort}.items() if v
        }
        source = {"name": suite_name, "prompts": prompts, "render": render}
        suite = _suite(source)
        plan = make_plan(
            base,
            parse_grid(grid, grid_table),
            reference=parse_assignments(reference) if reference else dict(sweep_table.get("reference") or {}),
            replicates=replicates if replicates is not None else int(sweep_table.get("replicates", 1)),
            extra={"suite": suite.manifest_entry(), "suite_source": source},
        )
    if ray_address:
        from rig.sweep.ray_exec import RayExecutor

        executor = RayExecutor(ray_address, retries=ray_retries, place=_place(place), gpus_per_cell=gpus_per_cell)
    else:
        executor = LocalExecutor()
    thresholds = Thresholds(max_confident=None if max_confident < 0 else max_confident, alpha=alpha)
    doc = run_sweep(
        plan, out, suite, executor, telemetry_hz=telemetry_hz, thresholds=thresholds, report=_progress(quiet)
    )
    if json_path:
        Path(json_path).write_text(dumps(doc) + "\n")
    console = Console()
    print_sweep(console if console.is_terminal else Console(width=160), doc)
    click.echo(f"wrote {Path(out) / 'sweep.json'} and {Path(out) / 'sweep.html'}", err=True)
    click.get_current_context().exit(doc["verdict"]["exit_code"])


COMMANDS = (sweep,)
