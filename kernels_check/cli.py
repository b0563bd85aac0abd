"""`rig kernels`: check every gpt-oss kernel in every implementation on this machine against float64.

Why this exists: when `rig layers` points at a block, this says which kernel in it is wrong or only imprecise.
The command object is `kernels_command` (register it with `main.add_command(kernels_command)` in rig.cli); it also
runs standalone: `python -m kernels_check.cli` or `python -m kernels_check`. Importing this module imports click
only; torch and the stacks load when the command runs.

Exit status: 0 every check passed, 1 a check failed, 2 a usage error (one line "rig: error: ...").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from kernels_check.base import DTYPES
from kernels_check.registry import KERNELS


@click.command(
    "kernels",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="auto",
    show_default=True,
    help="Where the implementations run (auto: cuda when torch sees a GPU).",
)
@click.option(
    "--dtype",
    "dtypes",
    type=click.Choice(list(DTYPES)),
    multiple=True,
    help="Test dtype, repeatable. [default: all a kernel supports]",
)
@click.option("--kernel", "kernels", type=click.Choice(list(KERNELS)), multiple=True, help="Only these, repeatable.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Also write the result document here.")
@click.option("--quick", is_flag=True, help="Skip the long-sequence cases (for smoke tests).")
@click.option(
    "--require-batch-invariance",
    "require_invariance",
    is_flag=True,
    help="Fail implementations that are not batch-invariant (default: report it in the table only).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def kernels_command(device, dtypes, kernels, json_file, quick, require_invariance, quiet):
    """Check each gpt-oss kernel (RMSNorm, YaRN, rope, attention with sinks, router, SwiGLU, experts, MXFP4,
    log-softmax + top-K) in every implementation found here against a float64 reference.

    \b
    Per kernel x implementation x dtype: the error in rounding steps of the output dtype, its ratio to plain
    torch at the same dtype (pass at most 2x), batch invariance (a row alone vs in batches of 3, 8, 64, and
    255 vs 300 rows; reported, and failed only with --require-batch-invariance) and determinism (3 repeats
    bitwise). Implementations that cannot run here are listed as skipped with the reason. Exit 1 when any check
    fails.
    """
    # Idle OpenMP workers sleep instead of spinning: on a shared machine spinning threads fight for the cores and
    # more than doubled this command's CPU time. Numerics are unchanged; an explicit setting wins; it only takes
    # effect when torch is not yet imported (as under `rig`, whose CLI stays light).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from kernels_check.report import print_table
    from kernels_check.run import resolve_device, run_all

    try:
        resolved = resolve_device(device)
    except ValueError as exc:
        click.echo(f"rig: error: {exc}", err=True)
        sys.exit(2)
    if json_file and not Path(json_file).resolve().parent.is_dir():
        click.echo(f"rig: error: the directory of --json {json_file} does not exist", err=True)
        sys.exit(2)

    def progress(msg: str) -> None:
        if not quiet:
            click.echo(f"rig kernels: {msg}", err=True)

    report = run_all(
        resolved,
        tuple(dtypes) or None,
        tuple(kernels) or None,
        quick=quick,
        require_invariance=require_invariance,
        progress=progress,
    )
    doc = report.as_json()
    print_table(doc)
    if json_file:
        Path(json_file).write_text(json.dumps(doc, indent=1) + "\n")
        click.echo(f"wrote {json_file}", err=True)
    sys.exit(0 if report.ok else 1)


def main() -> None:
    kernels_command(prog_name="rig kernels")


if __name__ == "__main__":
    main()
