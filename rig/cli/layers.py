"""`rig layers A B`: open the model at the positions where two runs part (rig.localize does the work)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rig.localize.targets import DEFAULT_LIMIT
from rig.localize.verdict import FACTOR, FLOOR_STEPS

RunPath = click.Path(path_type=Path)


@click.command("layers")
@click.argument("run_a", type=RunPath)
@click.argument("run_b", type=RunPath)
@click.option("--prompt", "prompt_id", default=None, help="Open one position: the prompt id (with --pos).")
@click.option("--pos", type=int, default=None, help="Position in the continuation (0 = first generated token).")
@click.option("--sample", type=int, default=0, show_default=True, help="Sample index of the sequence.")
@click.option("--top", type=int, default=None, help="Open the N largest |logprob delta| on identical prefixes.")
@click.option(
    "--limit",
    type=int,
    default=DEFAULT_LIMIT,
    show_default=True,
    help="At most this many positions by default (first divergences first, then spikes); 0: all.",
)
@click.option(
    "--factor",
    type=float,
    default=FACTOR,
    show_default=True,
    help="Cross-stack error over the dtype baseline that makes a block bad.",
)
@click.option(
    "--floor-steps",
    type=float,
    default=FLOOR_STEPS,
    show_default=True,
    help="... and the rounding steps it must exceed.",
)
@click.option("--no-fresh", is_flag=True, help="Skip the fresh-input pass of the hf blocks.")
@click.option("--json", "json_path", type=RunPath, help="Write the whole result as JSON here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def layers_command(run_a, run_b, prompt_id, pos, sample, top, limit, factor, floor_steps, no_fresh, json_path, quiet):
    """Find the layer, block and router decision where two runs' stacks part.

    Both runs' stacks (from their manifests: stack, model, dtype, engine arguments) are run teacher-forced on the
    identical token prefix with hooks on every decoder layer, beside a float64 Transformers run of each checkpoint.
    By default every first divergence and spike that `rig diff A B` finds is opened.

    \b
    rig layers runs/hf runs/vllm                            # every split and spike
    rig layers runs/hf runs/vllm --prompt reason-mc-physics --pos 16
    rig layers runs/hf runs/vllm --top 5 --json layers.json
    """
    from rich.console import Console

    from rig.analysis.summary import clean
    from rig.localize.layers import localize_runs
    from rig.localize.table import render

    err = Console(stderr=True)

    def progress(message: str) -> None:
        if not quiet:
            err.print(f"[dim]rig layers: {message}[/]")

    doc = localize_runs(
        run_a,
        run_b,
        prompt=prompt_id,
        pos=pos,
        sample=sample,
        top=top,
        limit=limit,
        factor=factor,
        floor_steps=floor_steps,
        fresh=not no_fresh,
        progress=progress,
    )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(clean(doc), indent=1) + "\n")
    render(doc, Console(width=160))


COMMANDS = (layers_command,)
