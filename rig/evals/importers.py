"""Benchmark rows -> a rig suite: the field mapping, the presets for GPQA, AIME and IFEval, and the provenance header.

The provider gaps that started the project are benchmark scores (GPQA x16, AIME x32, IFBench x16), so the rig must
run the benchmark's own questions, rendered through harmony like every other prompt, and say where they came from. A
user points `rig suite import` at the file they already evaluate with and names which column is the question, the
choices, the answer, per-prompt system or developer text and reasoning effort; a preset fills those in for the usual
shapes. The suite opens with a header recording the file's path and sha256, the mapping, the template, the choice
shuffle and the sha256 of the records (rig.run.suite checks it at load).

GPQA lists the correct answer first; shown that way every answer would be A. As in OpenAI's simple-evals (which
gpt-oss's evals use), the four options are shuffled per question, here deterministically: the permutation is seeded
by sha256(seed, question id), recorded in each record's origin, and the correct letter becomes the reference.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rig import __version__
from rig.errors import UserError
from rig.files import atomic_write_bytes, now_iso
from rig.run.suite import EFFORTS, HEADER_KEY, HEADER_VERSION, LETTERS, records_sha256

ANSWER_TYPES = ("math", "mc", "ifeval", "exact", "numeric", "regex")

# OpenAI simple-evals' multiple-choice prompt (gpt-oss's GPQA eval) and gpt-oss's AIME prompt
MC_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. Think step by step before "
    "answering.\n\n{question}\n\n{choices}"
)
MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@dataclass(frozen=True)
class FieldMap:
    """Which column holds what. choices: several columns, or one column holding a list (or a JSON list)."""

    id: str | None = None
    question: str | None = None
    choices: tuple[str, ...] = ()
    answer: str | None = None
    system: str | None = None
    developer: str | None = None
    reasoning_effort: str | None = None
    category: str | None = None
    instruction_ids: str | None = None
    instruction_kwargs: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) if (v := getattr(self, f.name))}


MAP_KEYS = tuple(f.name for f in fields(FieldMap))


@dataclass(frozen=True)
class Preset:
    """A benchmark's usual shape: candidate column names per field (the first present one is used) and defaults."""

    columns: dict[str, tuple[str, ...]]
    answer_type: str
    template: str
    shuffle_choices: bool = False


PRESETS = {
    "gpqa": Preset(
        columns={
            "id": ("Record ID", "id"),
            "question": ("Question", "question"),
            "choices": ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
            "answer": ("Correct Answer",),
            "category": ("High-level domain",),
        },
        answer_type="mc",
        template=MC_TEMPLATE,
        shuffle_choices=True,
    ),
    "aime": Preset(
        columns={
            "id": ("id", "ID", "problem_idx", "idx", "url"),
            "question": ("problem", "question", "Problem", "Question"),
            "answer": ("answer", "Answer", "expected_answer"),
        },
        answer_type="math",
        template=MATH_TEMPLATE,
    ),
    "ifeval": Preset(
        columns={
            "id": ("key", "id"),
            "question": ("prompt",),
            "instruction_ids": ("instruction_id_list",),
            "instruction_kwargs": ("kwargs",),
        },
        answer_type="ifeval",
        template="{question}",
    ),
}


@dataclass(frozen=True)
class ImportOptions:
    """Everything besides the mapping that decides the records; recorded in the header."""

    answer_type: str = "exact"
    template: str = "{question}"
    shuffle_choices: bool = False
    seed: int = 0
    reasoning_effort: str | None = None  # one effort for every prompt (a mapped column wins per row)
    category: str | None = None  # one category for every prompt (a mapped column wins per row)
    limit: int | None = None
    id_prefix: str = ""


def resolve_preset(name: str | None, columns: list[str], given: dict[str, Any]) -> tuple[FieldMap, dict[str, Any]]:
    """(mapping, option defaults) from a preset's candidates present in columns, overridden by the given fields."""
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    if name:
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
        preset = PRESETS[name]
        for key, candidates in preset.columns.items():
            if key == "choices":
                if all(c in columns for c in candidates):
                    values[key] = candidates
                continue
            hit = next((c for c in candidates if c in columns), None)
            if hit is not None:
                values[key] = hit
        defaults = {"answer_type": preset.answer_type, "template": preset.template}
        defaults["shuffle_choices"] = preset.shuffle_choices
    for key, value in given.items():
        if key not in MAP_KEYS:
            raise UserError(f"--field {key}=...: unknown field; fields are {', '.join(MAP_KEYS)}")
        values[key] = tuple(c.strip() for c in value.split(",")) if key == "choices" else value
    mapping = FieldMap(**values)
    for key, value in mapping.to_dict().items():
        for col in value if isinstance(value, list) else [value]:
            if col not in columns:
                raise UserError(f"field {key}: column {col!r} is not in the data (columns: {', '.join(columns)})")
    return mapping, defaults


