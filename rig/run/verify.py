"""Run integrity: whether a run directory still holds what its writer recorded, and if not, exactly what is damaged.

Run directories are copied between boxes and kept for months, and a verdict computed from a damaged one is worse than
none. When it commits a token part, rig.run.store.RunWriter records in the manifest the part's row count, byte size
and sha256, how many sequences it holds with a hash of their (prompt_id, sample) keys, and a hash of its lines in
completions.jsonl; prompts.jsonl (at the start) and completions.jsonl (at the end) get a row count, size and sha256
(`manifest["integrity"]`, docs/architecture.md). This module checks a directory against that record and against itself:

    report = check_run("runs/hf")                # the read-time check: files, footers, schema, rows, coverage, sha256
    report = check_run("runs/hf", decode=True)   # `rig verify`: also decodes every part and checks its rows
    report.ok, report.problems                   # each Problem names the file and what is wrong with it

Every reader runs the read-time check before it computes anything (RunReader does, so load_run, `rig diff`,
`rig report`, `rig score`, `rig show` and anything later do); `rig verify` runs the full one; `rig run --resume` drops
exactly the parts the report condemns and regenerates them. Runs written before the record existed are checked for
what can be checked (parts present per the plan, footers, schema, row counts against completions, coverage).
Nothing here writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rig.files import sha256_file
from rig.run.store import COMPLETIONS, MANIFEST, PROMPTS, TOKENS_DIR, RunError, RunReader, keys_sha256, token_schema
from rig.run.suite import token_hash

PART_NAME = re.compile(r"part-(\d{5})\.parquet")
STATUSES = ("running", "complete", "failed")
RECORD_FIELDS = ("rows", "bytes", "sha256", "sequences", "keys_sha256", "completions_sha256")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run directory: the file, what is wrong with it, and what a resume can do about it."""

    path: Path | None  # None when the message names its file itself
    what: str
    parts: tuple[int, ...] = ()  # token parts it condemns: `rig run --resume` drops and regenerates them
    repairable: bool = True  # False: regenerating parts cannot mend it, and a resume refuses to start

    def __str__(self) -> str:
        return self.what if self.path is None else f"{self.path}: {self.what}"


@dataclass
class Report:
    """What check_run found. `sound` holds the planned parts that passed every check."""

    path: Path
    status: str | None = None
    problems: list[Problem] = field(default_factory=list)
    sound: set[int] = field(default_factory=set)
    completions: list[dict[str, Any]] = field(default_factory=list)  # the rows that parse, in file order
    readable: bool = True  # False: no manifest to check against (not a run directory); the one problem says why
    checksums: bool = False  # sha256 compared for every sound part (False: none recorded, or not asked)
    decoded: bool = False
    n_parts: int = 0
    n_sequences: int = 0
    n_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def repairable(self) -> bool:
        return all(p.repairable for p in self.problems)

    @property
    def damaged_parts(self) -> set[int]:
        return {i for p in self.problems for i in p.parts}

    def add(self, path: Path | None, what: str, *parts: int, repairable: bool = True) -> None:
        self.problems.append(Problem(path, what, tuple(parts), repairable))

    def summary(self) -> str:
        """One line for a sound run: what was checked."""
        text = f"{self.status}, {self.n_parts} parts, {self.n_sequences:,} sequences, {self.n_tokens:,} tokens"
        text += "; sha256 of every part matches" if self.checksums else "; no part checksums (recorded by later rigs)"
        return text + ("; every part decoded" if self.decoded else "")

    def hint(self) -> str:
        fix = f"; `rig run --resume {self.path}` repairs it" if self.repairable else ""
        return f"`rig verify {self.path}` lists every problem{fix}"

    def error(self) -> RunError:
        """The one-line error a reader raises: the first problem, how many more, and what to do."""
        n = len(self.problems)
        more = f", {n - 1} more problem{'s' if n > 2 else ''}" if n > 1 else ""
        return RunError(f"{self.problems[0]} (run damaged{more}: {self.hint()})")


