"""lm-evaluation-harness tasks -> a rig suite: the task's own definition and documents, rendered through harmony.

Many users already evaluate with lm-eval, so its task definitions (YAML: which dataset, which split, doc_to_text,
doc_to_choice, doc_to_target) are the most direct way to run the same questions through the rig. This module asks
lm-eval itself for the documents and texts (`TaskManager(include_path=...).load([...])`, `task.eval_docs`,
`task.doc_to_text`), so Jinja templates, `process_docs` functions and `!function` hooks behave as in lm-eval. The
documents come from local files or caches only: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set before `datasets` is
imported, and a task whose documents are not cached ends in one line saying so.

What changes on the way, and is recorded in the header: the prompt is one user message (the task's description, if
any, becomes developer text) rendered through harmony, zero-shot; multiple-choice tasks (scored by lm-eval through
log-likelihoods) become generative questions with lettered options, appended by the rig where the task's own text
does not list them; generation kwargs (until, max_gen_toks, temperature) are recorded but the run's spec decides
sampling. Documents are hashed like lm-eval's per-sample logs do, so the suite says exactly which documents it holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.evals.importers import ANSWER_TYPES, LETTERS, answer_index, check_out, write_suite
from rig.run.suite import EFFORTS

MC_SUFFIX = (
    "\n\n{choices}\n\nThe last line of your response should be of the following format: 'Answer: $LETTER' (without "
    "quotes) where LETTER is one of {letters}."
)


def _lm_eval() -> Any:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("importing lm-eval tasks needs lm-eval: pip install 'inference-rig[evals]'") from None
    return lm_eval, TaskManager


def load_tasks(name: str, include_path: str | Path | None = None) -> dict[str, Any]:
    """{task name: lm-eval Task} for a task, group or tag name; UserError when lm-eval does not know it or its
    documents are not available offline."""
    lm_eval, task_manager = _lm_eval()
    quiet = contextlib.redirect_stdout(io.StringIO())
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("datasets").setLevel(logging.ERROR)
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"{include_path}: not a directory of lm-eval task files")
    with quiet:
        tm = None
        if include_path is not None:  # the user's own task files first: indexing lm-eval's ~200 task folders is slow
            tm = task_manager(include_path=str(include_path), include_defaults=False)
        if tm is None or name not in tm.all_tasks:
            tm = task_manager(include_path=str(include_path) if include_path else None)
        if name not in tm.all_tasks:
            raise UserError(f"lm-eval {lm_eval.__version__} has no task, group or tag {name!r} (lm-eval ls tasks)")
        try:
            tasks = tm.load([name])["tasks"]
        except Exception as exc:  # noqa: BLE001 - datasets and lm-eval raise many kinds for missing documents
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"lm-eval task {name!r}: its documents could not be loaded from local files or caches "
                f"({type(exc).__name__}: {line[:300]})"
            ) from None
    if not tasks:
        raise UserError(f"lm-eval task {name!r} holds no tasks")
    return dict(tasks)


def doc_hash(doc: Any) -> str:
    """Hex sha256 of a document as canonical JSON (keys sorted; values JSON cannot hold written with str)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