def permutation(question_id: str, n: int, seed: int) -> list[int]:
    """The shown order of n options for one question: shown position i holds original option perm[i]."""
    digest = hashlib.sha256(f"rig-choices\0{seed}\0{question_id}".encode()).digest()
    perm = list(range(n))
    random.Random(int.from_bytes(digest[:8], "little")).shuffle(perm)
    return perm


def build_records(rows: list[dict[str, Any]], mapping: FieldMap, opts: ImportOptions) -> list[dict[str, Any]]:
    """Suite records (rig.run.suite's schema) for rows, in file order; UserError naming the row on bad data."""
    if not mapping.question:
        raise UserError("no question field: pass --field question=COLUMN (or a --preset)")
    if opts.answer_type not in ANSWER_TYPES:
        raise UserError(f"answer type {opts.answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows[: opts.limit] if opts.limit else rows):
        rid = f"{opts.id_prefix}{_text(row.get(mapping.id), i, 'id') if mapping.id else f'{i:05d}'}"
        if rid in seen:
            raise UserError(f"row {i}: id {rid!r} repeats row {seen[rid]} (map another --field id=COLUMN)")
        seen[rid] = i
        out.append(_record(row, i, rid, mapping, opts))
    return out


def _record(row: dict[str, Any], i: int, rid: str, m: FieldMap, opts: ImportOptions) -> dict[str, Any]:
    question = _text(row.get(m.question), i, m.question)
    origin: dict[str, Any] = {"row": i}
    if m.id:
        origin["id"] = row.get(m.id)
    rec: dict[str, Any] = {"id": rid}
    fmt = {"question": question, "choices": "", "letters": ""}
    if opts.answer_type == "mc":
        shown, letter, perm = _choices(row, i, rid, m, opts)
        fmt["choices"] = "\n".join(f"{LETTERS[k]}) {c}" for k, c in enumerate(shown))
        fmt["letters"] = LETTERS[: len(shown)]
        rec.update(reference=letter, reference_type="mc", choices=shown)
        if perm is not None:
            origin["permutation"] = perm
    elif opts.answer_type == "ifeval":
        rec.update(reference=_ifeval_reference(row, i, m, question), reference_type="ifeval")
    else:
        if not m.answer:
            raise UserError(f"answer type {opts.answer_type!r} needs --field answer=COLUMN")
        answer = row.get(m.answer)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise UserError(f"row {i}: column {m.answer!r} (the answer) is empty")
        keep = isinstance(answer, int | float) and not isinstance(answer, bool)
        rec.update(reference=answer if keep else str(answer).strip(), reference_type=opts.answer_type)
    try:
        content = opts.template.format(**fmt)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"template: {exc!r}; it may use {{question}}, {{choices}} and {{letters}}") from None
    messages = [
        {"role": role, "content": str(row[col])}
        for role, col in (("system", m.system), ("developer", m.developer))
        if col and row.get(col) not in (None, "")
    ]
    rec["messages"] = [*messages, {"role": "user", "content": content}]
    effort = row.get(m.reasoning_effort) if m.reasoning_effort else None
    effort = effort or opts.reasoning_effort
    if effort:
        if str(effort).lower() not in EFFORTS:
            raise UserError(f"row {i}: reasoning effort {effort!r} is not one of {', '.join(EFFORTS)}")
        rec["reasoning_effort"] = str(effort).lower()
    category = (row.get(m.category) if m.category else None) or opts.category
    if category:
        rec["category"] = str(category)
    rec["origin"] = origin
    return rec


def _text(value: Any, i: int, column: str | None) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"row {i}: column {column!r} is empty")
    return str(value).strip() if isinstance(value, str) else str(value)


def _listish(value: Any, i: int, column: str) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"row {i}: column {column!r} is not a list (nor a JSON list)") from None
    if not isinstance(value, list | tuple):
        raise UserError(f"row {i}: column {column!r} is not a list")
    return list(value)