@dataclass
class _Ctx:
    """What the checks of one run share."""

    path: Path
    complete: bool
    k: int
    plan: dict[int, int | None]  # planned part -> sequences in it (None: no plan recorded, the parts on disk)
    records: dict[str, dict[str, Any]]  # integrity["parts"], by "00000"
    has_integrity: bool
    checksums: bool
    decode: bool
    completions_record: dict[str, Any] | None = None  # integrity["completions"] (complete runs)
    completions_bytes: bytes | None = None
    prompts: list[str] | None = None  # ids in prompts.jsonl order (None: unreadable)
    by_part: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    lines_by_part: dict[int, list[bytes]] = field(default_factory=dict)

    @property
    def tokens(self) -> Path:
        return self.path / TOKENS_DIR

    @property
    def cpath(self) -> Path:
        return self.path / COMPLETIONS

    @property
    def mpath(self) -> Path:
        return self.path / MANIFEST


def check_run(run: RunReader | str | Path, *, checksums: bool = True, decode: bool = False) -> Report:
    """Checks a run directory (never modifies it) and returns a Report listing every problem found.

    checksums: compare each token part's sha256 with its record (prompts.jsonl and completions.jsonl are always
    hashed: they are small). decode: decode every part and check its rows against its completions (`rig verify`).
    A RunReader passed in gets its prompts and completions cached from what this reads.
    """
    if not isinstance(run, RunReader):
        try:
            run = RunReader(run, check_parts=False)
        except RunError as exc:
            report = Report(Path(run), readable=False)
            report.add(None, str(exc), repairable=False)
            return report
    m = run.manifest
    report = Report(run.path, status=m.get("status"))
    ctx = _context(run, report, checksums, decode)
    if ctx is None:
        return report
    ctx.prompts = _check_prompts(run, report, ctx)
    _read_completions(report, ctx)
    run._completions = report.completions
    _check_strays(report, ctx)
    absent = [i for i in sorted(ctx.plan) if not (ctx.tokens / f"part-{i:05d}.parquet").is_file()]
    if ctx.complete and len(ctx.plan) > 1 and len(absent) == len(ctx.plan):  # one line for "no tokens at all"
        report.add(ctx.tokens, f"none of the {len(ctx.plan)} planned parts is there (every token is missing)", *absent)
    else:
        for index in sorted(ctx.plan):
            _check_part(report, ctx, index)
    for key in sorted(ctx.records):
        if not key.isdigit() or int(key) not in ctx.plan:
            report.add(ctx.mpath, f"field 'integrity.parts' has a record for part {key!r}, which is not in the plan")
    _check_coverage(report, ctx, m)
    _check_counts(report, ctx, m)
    _check_completions_record(report, ctx)
    report.sound -= report.damaged_parts
    report.checksums = checksums and ctx.has_integrity and bool(report.sound)
    report.decoded = decode
    sound_rows = [r for r in report.completions if r["part"] in report.sound]
    report.n_parts, report.n_sequences = len(report.sound), len(sound_rows)
    report.n_tokens = sum(r["n_tokens"] for r in sound_rows)
    return report


# ---- the manifest ------------------------------------------------------------------------------------------------