def task_records(
    name: str, task: Any, *, answer_type: str | None, limit: int | None, effort: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(suite records, the task's provenance entry) for one lm-eval task."""
    docs = list(task.eval_docs)
    if limit:
        docs = docs[:limit]
    records: list[dict[str, Any]] = []
    hashes = hashlib.sha256()
    appended = 0
    output_type = task.OUTPUT_TYPE
    for i, doc in enumerate(docs):
        hashes.update(doc_hash(doc).encode())
        text = task.doc_to_text(doc)
        if not isinstance(text, str):
            raise UserError(
                f"lm-eval task {name!r}: doc_to_text gives {type(text).__name__}, not text (a task that varies the "
                "context per choice cannot be asked as one prompt)"
            )
        rec: dict[str, Any] = {"id": f"{name}-{i:05d}", "category": name}
        if output_type == "multiple_choice":
            choices = [str(c).strip() for c in task.doc_to_choice(doc)]
            target = task.doc_to_target(doc)
            correct = answer_index(target, choices, i, "doc_to_target")
            if not _lists_choices(text, choices):
                text += MC_SUFFIX.format(
                    choices="\n".join(f"{LETTERS[k]}) {c}" for k, c in enumerate(choices)),
                    letters=LETTERS[: len(choices)],
                )
                appended += 1
            rec.update(reference=LETTERS[correct], reference_type="mc", choices=choices)
        elif isinstance(doc, dict) and "instruction_id_list" in doc and "kwargs" in doc:
            kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in doc["kwargs"]]
            ref = {"instruction_id_list": list(doc["instruction_id_list"]), "kwargs": kwargs, "prompt": text}
            rec.update(reference=ref, reference_type="ifeval")
        elif output_type == "generate_until":
            target = task.doc_to_target(doc)
            if isinstance(target, list):
                target = target[0] if target else None
            if target is not None and str(target).strip() != "":
                rtype = answer_type or "exact"
                keep = isinstance(target, int | float) and not isinstance(target, bool)
                rec.update(reference=target if keep else str(target).strip(), reference_type=rtype)
        else:
            raise UserError(f"lm-eval task {name!r}: output type {output_type!r} has no generative form")
        messages = []
        description = task.config.description or ""
        if description.strip():
            messages.append({"role": "developer", "content": _render(description, doc).strip()})
        rec["messages"] = [*messages, {"role": "user", "content": text}]
        if effort:
            rec["reasoning_effort"] = effort
        rec["origin"] = {"task": name, "doc": i, "doc_sha256": doc_hash(doc)}
        records.append(rec)
    config = task.dump_config() if hasattr(task, "dump_config") else {}
    entry = {
        "task": name,
        "version": (task.config.metadata or {}).get("version") if task.config.metadata else None,
        "output_type": output_type,
        "dataset_path": task.config.dataset_path,
        "dataset_name": task.config.dataset_name,
        "split": task.config.test_split or task.config.validation_split,
        "n_docs": len(docs),
        "docs_sha256": hashes.hexdigest(),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "num_fewshot_in_task": task.config.num_fewshot,
        "generation_kwargs": task.config.generation_kwargs,
        "choices_appended": appended,
    }
    return records, entry


def _lists_choices(text: str, choices: list[str]) -> bool:
    """Whether the task's text already shows every option under its letter ("(A) x", "A) x", "A. x", "A: x")."""
    return all(re.search(rf"(?:^|\s)\(?{LETTERS[k]}[).:]\)?\s*{re.escape(c)}", text) for k, c in enumerate(choices))


def _render(template: str, doc: Any) -> str:
    if "{{" not in template:
        return template
    from lm_eval.utils import apply_template

    return apply_template(template, doc)


def import_task(
    name: str,
    out: str | Path,
    *,
    include_path: str | Path | None = None,
    answer_type: str | None = None,
    limit: int | None = None,
    effort: str | None = None,
    force: bool = False,
) -> Path:
    """Imports an lm-eval task (or every task of a group) into a suite file with its provenance header."""
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise UserError(f"answer type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
    if effort is not None and effort not in EFFORTS:
        raise UserError(f"reasoning effort {effort!r} is not one of {', '.join(EFFORTS)}")
    check_out(out, force)
    lm_eval, _ = _lm_eval()
    tasks = load_tasks(name, include_path)
    records: list[dict[str, Any]] = []
    entries = []
    for task_name in sorted(tasks):
        recs, entry = task_records(task_name, tasks[task_name], answer_type=answer_type, limit=limit, effort=effort)
        records += recs
        entries.append(entry)
    source = {
        "kind": "lm-eval",
        "lm_eval_version": lm_eval.__version__,
        "name": name,
        "include_path": str(Path(include_path).resolve()) if include_path else None,
        "tasks": entries,
        "rendering": "zero-shot; the task's description as developer text, doc_to_text as the user message",
        "limit": limit,
        "answer_type": answer_type,
    }
    return write_suite(out, records, source, force=force)
