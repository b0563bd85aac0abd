"""Run directories: the writer (atomic parts, resume) and the reader (schema-checked).

A run directory is the unit users copy between an RTX box and an H100 box, so it must be self-describing and never
half-written: every file is written to a temporary name and renamed into place, the token parts are immutable once
renamed, and a killed run resumes from its last complete part. When it commits a part, the writer records the part's
size, row count, sha256 and sequence keys in the manifest (`integrity`), so that damage done later (a truncated copy,
flipped bytes, a lost or stray file) is found before any verdict is computed from it. The reader refuses a directory
whose schema, hashes or integrity record do not check out (rig.run.verify), with a message that names the file and
the field; a resume regenerates exactly the damaged parts. Layout: docs/architecture.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rig import SCHEMA_VERSION, __version__
from rig.errors import UserError
from rig.files import atomic_replace, atomic_write_json, now_iso, read_jsonl, sha256_file, write_jsonl
from rig.run.suite import Prompt, token_hash

MANIFEST = "manifest.json"
PROMPTS = "prompts.jsonl"
COMPLETIONS = "completions.jsonl"
TOKENS_DIR = "tokens"
PARQUET_COMPRESSION = "lz4"
REQUIRED_MANIFEST = ("schema_version", "kind", "status", "spec", "spec_hash", "suite", "counts")


class RunError(UserError):
    """A run directory that fails its checks; the message names the file and the field."""


def token_schema(k: int) -> pa.Schema:
    """The tokens/ Parquet schema for top-K = k (fixed-size lists keep the reader vectorized)."""
    # Non-nullable fields spare Parquet the definition levels, which halves the decode time of the top-K lists.
    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("pos", pa.int32(), nullable=False),
            pa.field("token_id", pa.int32(), nullable=False),
            pa.field("logprob", pa.float32(), nullable=False),
            pa.field("topk_ids", pa.list_(pa.field("item", pa.int32(), nullable=False), k), nullable=False),
            pa.field("topk_logprobs", pa.list_(pa.field("item", pa.float32(), nullable=False), k), nullable=False),
        ]
    )


# ---- the tokens/ part writer ------------------------------------------------------------------------------------


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write a tokens/ part atomically with the encodings the diff's loader is tuned for.

    Measured for the diff's load time (docs/performance.md): lz4 decodes faster than zstd, byte-stream-split floats
    decode faster than plain ones and compress better, and only prompt_id gains from a dictionary.
    """
    atomic_replace(
        path,
        lambda tmp: pq.write_table(
            table,
            tmp,
            compression=PARQUET_COMPRESSION,
            use_dictionary=["prompt_id"],
            column_encoding={"logprob": "BYTE_STREAM_SPLIT", "topk_logprobs": "BYTE_STREAM_SPLIT"},
        ),
    )


# ---- integrity records (manifest["integrity"]; checked by rig.run.verify) ------------------------------------------