def _context(run: RunReader, report: Report, checksums: bool, decode: bool) -> _Ctx | None:
    """Checks the manifest's fields that everything else relies on; None when they are unusable."""
    m, mpath = run.manifest, run.path / MANIFEST

    def fatal(what: str) -> None:
        report.add(mpath, what, repairable=False)

    if m.get("status") not in STATUSES:
        fatal(f"field 'status' is {m.get('status')!r}, not one of {', '.join(STATUSES)}")
    if m.get("kind") not in ("generate", "score"):
        fatal(f"field 'kind' is {m.get('kind')!r}, not 'generate' or 'score'")
    spec = m.get("spec")
    sampling = spec.get("sampling") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not _is_int(spec.get("logprobs"), 0) or not _is_int(spec.get("batch_size"), 1):
        fatal("field 'spec' lacks an integer 'logprobs' or 'batch_size'")
    elif not isinstance(sampling, dict) or not _is_int(sampling.get("samples"), 1):
        fatal("field 'spec.sampling.samples' is missing or not a positive integer")
    counts = m.get("counts")
    if not isinstance(counts, dict) or not all(_is_int(counts.get(c), 0) for c in ("sequences", "tokens", "parts")):
        fatal("field 'counts' lacks integer 'sequences', 'tokens' or 'parts'")
    raw_plan = m.get("parts_plan")
    plan: dict[int, int | None] = {}
    if raw_plan is None:
        if m.get("status") == "complete":
            fatal("field 'parts_plan' is missing: which parts the run should have cannot be told")
        tokens = run.path / TOKENS_DIR
        found = (PART_NAME.fullmatch(p.name) for p in tokens.iterdir()) if tokens.is_dir() else ()
        plan = {int(g.group(1)): None for g in found if g}
    elif not isinstance(raw_plan, dict) or not all(
        isinstance(k, str) and k.isdigit() and _is_int(v, 1) for k, v in raw_plan.items()
    ):
        fatal("field 'parts_plan' is not a map of part index to a positive sequence count")
    else:
        plan = {int(k): int(v) for k, v in raw_plan.items()}
    integrity = m.get("integrity")
    records: dict[str, dict[str, Any]] = {}
    if integrity is not None:
        if not isinstance(integrity, dict) or not isinstance(integrity.get("parts", {}), dict):
            fatal("field 'integrity' is not a map with a map 'parts'")
        else:
            for key, rec in integrity.get("parts", {}).items():
                if isinstance(rec, dict) and all(f in rec for f in RECORD_FIELDS):
                    records[key] = rec
                else:
                    idx = (int(key),) if key.isdigit() else ()
                    report.add(mpath, f"field 'integrity.parts.{key}' is not a complete part record", *idx)
    if not report.ok and not report.repairable:
        return None
    crec = integrity.get("completions") if isinstance(integrity, dict) else None
    return _Ctx(
        path=run.path,
        complete=m["status"] == "complete",
        k=int(spec["logprobs"]),
        plan=plan,
        records=records,
        has_integrity=isinstance(integrity, dict),
        checksums=checksums,
        decode=decode,
        completions_record=crec if isinstance(crec, dict) else None,
    )


def _is_int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _file_matches(data: bytes, rec: Any) -> bool:
    return (
        isinstance(rec, dict)
        and len(data) == rec.get("bytes")
        and hashlib.sha256(data).hexdigest() == rec.get("sha256")
    )


# ---- prompts.jsonl and completions.jsonl -------------------------------------------------------------------------


def _check_prompts(run: RunReader, report: Report, ctx: _Ctx) -> list[str] | None:
    """prompts.jsonl against its record and its own hashes; the prompt ids in order, or None when unreadable. No
    problem here is repairable: the prompts are the run's input, and a resume cannot know the original."""
    ppath = ctx.path / PROMPTS
    if not ppath.is_file():
        report.add(ppath, "missing", repairable=False)
        return None
    data = ppath.read_bytes()
    rec = (run.manifest.get("integrity") or {}).get("prompts")
    before = len(report.problems)
    if rec is not None and not _file_matches(data, rec):
        report.add(
            ppath,
            "differs from the manifest's record (sha256): edited after the run was recorded; restore it from a copy",
            repairable=False,
        )
    out: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode())  # not json.loads(bytes): it sniffs the encoding of every line
        except ValueError:
            report.add(ppath, f"line {i}: not valid JSON", repairable=False)
            continue
        missing = [key for key in ("id", "token_ids", "sha256") if not isinstance(row, dict) or key not in row]
        if missing:
            report.add(ppath, f"line {i}: field {missing[0]!r} is missing", repairable=False)
            continue
        try:
            same = token_hash(row["token_ids"]) == row["sha256"]
        except (TypeError, ValueError, OverflowError):
            same = False
        if not same:
            report.add(
                ppath,
                f"line {i}: field 'sha256' does not match the token IDs of prompt {row['id']!r}",
                repairable=False,
            )
        if row["id"] in out:
            report.add(ppath, f"line {i}: prompt {row['id']!r} appears twice", repairable=False)
        out[row["id"]] = row
    if len(report.problems) == before:
        run._prompts = out
    return list(out)


