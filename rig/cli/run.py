"""`rig run`, `rig score` and `rig tiny-model`: record runs into run directories.

The spec options come from RunSpec's fields (rig.cli.options); the work is rig.run.runner.execute under a progress bar.
"""

from __future__ import annotations

from pathlib import Path

import click

from rig.cli.options import build_spec, spec_options
from rig.errors import UserError


def _execute(label: str, quiet: bool, spec, out, **kwargs):
    """rig.run.runner.execute with a rich progress bar over batches; returns the run directory."""
    from rig.run import runner

    update, bar = _progress_runner(label, quiet)
    with bar:
        return runner.execute(spec, out, progress=update, **kwargs)


def _progress_runner(label: str, quiet: bool):
    """A (callback, context manager) pair drawing a rich progress bar over batches."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )
    task = progress.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update, progress


@click.command()
@spec_options
@click.option("--suite", "suite_name", default="default", show_default=True, help="Bundled suite name or JSONL path.")
@click.option("--date", "conversation_date", default=None, help="Harmony conversation date. [default: 2025-08-05]")
@click.option(
    "--reasoning-effort",
    type=click.Choice(["low", "medium", "high"]),
    help="Harmony reasoning effort. [default: medium]",
)
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    help="Continue a killed run from its last complete part.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option(
    "--telemetry-hz", type=float, default=10.0, show_default=True, help="Telemetry sampling rate; 0 turns it off."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def run(suite_name, conversation_date, reasoning_effort, out, resume_dir, force, telemetry_hz, quiet, **opts):
    """Generate completions for a suite and record every token (logprob, top-K) into a run directory.

    \b
    rig run --stack hf --model models/tiny --suite default --out runs/a
    rig run --resume runs/a             # after a crash or kill -9
    """

    if resume_dir:
        path = _execute(
            f"resume {Path(resume_dir).name}", quiet, None, resume_dir, resume=True, telemetry_hz=telemetry_hz
        )
        click.echo(f"resumed and completed {path}")
        return
    if not out:
        raise UserError("--out DIR is required (or --resume DIR)")
    from rig.run.suite import RenderOptions, load_suite

    render = RenderOptions()
    changes = {
        k: v for k, v in {"conversation_date": conversation_date, "reasoning_effort": reasoning_effort}.items() if v
    }
    render = RenderOptions(**{**render.to_dict(), **changes})
    suite = load_suite(suite_name, render)
    spec = build_spec(opts)
    path = _execute(
        f"{spec.stack} {Path(out).name}", quiet, spec, out, suite=suite, force=force, telemetry_hz=telemetry_hz
    )
    click.echo(f"wrote {path} (spec {spec.hash()})")


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@spec_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Scored run directory to create.")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--telemetry-hz", type=float, default=10.0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def score(source, out, force, telemetry_hz, quiet, **opts):
    """Teacher-force SOURCE's completions under another stack or configuration.

    The result is a run directory in the same schema (kind "score") whose manifest names the source run and the hash of
    its tokens; `rig diff A B --scored B_ON_A` reads it.
    """
    from rig.run.store import RunReader

    src = RunReader(source)
    if src.manifest["status"] != "complete":
        raise UserError(f"{source}: the run is {src.manifest['status']}; only complete runs can be scored")
    spec = build_spec(opts)
    label = f"score {Path(source).name} with {spec.stack}"
    path = _execute(label, quiet, spec, out, source=src, force=force, telemetry_hz=telemetry_hz)
    click.echo(f"wrote {path} (scored {src.name} under spec {spec.hash()})")


@click.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--no-tokenizer", is_flag=True, help="Skip the tokenizer files (faster).")
@click.option("--layers", type=int, default=None, help="Decoder layers, alternating sliding and full. [default: 2]")
@click.option("--experts", type=int, default=None, help="Experts per MoE layer. [default: 4]")
@click.option("--top-k", "top_k", type=int, default=None, help="Experts chosen per token. [default: 2]")
def tiny_model(out_dir, no_tokenizer, layers, experts, top_k):
    """Build the deterministic tiny gpt-oss checkpoint (real architecture, real vocabulary) into OUT_DIR.

    \b
    rig tiny-model models/tiny                         # the demo's model: 2 layers, 4 experts, top-2
    rig tiny-model models/tiny6 --layers 6 --experts 8 --top-k 2
    """
    from rig.testing.tiny import build_tiny_model

    hashes = build_tiny_model(out_dir, with_tokenizer=not no_tokenizer, layers=layers, experts=experts, top_k=top_k)
    for name, digest in hashes.items():
        click.echo(f"{digest[:16]}  {name}")


COMMANDS = (run, score, tiny_model)