def file_record(path: Path, rows: int) -> dict[str, Any]:
    """{"rows", "bytes", "sha256"} of a file just written (read back once: cheap next to writing it)."""
    return {"rows": int(rows), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def keys_sha256(keys: Sequence[tuple[str, int]]) -> str:
    """sha256 of a part's sequence keys: the sorted (prompt_id, sample) pairs as one JSON array."""
    canonical = sorted([str(p), int(s)] for p, s in keys)
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def part_record(path: Path, rows: int, keys: Sequence[tuple[str, int]], lines: Sequence[bytes]) -> dict[str, Any]:
    """The record of one committed token part: its file (rows, bytes, sha256), how many sequences it holds and the
    hash of their keys, and the sha256 of its lines in completions.jsonl (sorted, each with its newline: finish()
    reorders the file)."""
    return {
        **file_record(path, rows),
        "sequences": len(keys),
        "keys_sha256": keys_sha256(keys),
        "completions_sha256": hashlib.sha256(b"".join(sorted(lines))).hexdigest(),
    }


def completion_line(row: dict[str, Any]) -> bytes:
    """One completions.jsonl line, exactly as the writer writes it (json.loads then this gives the same bytes back)."""
    return (json.dumps(row, ensure_ascii=False) + "\n").encode()


# ---- results to Arrow ----------------------------------------------------------------------------------------------


def results_to_table(results: Sequence[Any], k: int) -> pa.Table:
    """SequenceResults to one Arrow table in the tokens/ schema, built from NumPy arrays without a per-token loop."""
    n_per = [len(r.token_ids) for r in results]
    n = int(sum(n_per))
    prompt_ids = np.repeat(np.array([r.prompt_id for r in results], dtype=object), n_per)
    samples = np.repeat(np.array([r.sample for r in results], dtype=np.int32), n_per)
    pos = np.concatenate([np.arange(m, dtype=np.int32) for m in n_per]) if n else np.zeros(0, np.int32)

    def cat(attr: str, dtype: Any, width: int | None = None) -> np.ndarray:
        parts = [np.asarray(getattr(r, attr), dtype=dtype) for r in results]
        if width is not None:
            parts = [p.reshape(len(p), width) if p.size else np.zeros((len(p), width), dtype) for p in parts]
        if not parts:
            return np.zeros((0, width) if width is not None else 0, dtype)
        return np.concatenate(parts)

    topk_ids = cat("topk_ids", np.int32, k)
    topk_lps = cat("topk_logprobs", np.float32, k)
    return pa.table(
        {
            "prompt_id": pa.array(prompt_ids, type=pa.string()),
            "sample": samples,
            "pos": pos,
            "token_id": cat("token_ids", np.int32),
            "logprob": cat("logprobs", np.float32),
            "topk_ids": pa.FixedSizeListArray.from_arrays(pa.array(topk_ids.reshape(-1)), k),
            "topk_logprobs": pa.FixedSizeListArray.from_arrays(pa.array(topk_lps.reshape(-1)), k),
        },
        schema=token_schema(k),
    )


# ---- writer --------------------------------------------------------------------------------------------------------


class RunWriter:
    """Creates (or reopens for resume) a run directory and writes its parts atomically.

    `create()` refuses an existing complete run unless force=True, and refuses any other existing run directory unless
    it is being resumed, so recorded work is never overwritten by accident. Each committed part gets its integrity
    record in the manifest (`part_record`); `reopen()` keeps exactly the parts that check out against theirs.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict[str, Any] = {}
        self.repairing = False  # reopen() of a complete but damaged run: finish() keeps what the original recorded
        self._original: dict[str, Any] = {}

    # -- lifecycle
    def create(self, manifest: dict[str, Any], prompts: Sequence[Prompt], *, force: bool = False) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            status = _peek_status(self.path)
            if not force:
                hint = "rig run --resume" if status in ("running", "failed") else "--force to overwrite"
                raise UserError(f"{self.path}: a run ({status or 'unknown status'}) is already there; use {hint}")
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = {
            "schema_version": SCHEMA_VERSION,
            "rig_version": __version__,
            "status": "running",
            "name": self.path.name,
            "created_at": now_iso(),
            "finished_at": None,
            "counts": {"prompts": len(prompts), "sequences": 0, "tokens": 0, "parts": 0},
            **manifest,
        }
        write_jsonl(self.path / PROMPTS, (p.to_json() for p in prompts))
        self.manifest["integrity"] = {"prompts": file_record(self.path / PROMPTS, len(prompts)), "parts": {}}
        (self.path / COMPLETIONS).write_bytes(b"")
        self.write_manifest()

    def reopen(self) -> dict[str, Any]:
        """Open an existing run for resume or repair; return the manifest.

        An unfinished run keeps the parts that were committed (or, written before their record, are whole: footer,
        rows and completions agree) and drops the rest. A complete run is verified first (rig.run.verify, checksums
        included): a sound one is refused ("nothing to resume"); a damaged one drops exactly the parts proven damaged,
        with their completions, and is regenerated like an unfinished run. Damage that regenerating cannot mend (an
        edited prompts.jsonl, a file in tokens/ that is not one of the run's parts) is refused before anything changes.
        """
        from rig.run.verify import check_run

        reader = RunReader(self.path, check_parts=False)
        self.manifest = reader.manifest
        report = check_run(reader, checksums=True)
        if self.manifest["status"] == "complete" and report.ok:
            raise UserError(f"{self.path}: the run is already complete; nothing to resume")
        fatal = [p for p in report.problems if not p.repairable]
        if fatal:
            more = f" (and {len(fatal) - 1} more: `rig verify {self.path}` lists them)" if len(fatal) > 1 else ""
            raise RunError(f"{fatal[0]}; a resume cannot repair this{more}")
        keep = set(report.sound)
        plan = self.manifest.get("parts_plan") or {}
        # 1. the part files that are not kept (damaged, or never committed), and leftover temporary files
        tokens = self.path / TOKENS_DIR
        for part in sorted(tokens.glob("part-*.parquet")) if tokens.is_dir() else []:
            if _part_index(part) not in keep:
                part.unlink()
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink()
        # 2. completions of the kept parts only, in file order (the same bytes as written)
        rows = [r for r in report.completions if r["part"] in keep]
        write_jsonl(self.path / COMPLETIONS, rows)
        # 3. the manifest: a record for every kept part (parts written before records existed get theirs now)
        integrity = self.manifest.setdefault("integrity", {})
        if "prompts" not in integrity:
            integrity["prompts"] = file_record(self.path / PROMPTS, len(reader.prompts))
        old = integrity.get("parts") or {}
        records = {}
        for index in sorted(keep):
            key = f"{index:05d}"
            if key in old:
                records[key] = old[key]
            else:
                mine = [r for r in rows if r["part"] == index]
                records[key] = part_record(
                    tokens / f"part-{key}.parquet",
                    sum(int(r["n_tokens"]) for r in mine),
                    [(r["prompt_id"], r["sample"]) for r in mine],
                    [completion_line(r) for r in mine],
                )
        integrity["parts"] = records
        integrity.pop("completions", None)  # recorded again when the run completes
        status_before = self.manifest["status"]
        self.manifest["status"] = "running"
        self.manifest["finished_at"] = None
        self.manifest.pop("error", None)
        self.manifest["counts"]["prompts"] = len(reader.prompts)
        self._recount(rows)
        if report.problems:  # provenance: which parts a later session regenerated, where, and why
            dropped = sorted({int(i) for i in plan} - keep) if plan else []
            entry = {"at": now_iso(), "host": platform.node(), "rig_version": __version__, "status": status_before}
            entry.update(parts=dropped, problems=[str(p) for p in report.problems[:20]])
            self.manifest.setdefault("repairs", []).append(entry)
        unfinished = [r for r in self.manifest.get("repairs") or [] if "completed_at" not in r]
        if any(r.get("status") == "complete" for r in unfinished):  # repairing a complete run (or finishing that)
            self.repairing = True
            recorded = ("stack", "environment", "telemetry", "timings")
            self._original = copy.deepcopy({k: self.manifest[k] for k in recorded if k in self.manifest})
        self.write_manifest()
        return self.manifest

    def _clear(self) -> None:
        import shutil

        for child in self.path.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- parts
    def complete_parts(self) -> set[int]:
        """The parts committed so far: those with an integrity record (after create() or reopen())."""
        return {int(i) for i in (self.manifest.get("integrity") or {}).get("parts", {})}

    def write_part(self, index: int, results: Sequence[Any], completions: Sequence[dict[str, Any]]) -> None:
        """Write one batch: the Parquet part (atomic rename), then its completions (appended and synced), then the
        manifest with the part's integrity record (atomic): a part counts as committed once its record is there."""
        k = int(self.manifest["spec"]["logprobs"])
        path = self.path / TOKENS_DIR / f"part-{index:05d}.parquet"
        table = results_to_table(results, k)
        atomic_write_table(path, table)
        lines = [completion_line({**c, "part": index}) for c in completions]
        with open(self.path / COMPLETIONS, "ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        keys = [(c["prompt_id"], c["sample"]) for c in completions]
        integrity = self.manifest.setdefault("integrity", {})
        integrity.setdefault("parts", {})[f"{index:05d}"] = part_record(path, table.num_rows, keys, lines)
        counts = self.manifest["counts"]
        counts["sequences"] += len(results)
        counts["tokens"] += int(sum(len(r.token_ids) for r in results))
        counts["parts"] += 1
        self.write_manifest()

    def _recount(self, rows: list[dict[str, Any]]) -> None:
        counts = self.manifest["counts"]
        counts["sequences"] = len(rows)
        counts["tokens"] = int(sum(r.get("n_tokens", 0) for r in rows))
        counts["parts"] = len({r["part"] for r in rows})

    def write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def finish(self, status: str = "complete", **extra: Any) -> None:
        repairs = self.manifest.get("repairs") or []
        if self.repairing:
            # A repair regenerated a few parts of a recorded run: the run's own stack description, environment,
            # telemetry and timings stay; the repair's timings (and its stack, when it differs) go to its entry.
            entry = repairs[-1]
            entry["timings"] = extra.pop("timings", None)
            if self.manifest.get("stack") != self._original.get("stack"):
                entry["stack"] = self.manifest.get("stack")
            self.manifest.update(copy.deepcopy(self._original))
        if status == "complete":
            for entry in repairs:
                entry.setdefault("completed_at", now_iso())
        self.manifest.update(extra)
        self.manifest["status"] = status
        self.manifest["finished_at"] = now_iso()
        if status == "complete":
            # Completions sorted by (prompt order, sample) so a resumed run ends byte-identical to an uninterrupted one.
            order = {pid: i for i, pid in enumerate(r["id"] for r in read_jsonl(self.path / PROMPTS))}
            rows = read_jsonl(self.path / COMPLETIONS)
            rows.sort(key=lambda r: (r["part"], order.get(r["prompt_id"], 0), r["sample"]))
            write_jsonl(self.path / COMPLETIONS, rows)
            integrity = self.manifest.setdefault("integrity", {})
            integrity["completions"] = file_record(self.path / COMPLETIONS, len(rows))
        self.write_manifest()


def _part_index(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _peek_status(path: Path) -> str | None:
    try:
        return json.loads((path / MANIFEST).read_text()).get("status")
    except (OSError, ValueError, AttributeError):  # ValueError: not JSON, not UTF-8
        return None


# ---- reader --------------------------------------------------------------------------------------------------------


class RunReader:
    """A checked view of a run directory. Token parts are read lazily, once.

    RunReader(path) runs the read-time integrity check (rig.run.verify.check_run: files present, footers, schema, row
    counts, sequence coverage, sha256 of every file) and raises RunError naming the first problem, so that no reader
    computes anything from a damaged run. check_parts=False reads the manifest only (the writer's resume, `rig show`).
    """

    def __init__(self, path: str | Path, *, check_parts: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunError(f"{self.path}: not a run directory")
        mpath = self.path / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_bytes())
        except FileNotFoundError:
            raise RunError(f"{mpath}: missing (not a run directory?)") from None
        except OSError as exc:
            raise RunError(f"{mpath}: cannot be read ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise RunError(f"{mpath}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise RunError(f"{mpath}: not valid JSON (not UTF-8 text)") from None
        if not isinstance(self.manifest, dict):
            raise RunError(f"{mpath}: not a JSON object")
        for key in REQUIRED_MANIFEST:
            if key not in self.manifest:
                raise RunError(f"{mpath}: field {key!r} is missing")
        if self.manifest["schema_version"] != SCHEMA_VERSION:
            raise RunError(
                f"{mpath}: field 'schema_version' is {self.manifest['schema_version']!r}; "
                f"this rig reads {SCHEMA_VERSION}"
            )
        self._prompts: dict[str, dict[str, Any]] | None = None
        self._tokens: pa.Table | None = None
        self._completions: list[dict[str, Any]] | None = None
        if check_parts:
            self.check()

    def check(self, *, checksums: bool = True, decode: bool = False) -> Any:
        """The integrity check (rig.run.verify.check_run); raises RunError naming the first problem, else returns the
        report. checksums: sha256 of every part and file against the manifest's record (docs/performance.md gives
        the cost); decode: also decode every part and check its rows (what `rig verify` does)."""
        from rig.run.verify import check_run

        report = check_run(self, checksums=checksums, decode=decode)
        if not report.ok:
            raise report.error()
        return report

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def k(self) -> int:
        return int(self.manifest["spec"]["logprobs"])

    @property
    def prompts(self) -> dict[str, dict[str, Any]]:
        """prompt id -> prompts.jsonl record, in suite order; each token hash re-checked."""
        if self._prompts is None:
            ppath = self.path / PROMPTS
            if not ppath.exists():
                raise RunError(f"{ppath}: missing")
            out: dict[str, dict[str, Any]] = {}
            for i, rec in enumerate(read_jsonl(ppath), start=1):
                for key in ("id", "token_ids", "sha256"):
                    if key not in rec:
                        raise RunError(f"{ppath}:{i}: field {key!r} is missing")
                if token_hash(rec["token_ids"]) != rec["sha256"]:
                    raise RunError(f"{ppath}:{i}: field 'sha256' does not match the token IDs of prompt {rec['id']!r}")
                out[rec["id"]] = rec
            self._prompts = out
        return self._prompts

    @property
    def completions(self) -> list[dict[str, Any]]:
        if self._completions is None:
            self._completions = read_jsonl(self.path / COMPLETIONS)
        return self._completions

    def part_paths(self) -> list[Path]:
        tokens = self.path / TOKENS_DIR
        return sorted(tokens.glob("part-*.parquet")) if tokens.exists() else []

    def tokens(self) -> pa.Table:
        """All token rows, sorted by (prompt order, sample, pos), schema-checked against the manifest's K."""
        if self._tokens is None:
            import pyarrow.compute as pc

            expected = token_schema(self.k)
            tables = []
            for part in self.part_paths():
                try:
                    t = pq.read_table(part)
                except (pa.ArrowException, OSError) as exc:
                    raise RunError(f"{part}: not a readable Parquet file ({_first_line(exc)})") from None
                if not t.schema.equals(expected, check_metadata=False):
                    raise RunError(f"{part}: schema differs from the tokens/ schema for K={self.k}")
                tables.append(t)
            table = pa.concat_tables(tables) if tables else expected.empty_table()
            pidx = pc.index_in(table.column("prompt_id"), value_set=pa.array(list(self.prompts), pa.string()))
            if pidx.null_count:
                bad = table.column("prompt_id")[int(np.argmax(pidx.is_null().to_numpy(zero_copy_only=False)))]
                raise RunError(f"{self.path / TOKENS_DIR}: field 'prompt_id' {bad.as_py()!r} is not in {PROMPTS}")
            key = np.lexsort(
                (table.column("pos").to_numpy(), table.column("sample").to_numpy(), pidx.to_numpy(zero_copy_only=False))
            )
            self._tokens = table.take(pa.array(key))
        return self._tokens

    def tokens_hash(self) -> str:
        """sha256 over the ordered token IDs of every sequence (identifies what a scored run scored)."""
        import hashlib

        t = self.tokens()
        h = hashlib.sha256()
        h.update(np.asarray(t.column("token_id").to_numpy(), dtype="<i4").tobytes())
        h.update(np.asarray(t.column("sample").to_numpy(), dtype="<i4").tobytes())
        return h.hexdigest()[:16]

    def sequences(self) -> dict[tuple[str, int], np.ndarray]:
        """(prompt id, sample) -> generated token IDs."""
        import pyarrow.compute as pc

        t = self.tokens()
        if t.num_rows == 0:
            return {}
        names = list(self.prompts)
        pidx = pc.index_in(t.column("prompt_id"), value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
        samples = t.column("sample").to_numpy()
        ids = t.column("token_id").to_numpy()
        code = pidx.astype(np.int64) * (int(samples.max()) + 1) + samples
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(code)) + 1, [len(code)]])
        return {(names[pidx[a]], int(samples[a])): ids[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)}
