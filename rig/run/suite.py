"""Prompt suites: a JSONL schema, its validation, and rendering to token IDs through the harmony encoding.

Every stack must receive the same token IDs, or a diff measures templating instead of numerics. So prompts are
rendered once, here, by the harmony encoding (the `openai_harmony` module from the `oss-harmony` distribution, which
works offline), with the conversation date, reasoning effort and system text pinned and recorded. Each prompt gets a
sha256 of its token IDs, and the suite a hash over all of them and the render options.

A suite line is one of
    {"id": "...", "messages": [{"role": "user", "content": "..."}], "reasoning_effort"?, "reference"?, "category"?}
    {"id": "...", "text": "raw completion prompt"}
    {"id": "...", "token_ids": [1, 2, 3]}
with optional "reference" (a string or number) and "reference_type" (exact, numeric, regex, choice), and, for suites
imported from the evaluation ecosystem (rig.evals, docs/evals.md):
    "reference_type": "math"    the reference is a math answer, checked with math-verify
    "reference_type": "mc"      the reference is the correct letter; "choices" lists the options in their shown order
    "reference_type": "ifeval"  the reference is {"instruction_id_list", "kwargs", "prompt"}, checked by lm-eval
    "origin": {...}             where the record came from in its dataset (row, original id, choice permutation)
An imported suite opens with one header line, {"rig_suite": 1, "source": {...}, "records_sha256": "..."}: the dataset
or task it came from with its hash, the field mapping, and the sha256 of the record lines below it (checked at load, so
an edited suite cannot keep the provenance of the original). Suites without a header load as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from rig.errors import UserError
from rig.harmony import VOCAB_SIZE
from rig.harmony import encoding as harmony_encoding

ROLES = ("system", "developer", "user", "assistant")
EFFORTS = ("low", "medium", "high")
REFERENCE_TYPES = ("exact", "numeric", "regex", "choice", "math", "mc", "ifeval")
_ALLOWED = {
    "id",
    "messages",
    "text",
    "token_ids",
    "reasoning_effort",
    "reference",
    "reference_type",
    "category",
    "choices",
    "origin",
}
HEADER_KEY = "rig_suite"  # the key that marks an imported suite's first line (its provenance header)
HEADER_VERSION = 1
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class RenderOptions:
    """What the harmony system message pins. The defaults are recorded in every manifest."""

    conversation_date: str = "2025-08-05"
    knowledge_cutoff: str = "2024-06"
    reasoning_effort: str = "medium"
    model_identity: str = "You are ChatGPT, a large language model trained by OpenAI."

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt: the token IDs every stack receives, and where they came from."""

    id: str
    token_ids: tuple[int, ...]
    sha256: str
    kind: str  # "chat", "text" or "tokens"
    source: dict[str, Any] = field(default_factory=dict)
    reference: Any = None
    reference_type: str | None = None
    category: str | None = None
    choices: tuple[str, ...] | None = None  # multiple-choice options in the order shown (reference_type "mc")

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "token_ids": list(self.token_ids),
            "sha256": self.sha256,
            "n_tokens": len(self.token_ids),
            "kind": self.kind,
            "source": self.source,
            "reference": self.reference,
            "reference_type": self.reference_type,
            "category": self.category,
        }
        if self.choices is not None:  # only when set: prompts.jsonl of older suites stays byte for byte the same
            out["choices"] = list(self.choices)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Prompt:
        return cls(
            id=d["id"],
            token_ids=tuple(d["token_ids"]),
            sha256=d["sha256"],
            kind=d.get("kind", "tokens"),
            source=d.get("source") or {},
            reference=d.get("reference"),
            reference_type=d.get("reference_type"),
            category=d.get("category"),
            choices=tuple(d["choices"]) if d.get("choices") is not None else None,
        )


@dataclass(frozen=True)
class Suite:
    name: str
    prompts: tuple[Prompt, ...]
    render: RenderOptions
    hash: str
    source: dict[str, Any] | None = None  # an imported suite's provenance header (dataset or task, its hash, mapping)

    def manifest_entry(self) -> dict[str, Any]:
        out = {"name": self.name, "hash": self.hash, "n_prompts": len(self.prompts), "render": self.render.to_dict()}
        if self.source is not None:
            out["source"] = self.source
        return out


def token_hash(token_ids: list[int] | tuple[int, ...]) -> str:
    """Hex sha256 of the token IDs as little-endian int32 bytes (the same bytes on every machine)."""
    return hashlib.sha256(np.asarray(token_ids, dtype="<i4").tobytes()).hexdigest()


def suite_hash(prompts: list[Prompt] | tuple[Prompt, ...], render: RenderOptions, records: str | None = None) -> str:
    """16 hex digits over the render options and each prompt's id and token hash; an imported suite's records_sha256
    (records) is included too, so that its answer key (references, choices) is part of its identity."""
    h = hashlib.sha256(json.dumps(render.to_dict(), sort_keys=True).encode())
    for p in prompts:
        h.update(f"{p.id}\0{p.sha256}\n".encode())
    if records:
        h.update(f"records\0{records}".encode())
    return h.hexdigest()[:16]