def _read_completions(report: Report, ctx: _Ctx) -> None:
    """Parses completions.jsonl keeping each line's bytes (a part's lines are hashed in its record). In an unfinished
    run a last line without its newline was cut by a kill and is dropped."""
    cpath = ctx.cpath
    if not cpath.is_file():
        report.add(cpath, "missing")
        return
    ctx.completions_bytes = cpath.read_bytes()
    raw = ctx.completions_bytes.split(b"\n")
    torn = raw[-1] != b""
    lines = raw if torn else raw[:-1]
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if torn and i == len(lines):
            if ctx.complete:
                report.add(cpath, f"line {i}: cut short (no newline at the end of the file)")
            break
        try:
            row = json.loads(line.decode())  # not json.loads(bytes): it sniffs the encoding of every line
        except ValueError:
            report.add(cpath, f"line {i}: not valid JSON")
            continue
        bad = _bad_completion_field(row)
        if bad:
            report.add(cpath, f"line {i}: field {bad!r} is missing or of the wrong type")
            continue
        if row["part"] not in ctx.plan:
            report.add(cpath, f"line {i}: field 'part' is {row['part']}, which is not in the plan")
            continue
        report.completions.append(row)
        ctx.by_part.setdefault(row["part"], []).append(row)
        ctx.lines_by_part.setdefault(row["part"], []).append(line + b"\n")


