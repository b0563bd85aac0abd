"""`rig suite import`: a suite from the evaluation ecosystem (a local JSONL, CSV or Parquet file, or an lm-eval task).

The work is rig.evals (importers.py, lmeval.py); this module only parses the options, then loads the written suite
back through rig.run.suite (so the file is proven to render) and prints what it holds.
"""

from __future__ import annotations

from pathlib import Path

import click

from rig.cli.show import suite
from rig.errors import UserError


def _fields(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--field {item!r}: expected KEY=COLUMN (e.g. question=Question)")
        key, column = item.split("=", 1)
        out[key.strip()] = column.strip()
    return out


@suite.command("import")
@click.argument("data", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Suite file to write.")
@click.option("--preset", type=click.Choice(["gpqa", "aime", "ifeval"]), help="The usual columns of a benchmark.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), help="[default: from the suffix]")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="KEY=COLUMN",
    help="Which column holds KEY: id, question, choices (COL1,COL2,... or one list column), answer, system, "
    "developer, reasoning_effort, category, instruction_ids, instruction_kwargs. Repeatable; overrides the preset.",
)
@click.option(
    "--answer-type",
    type=click.Choice(["math", "mc", "ifeval", "exact", "numeric", "regex"]),
    help="How answers are checked: math (math-verify), mc (letter extraction), ifeval (lm-eval's IFEval), or the "
    "rig's exact, numeric, regex. [default: the preset's, else exact]",
)
@click.option("--template", help="The user message, a format string with {question}, {choices}, {letters}.")
@click.option(
    "--shuffle-choices/--no-shuffle-choices",
    default=None,
    help="Shuffle multiple-choice options per question, seeded by its id. [default: on for gpqa]",
)
@click.option("--seed", type=int, default=None, help="Seed of the choice shuffle. [default: 0]")
@click.option("--reasoning-effort", type=click.Choice(["low", "medium", "high"]), help="For every prompt.")
@click.option("--category", help="Category of every prompt (a mapped category column wins).")
@click.option("--limit", type=int, help="Import only the first N rows (or documents).")
@click.option("--id-prefix", help="Prefix of every prompt id.")
@click.option("--lm-eval-task", help="Import this lm-eval task (or group) instead of a file.")
@click.option(
    "--lm-eval-include",
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder of lm-eval task YAML files to search first.",
)
@click.option("--force", is_flag=True, help="Overwrite OUT.")
def suite_import(
    data,
    out,
    preset,
    fmt,
    fields,
    answer_type,
    template,
    shuffle_choices,
    seed,
    reasoning_effort,
    category,
    limit,
    id_prefix,
    lm_eval_task,
    lm_eval_include,
    force,
):
    """Import a suite from DATA (JSONL, CSV or Parquet) with a field mapping, or from an lm-eval task.

    \b
    rig suite import gpqa_diamond.csv --preset gpqa --out suites/gpqa.jsonl
    rig suite import aime_2025.jsonl --preset aime --reasoning-effort high --out suites/aime25.jsonl
    rig suite import ifeval.parquet --preset ifeval --out suites/ifeval.jsonl
    rig suite import qa.csv --field question=q --field answer=a --answer-type numeric --out suites/qa.jsonl
    rig suite import --lm-eval-task gpqa_diamond_zeroshot --out suites/gpqa-lm-eval.jsonl

    The suite records where it came from (the file's sha256, or the task's documents' hashes), the mapping and the
    template in its first line; `rig run --suite FILE` renders it through harmony like any suite.
    """
    from rig.run.suite import load_suite

    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    if lm_eval_task:
        if data is not None or preset or fields or template or shuffle_choices is not None:
            raise UserError("--lm-eval-task takes no DATA, --preset, --field, --template or --shuffle-choices")
        from rig.evals.lmeval import import_task

        path = import_task(
            lm_eval_task,
            out,
            include_path=lm_eval_include,
            answer_type=answer_type,
            limit=limit,
            effort=reasoning_effort,
            force=force,
        )
    else:
        if data is None:
            raise UserError("give a DATA file (JSONL, CSV or Parquet) or --lm-eval-task NAME")
        from rig.evals.importers import import_file

        options = {
            "answer_type": answer_type,
            "template": template,
            "shuffle_choices": shuffle_choices,
            "seed": seed,
            "reasoning_effort": reasoning_effort,
            "category": category,
            "limit": limit,
            "id_prefix": id_prefix,
        }
        path = import_file(
            data, out, preset=preset, fmt=fmt, fields_given=_fields(fields), options=options, force=force
        )
    loaded = load_suite(str(path))
    types = sorted({p.reference_type or "-" for p in loaded.prompts})
    tokens = [len(p.token_ids) for p in loaded.prompts]
    click.echo(
        f"wrote {path}: {len(loaded.prompts)} prompts ({', '.join(types)}), {min(tokens)}-{max(tokens)} tokens each, "
        f"suite hash {loaded.hash}"
    )


COMMANDS = ()  # `import` joins the `suite` group of rig.cli.show; importing this module registers it