def bundled_suites() -> list[str]:
    return sorted(
        p.name.removesuffix(".jsonl") for p in resources.files("rig.run.suites").iterdir() if p.name.endswith(".jsonl")
    )


def resolve_suite_path(name_or_path: str) -> tuple[str, Path]:
    """A bundled suite's name or a path to a JSONL file -> (display name, path)."""
    path = Path(name_or_path)
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise UserError(f"{name_or_path}: suite file not found")
        return path.stem, path
    bundled = resources.files("rig.run.suites").joinpath(f"{name_or_path}.jsonl")
    if not bundled.is_file():
        raise UserError(
            f"unknown suite {name_or_path!r}: not a file, and bundled suites are {', '.join(bundled_suites())}"
        )
    return name_or_path, Path(str(bundled))


def records_sha256(lines: list[str]) -> str:
    """Hex sha256 of an imported suite's record lines (each stripped of surrounding whitespace, joined by newlines)."""
    return hashlib.sha256("\n".join(line.strip() for line in lines if line.strip()).encode()).hexdigest()


def read_header(path: Path) -> dict[str, Any] | None:
    """An imported suite's provenance header (its first line), checked against the record lines; None without one."""
    lines = _read_text(path).splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return None
    try:
        head = json.loads(lines[first])
    except json.JSONDecodeError:
        return None
    if not isinstance(head, dict) or HEADER_KEY not in head:
        return None
    where = f"{path}:{first + 1}"
    if head[HEADER_KEY] != HEADER_VERSION or not isinstance(head.get("source"), dict):
        raise UserError(f"{where}: suite header: expected {{'{HEADER_KEY}': {HEADER_VERSION}, 'source': {{...}}}}")
    want = head.get("records_sha256")
    if want is not None and records_sha256(lines[first + 1 :]) != want:
        raise UserError(
            f"{where}: the records changed since the suite was imported (records_sha256 differs); re-import it, or "
            "delete the header line to use the edited file without its provenance"
        )
    return head


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason})") from None