def _bad_completion_field(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "prompt_id"
    if not isinstance(row.get("prompt_id"), str):
        return "prompt_id"
    for key in ("sample", "part", "n_tokens"):
        if not _is_int(row.get(key), 0):
            return key
    return None


def _check_completions_record(report: Report, ctx: _Ctx) -> None:
    """completions.jsonl of a complete run against the record made when it finished. Reported only when no part's
    own lines explain the difference (lines reordered, say): the parts' problems already say what."""
    rec = ctx.completions_record
    if rec is None or not ctx.complete or ctx.completions_bytes is None:
        return
    if any(p.path == ctx.cpath for p in report.problems):
        return
    if not _file_matches(ctx.completions_bytes, rec):
        report.add(ctx.cpath, "differs from the manifest's record (sha256) though every part's lines match theirs")


# ---- tokens/ -----------------------------------------------------------------------------------------------------


def _check_strays(report: Report, ctx: _Ctx) -> None:
    """Anything visible in tokens/ that is not one of the planned parts (pandas would read it, and so might a
    reader). Hidden files (the writer's temporaries, a file manager's) are left alone. Not repairable: the rig does
    not delete what it did not write."""
    if not ctx.tokens.is_dir():
        if ctx.tokens.exists():
            report.add(ctx.tokens, "is not a directory", repairable=False)
        return
    for entry in sorted(ctx.tokens.iterdir()):
        if entry.name.startswith("."):
            continue
        match = PART_NAME.fullmatch(entry.name)
        if match is None or int(match.group(1)) not in ctx.plan or not entry.is_file():
            span = f"parts {min(ctx.plan):05d} to {max(ctx.plan):05d}" if ctx.plan else "no parts"
            report.add(
                entry,
                f"not a part of this run (its plan has {span}); move it out of {TOKENS_DIR}/",
                repairable=False,
            )


def _check_part(report: Report, ctx: _Ctx, index: int) -> None:
    """One planned part against its record and its completions. In an unfinished run a part without a record was
    never committed: it is no problem, and counts as sound only when it is whole (a resume adopts it)."""
    key = f"{index:05d}"
    path = ctx.tokens / f"part-{key}.parquet"
    record = ctx.records.get(key)
    planned = ctx.plan[index]
    strict = ctx.complete or record is not None
    found: list[tuple[Path, str]] = []
    if not path.is_file():
        if strict:
            n = f"{planned} sequences" if planned is not None else "sequences"
            report.add(path, f"missing (the plan puts {n} in it)", index)
        return
    if ctx.complete and ctx.has_integrity and record is None:
        found.append((ctx.mpath, f"field 'integrity.parts' has no record of part {key}"))
    size = path.stat().st_size
    if record is not None and size != record["bytes"]:
        found.append((path, f"{size:,} bytes where the manifest records {record['bytes']:,} (truncated or replaced)"))
    elif ctx.checksums and record is not None:
        if sha256_file(path) != record["sha256"]:
            found.append(
                (path, "sha256 differs from the manifest's record (its bytes changed after they were written)")
            )
        else:  # the very bytes the writer wrote for this manifest: footer, schema and row count are as recorded
            _check_rows(found, ctx, index, path, record["rows"], record)
            _report_part(report, found, index, strict)
            return
    try:
        pf = pq.ParquetFile(path)
        n_rows, schema = pf.metadata.num_rows, pf.schema_arrow
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged footer
        found.append((path, f"not a readable Parquet file ({_first_line(exc)})"))
        _report_part(report, found, index, strict)
        return
    if not schema.equals(token_schema(ctx.k), check_metadata=False):
        found.append((path, f"columns differ from the tokens/ schema for K={ctx.k}"))
    if record is not None and n_rows != record["rows"]:
        found.append((path, f"holds {n_rows:,} rows where the manifest records {record['rows']:,}"))
    _check_rows(found, ctx, index, path, n_rows, record)
    _report_part(report, found, index, strict)


def _check_rows(
    found: list[tuple[Path, str]], ctx: _Ctx, index: int, path: Path, n_rows: int, record: dict[str, Any] | None
) -> None:
    """A part's completions against the plan and its record, its row count against their tokens, and (decode) its
    rows against them."""
    key = f"{index:05d}"
    rows = ctx.by_part.get(index, [])
    planned = ctx.plan[index]
    n_tokens = sum(r["n_tokens"] for r in rows)
    if planned is not None and len(rows) != planned:
        found.append((ctx.cpath, f"part {key} has {len(rows)} completions where the plan has {planned}"))
    elif record is not None:
        lines = ctx.lines_by_part.get(index, [])
        if hashlib.sha256(b"".join(sorted(lines))).hexdigest() != record["completions_sha256"]:
            keys = [(r["prompt_id"], r["sample"]) for r in rows]
            what = "name other sequences than" if keys_sha256(keys) != record["keys_sha256"] else "differ from"
            found.append((ctx.cpath, f"the lines of part {key} {what} the manifest's record (sha256)"))
    if n_rows != n_tokens and not (record is not None and n_rows != record["rows"]):
        found.append((path, f"holds {n_rows:,} rows where its {len(rows)} completions count {n_tokens:,} tokens"))
    if ctx.decode and not found:
        found += [(path, what) for what in _decode_problems(path, rows, set(ctx.prompts or ()))]


def _report_part(report: Report, found: list[tuple[Path, str]], index: int, strict: bool) -> None:
    if not found:
        report.sound.add(index)
    elif strict:
        for path, what in found:
            report.add(path, what, index)


def _decode_problems(path: Path, rows: list[dict[str, Any]], prompts: set[str]) -> list[str]:
    """Decodes a part and checks its rows: no nulls, each sequence contiguous with pos 0, 1, 2, ..., and the
    sequences and their lengths exactly those its completions list (sequences of 0 tokens have no rows)."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged page
        return [f"cannot be decoded ({_first_line(exc)})"]
    out = [f"column {name!r} holds nulls" for name in table.column_names if table.column(name).null_count]
    if out or table.num_rows == 0:
        want = {(r["prompt_id"], r["sample"]) for r in rows if r["n_tokens"] > 0}
        return out or ([f"holds no rows where its completions list {len(want)} sequences"] if want else [])
    enc = table.column("prompt_id").combine_chunks().dictionary_encode()
    idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    names = enc.dictionary.to_pylist()
    sample = np.asarray(table.column("sample").to_numpy(), dtype=np.int64)
    pos = np.asarray(table.column("pos").to_numpy(), dtype=np.int64)
    if sample.min() < 0:
        return ["column 'sample' holds a negative value"]
    code = idx * (int(sample.max()) + 1) + sample
    starts = np.concatenate([[0], np.flatnonzero(np.diff(code)) + 1])
    lengths = np.diff(np.concatenate([starts, [len(code)]]))
    if not np.array_equal(pos, np.arange(len(pos)) - np.repeat(starts, lengths)):
        out.append("column 'pos' is not 0, 1, 2, ... within each sequence")
    keys = [(names[idx[s]], int(sample[s])) for s in starts]
    twice = [k for k, n in Counter(keys).items() if n > 1]
    if twice:
        out.append(f"the rows of ({twice[0][0]!r}, sample {twice[0][1]}) are not contiguous")
    unknown = sorted({k[0] for k in keys} - prompts) if prompts else []
    if unknown:
        out.append(f"column 'prompt_id' holds {unknown[0]!r}, which is not in {PROMPTS}")
    got = dict(zip(keys, (int(n) for n in lengths), strict=True))
    want = {(r["prompt_id"], r["sample"]): r["n_tokens"] for r in rows if r["n_tokens"] > 0}
    for key in sorted(set(got) | set(want)):
        if got.get(key, 0) != want.get(key, 0):
            out.append(
                f"holds {got.get(key, 0)} rows of ({key[0]!r}, sample {key[1]}) where its completion lists "
                f"{want.get(key, 0)} tokens"
            )
            break
    return out


# ---- across parts ------------------------------------------------------------------------------------------------


def _check_coverage(report: Report, ctx: _Ctx, m: dict[str, Any]) -> None:
    """Each sequence once, and in a complete generate run every (prompt, sample) of prompts x samples. When the plan
    is the spec's batching (as the runner writes it) a sequence's part is known, and a wrong one condemns its part."""
    where: dict[tuple[str, int], list[int]] = {}
    for r in report.completions:
        where.setdefault((r["prompt_id"], r["sample"]), []).append(r["part"])
    for key, parts in where.items():
        if len(parts) > 1:
            report.add(ctx.cpath, f"({key[0]!r}, sample {key[1]}) appears {len(parts)} times", *sorted(set(parts)))
    if ctx.prompts is None:
        return
    known = set(ctx.prompts)
    for key, parts in where.items():
        if key[0] not in known:
            report.add(ctx.cpath, f"prompt {key[0]!r} of part {parts[0]:05d} is not in {PROMPTS}", *sorted(set(parts)))
    if not (ctx.complete and m.get("kind") == "generate"):
        return
    samples, batch = int(m["spec"]["sampling"]["samples"]), int(m["spec"]["batch_size"])
    wanted = [(p, s) for p in ctx.prompts for s in range(samples)]
    by_spec = {i: len(wanted[i * batch : (i + 1) * batch]) for i in range((len(wanted) + batch - 1) // batch)}
    attributable = ctx.plan == by_spec
    missing = [key for key in wanted if key not in where]
    extra = [key for key in where if key[0] in known and not key[1] < samples]
    if not attributable:
        condemned = bool(report.damaged_parts)
        outside = f"is not in prompts x samples (spec.sampling.samples is {samples})"
        for keys, what in ((missing, "has no completion"), (extra, outside)):
            if keys:
                more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
                report.add(ctx.cpath, f"({keys[0][0]!r}, sample {keys[0][1]}) {what}{more}", repairable=condemned)
        return
    home = {key: i // batch for i, key in enumerate(wanted)}
    for key in missing:
        report.add(
            ctx.cpath,
            f"({key[0]!r}, sample {key[1]}) has no completion (it belongs in part {home[key]:05d})",
            home[key],
        )
    for key, parts in where.items():
        if key in home and any(p != home[key] for p in parts):
            report.add(
                ctx.cpath, f"({key[0]!r}, sample {key[1]}) is in part {parts[0]:05d}, not {home[key]:05d}", *parts
            )
    for key in extra:
        report.add(
            ctx.cpath,
            f"({key[0]!r}, sample {key[1]}) is not in prompts x samples (spec.sampling.samples is {samples})",
            *where[key],
        )


def _check_counts(report: Report, ctx: _Ctx, m: dict[str, Any]) -> None:
    """The manifest's counts against its part records (or, for runs without records, against completions.jsonl)."""
    counts = m["counts"]
    if ctx.has_integrity:
        recs = ctx.records.values()
        want = {"sequences": sum(r["sequences"] for r in recs), "tokens": sum(r["rows"] for r in recs)}
        want["parts"] = len(ctx.records)
        held = "its part records hold"
    elif ctx.complete:
        want = {"sequences": len(report.completions), "tokens": sum(r["n_tokens"] for r in report.completions)}
        want["parts"] = len(ctx.plan)
        held = "the parts hold"
    else:
        return
    if ctx.prompts is not None and "prompts" in counts:
        want["prompts"] = len(ctx.prompts)
    for name, value in want.items():
        if counts.get(name) != value:
            report.add(ctx.mpath, f"field 'counts.{name}' is {counts.get(name)!r} where {held} {value:,}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["Problem", "Report", "check_run"]