def _choices(
    row: dict[str, Any], i: int, rid: str, m: FieldMap, opts: ImportOptions
) -> tuple[list[str], str, list[int] | None]:
    """(options in the order shown, the correct one's letter, the permutation applied or None)."""
    if not m.choices:
        raise UserError("answer type 'mc' needs --field choices=COL1,COL2,... (or one column holding a list)")
    if len(m.choices) == 1:
        options = [str(c).strip() for c in _listish(row.get(m.choices[0]), i, m.choices[0])]
    else:
        options = [_text(row.get(c), i, c) for c in m.choices]
    if not 2 <= len(options) <= len(LETTERS):
        raise UserError(f"row {i}: {len(options)} choices (2 to {len(LETTERS)} are supported)")
    if not m.answer:
        raise UserError("answer type 'mc' needs --field answer=COLUMN (the correct option's text, letter or index)")
    correct = answer_index(row.get(m.answer), options, i, m.answer)
    perm = permutation(rid, len(options), opts.seed) if opts.shuffle_choices else None
    shown = [options[k] for k in perm] if perm else options
    letter = LETTERS[perm.index(correct)] if perm else LETTERS[correct]
    return shown, letter, perm


def answer_index(value: Any, options: list[str], i: int, column: str) -> int:
    """The correct option's index from its text, its letter, or a 0-based index (lm-eval's and MMLU's convention)."""
    if isinstance(value, str):
        text = value.strip()
        if text in options:
            return options.index(text)
        if len(text) == 1 and text.upper() in LETTERS[: len(options)]:
            return LETTERS.index(text.upper())
        if text.isdigit():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
        return value
    raise UserError(
        f"row {i}: answer {value!r} (column {column!r}) is neither a choice's text, a letter, nor a 0-based index"
    )


def _ifeval_reference(row: dict[str, Any], i: int, m: FieldMap, prompt: str) -> dict[str, Any]:
    if not m.instruction_ids or not m.instruction_kwargs:
        raise UserError(
            "answer type 'ifeval' needs --field instruction_ids=COLUMN and --field instruction_kwargs=COLUMN"
        )
    ids = [str(x) for x in _listish(row.get(m.instruction_ids), i, m.instruction_ids)]
    kwargs = _listish(row.get(m.instruction_kwargs), i, m.instruction_kwargs)
    if not ids or len(kwargs) != len(ids) or not all(isinstance(k, dict | type(None)) for k in kwargs):
        raise UserError(f"row {i}: {len(ids)} instruction ids but {len(kwargs)} kwargs objects")
    # None values are IFEval's padding (its Parquet rows carry every argument name); lm-eval drops them too
    clean = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    return {"instruction_id_list": ids, "kwargs": clean, "prompt": prompt}


def check_out(out: str | Path, force: bool) -> Path:
    """The output path, refused (UserError) when a file is there and force is off; checked before any work."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    return out


def write_suite(out: str | Path, records: list[dict[str, Any]], source: dict[str, Any], *, force: bool = False) -> Path:
    """Writes the header and the records as one suite file (atomically); returns its path."""
    out = check_out(out, force)
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=False) for r in records]
    source = {**source, "rig_version": __version__, "imported_at": now_iso(), "n_records": len(records)}
    header = {HEADER_KEY: HEADER_VERSION, "source": source, "records_sha256": records_sha256(lines)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, ("\n".join([json.dumps(header, ensure_ascii=False), *lines]) + "\n").encode())
    return out


def import_file(
    data: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    fmt: str | None = None,
    fields_given: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Reads a JSONL, CSV or Parquet file, maps its rows to suite records and writes the suite with its header.

    options: ImportOptions fields given by the user (None values keep the preset's or the default)."""
    from rig.evals.tabular import read_rows

    check_out(out, force)
    rows, file_record = read_rows(data, fmt)
    columns = list(dict.fromkeys(k for row in rows[:50] for k in row))
    mapping, defaults = resolve_preset(preset, columns, fields_given or {})
    given = {k: v for k, v in (options or {}).items() if v is not None}
    opts = replace(ImportOptions(), **{**defaults, **given})
    if opts.id_prefix == "" and not mapping.id:
        opts = replace(opts, id_prefix=f"{Path(data).stem}-")
    records = build_records(rows, mapping, opts)
    source = {
        "kind": "file",
        "file": file_record,
        "preset": preset,
        "mapping": mapping.to_dict(),
        "answer_type": opts.answer_type,
        "template": opts.template,
        "shuffle_choices": {"seed": opts.seed, "rule": "sha256(seed, id) seeds random.Random"}
        if opts.shuffle_choices and opts.answer_type == "mc"
        else None,
        "reasoning_effort": opts.reasoning_effort,
        "limit": opts.limit,
    }
    return write_suite(out, records, source, force=force)