def validate_lines(path: Path) -> list[dict[str, Any]]:
    """Parse and check every line; the first error raises UserError naming the file, line and field.

    An imported suite's header line (rig_suite) is skipped here; read_header checks it."""
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    text = _read_text(path)
    first = True
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if HEADER_KEY in rec:
            if not first:
                raise UserError(f"{where}: a suite header ('{HEADER_KEY}') is allowed on the first line only")
            first = False
            continue
        first = False
        _check_record(rec, where)
        if rec["id"] in seen:
            raise UserError(f"{where}: field 'id': duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
        seen[rec["id"]] = lineno
        records.append(rec)
    if not records:
        raise UserError(f"{path}: the suite has no prompts")
    return records


def _check_record(rec: dict[str, Any], where: str) -> None:
    unknown = sorted(set(rec) - _ALLOWED)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}")
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise UserError(f"{where}: field 'id': required, a non-empty string")
    bodies = [k for k in ("messages", "text", "token_ids") if k in rec]
    if len(bodies) != 1:
        raise UserError(
            f"{where}: exactly one of 'messages', 'text', 'token_ids' is required (found {bodies or 'none'})"
        )
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{where}: field 'messages': a non-empty list of {{role, content}} objects")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise UserError(f"{where}: field 'messages[{i}]': an object with exactly 'role' and 'content'")
            if m["role"] not in ROLES:
                raise UserError(f"{where}: field 'messages[{i}].role': {m['role']!r} is not one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise UserError(f"{where}: field 'messages[{i}].content': a string")
        if msgs[-1]["role"] == "assistant":
            raise UserError(f"{where}: field 'messages': the last message must not be the assistant's")
    if "text" in rec and (not isinstance(rec["text"], str) or not rec["text"]):
        raise UserError(f"{where}: field 'text': a non-empty string")
    if "token_ids" in rec:
        ids = rec["token_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise UserError(f"{where}: field 'token_ids': a non-empty list of integers")
        bad = [t for t in ids if not 0 <= t < VOCAB_SIZE]
        if bad:
            raise UserError(f"{where}: field 'token_ids': {bad[0]} is outside the vocabulary [0, {VOCAB_SIZE})")
    effort = rec.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise UserError(f"{where}: field 'reasoning_effort': {effort!r} is not one of {', '.join(EFFORTS)}")
    ref = rec.get("reference")
    rtype = rec.get("reference_type")
    if rtype == "ifeval":
        _check_ifeval_reference(ref, where)
    elif ref is not None and (isinstance(ref, bool) or not isinstance(ref, str | int | float)):
        raise UserError(f"{where}: field 'reference': a string or a number")
    if rtype is not None:
        if rtype not in REFERENCE_TYPES:
            raise UserError(f"{where}: field 'reference_type': {rtype!r} is not one of {', '.join(REFERENCE_TYPES)}")
        if ref is None:
            raise UserError(f"{where}: field 'reference_type': given without a 'reference'")
    _check_choices(rec, rtype, where)
    if "category" in rec and not isinstance(rec["category"], str):
        raise UserError(f"{where}: field 'category': a string")
    if "origin" in rec and not isinstance(rec["origin"], dict):
        raise UserError(f"{where}: field 'origin': an object")


def _check_choices(rec: dict[str, Any], rtype: str | None, where: str) -> None:
    choices = rec.get("choices")
    if choices is None:
        if rtype == "mc":
            raise UserError(f"{where}: field 'choices': required with reference_type 'mc'")
        return
    if (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= len(LETTERS)
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise UserError(f"{where}: field 'choices': a list of 2 to {len(LETTERS)} non-empty strings")
    if rtype == "mc" and rec.get("reference") not in LETTERS[: len(choices)]:
        raise UserError(
            f"{where}: field 'reference': with reference_type 'mc', one of the letters "
            f"{LETTERS[0]}-{LETTERS[len(choices) - 1]} (found {rec.get('reference')!r})"
        )


def _check_ifeval_reference(ref: Any, where: str) -> None:
    ok = isinstance(ref, dict) and isinstance(ref.get("instruction_id_list"), list) and ref["instruction_id_list"]
    ok = ok and all(isinstance(x, str) for x in ref["instruction_id_list"])
    kwargs = ref.get("kwargs") if isinstance(ref, dict) else None
    ok = ok and isinstance(kwargs, list) and len(kwargs) == len(ref["instruction_id_list"])
    ok = ok and all(isinstance(k, dict) for k in kwargs)
    if not ok:
        raise UserError(
            f"{where}: field 'reference': with reference_type 'ifeval', an object with 'instruction_id_list' (a list "
            "of instruction ids) and 'kwargs' (one object per instruction)"
        )


def render_record(rec: dict[str, Any], render: RenderOptions) -> Prompt:
    """One validated suite record to a Prompt (harmony rendering for chat messages)."""
    if "messages" in rec:
        ids = render_messages(rec["messages"], render, rec.get("reasoning_effort"))
        kind = "chat"
        source: dict[str, Any] = {"messages": rec["messages"]}
        if rec.get("reasoning_effort"):
            source["reasoning_effort"] = rec["reasoning_effort"]
    elif "text" in rec:
        ids = list(harmony_encoding().encode(rec["text"], allowed_special="all"))
        kind, source = "text", {"text": rec["text"]}
    else:
        ids, kind, source = list(rec["token_ids"]), "tokens", {}
    if rec.get("origin"):
        source["origin"] = rec["origin"]
    ref = rec.get("reference")
    rtype = rec.get("reference_type") or (
        None if ref is None else "numeric" if isinstance(ref, int | float) else "exact"
    )
    return Prompt(
        id=rec["id"],
        token_ids=tuple(int(t) for t in ids),
        sha256=token_hash(ids),
        kind=kind,
        source=source,
        reference=ref,
        reference_type=rtype,
        category=rec.get("category"),
        choices=tuple(rec["choices"]) if rec.get("choices") is not None else None,
    )


def render_messages(messages: list[dict[str, str]], render: RenderOptions, effort: str | None = None) -> list[int]:
    """Harmony token IDs for a conversation, ending where the assistant's reply starts."""
    from openai_harmony import (
        Conversation,
        DeveloperContent,
        Message,
        ReasoningEffort,
        Role,
        SystemContent,
    )

    effort = effort or render.reasoning_effort
    system = (
        SystemContent.new()
        .with_model_identity(render.model_identity)
        .with_knowledge_cutoff(render.knowledge_cutoff)
        .with_conversation_start_date(render.conversation_date)
        .with_reasoning_effort(ReasoningEffort[effort.upper()])
    )
    out = [Message.from_role_and_content(Role.SYSTEM, system)]
    for m in messages:
        if m["role"] == "system" or m["role"] == "developer":
            # The harmony format keeps the system message for metadata; user-supplied instructions go to developer.
            out.append(
                Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions(m["content"]))
            )
        elif m["role"] == "user":
            out.append(Message.from_role_and_content(Role.USER, m["content"]))
        else:
            out.append(Message.from_role_and_content(Role.ASSISTANT, m["content"]).with_channel("final"))
    convo = Conversation.from_messages(out)
    return list(harmony_encoding().render_conversation_for_completion(convo, Role.ASSISTANT))


def load_suite(name_or_path: str, render: RenderOptions | None = None) -> Suite:
    """Validate and render a suite (bundled name or JSONL path)."""
    render = render or RenderOptions()
    if render.reasoning_effort not in EFFORTS:
        raise UserError(f"reasoning effort {render.reasoning_effort!r} is not one of {', '.join(EFFORTS)}")
    name, path = resolve_suite_path(name_or_path)
    header = read_header(path)
    prompts = tuple(render_record(rec, render) for rec in validate_lines(path))
    source = None if header is None else {**header["source"], "records_sha256": header.get("records_sha256")}
    records = None if source is None else source["records_sha256"]
    return Suite(name=name, prompts=prompts, render=render, hash=suite_hash(prompts, render, records), source=source)
