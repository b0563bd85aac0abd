"""`rig verify RUN...`: the full integrity check of run directories, for before they are trusted, copied or archived.

Every reader already refuses a damaged run (rig.run.verify, the read-time check); this command goes further (it
decodes every token part and checks its rows) and lists every problem instead of the first, so a user can see what a
copy lost and whether `rig run --resume` can repair it. It never modifies anything. Exit 0 when every run is sound,
2 when any is damaged (the list on stdout, one line on stderr).
"""

from __future__ import annotations

from pathlib import Path

import click

from rig.errors import UserError


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def verify(runs):
    """Check run directories completely: every token part (sha256, footer, schema, rows decoded and matched to its
    completions), prompts.jsonl, completions.jsonl and the manifest's counts.

    Exits 0 when every run is sound, 2 when any is damaged, listing what is damaged. Nothing is modified.
    """
    from rig.run.verify import check_run

    damaged = []
    for path in runs:
        report = check_run(path, checksums=True, decode=True)
        if report.ok:
            click.echo(f"{path}: sound ({report.summary()})")
            continue
        damaged.append(str(path))
        if not report.readable:
            click.echo(f"{report.problems[0]}")
            continue
        n = len(report.problems)
        click.echo(f"{path}: DAMAGED, {n} problem{'s' if n > 1 else ''}")
        for problem in report.problems:
            click.echo(f"  {problem}" + ("" if problem.repairable else "  [a resume cannot repair this]"))
        if report.repairable:
            click.echo(f"  repair: rig run --resume {path}  (regenerates parts {_parts(report.damaged_parts)})")
        else:
            click.echo("  a resume refuses to start until the problems marked above are mended by hand")
    if damaged:
        raise UserError(
            f"{len(damaged)} of {len(runs)} run{'s' if len(runs) > 1 else ''} not sound: {', '.join(damaged)}"
        )


def _parts(parts: set[int]) -> str:
    return ", ".join(f"{i:05d}" for i in sorted(parts)) if parts else "none: it rewrites the manifest and completions"


COMMANDS = (verify,)
