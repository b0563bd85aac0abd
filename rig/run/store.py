"""Run directories: the writer (atomic parts, resume) and the reader (schema-checked).

A run directory is the unit users copy between an RTX box and an H100 box, so it must be self-describing and never
half-written: every file is written to a temporary name and renamed into place, the token parts are immutable once
renamed, and a killed run resumes from its last complete part. The reader refuses a directory whose schema or hashes
do not check out, with a message that names the file and the field. Layout: docs/architecture.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rig import SCHEMA_VERSION, __version__
from rig.errors import UserError
from rig.files import atomic_replace, atomic_write_json, now_iso, read_jsonl, write_jsonl
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
    it is being resumed, so recorded work is never overwritten by accident.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict[str, Any] = {}

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
        (self.path / COMPLETIONS).write_bytes(b"")
        self.write_manifest()

    def reopen(self) -> dict[str, Any]:
        """Open an existing unfinished run for resume: drop incomplete parts, return the manifest."""
        reader = RunReader(self.path, check_parts=False)
        self.manifest = reader.manifest
        if self.manifest["status"] == "complete":
            raise UserError(f"{self.path}: the run is already complete; nothing to resume")
        done = set(self._complete_parts())
        rows = [r for r in read_jsonl(self.path / COMPLETIONS, tolerate_torn_tail=True) if r.get("part") in done]
        write_jsonl(self.path / COMPLETIONS, rows)
        for part in (self.path / TOKENS_DIR).glob("part-*.parquet") if (self.path / TOKENS_DIR).exists() else []:
            if _part_index(part) not in done:
                part.unlink()
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink()
        self.manifest["status"] = "running"
        self.manifest.pop("error", None)
        self._recount(rows)
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
    def _complete_parts(self) -> list[int]:
        """Parts whose Parquet file exists and whose completions were all appended."""
        tokens = self.path / TOKENS_DIR
        on_disk = {_part_index(p) for p in tokens.glob("part-*.parquet")} if tokens.exists() else set()
        rows = (
            read_jsonl(self.path / COMPLETIONS, tolerate_torn_tail=True) if (self.path / COMPLETIONS).exists() else []
        )
        expected = self.manifest.get("parts_plan", {})
        have: dict[int, int] = {}
        for r in rows:
            have[r.get("part")] = have.get(r.get("part"), 0) + 1
        return sorted(p for p in on_disk if have.get(p, 0) == expected.get(str(p), -1))

    def complete_parts(self) -> set[int]:
        return set(self._complete_parts())

    def write_part(self, index: int, results: Sequence[Any], completions: Sequence[dict[str, Any]]) -> None:
        """Write one batch: the Parquet part (atomic rename), then its completions (appended and synced)."""
        k = int(self.manifest["spec"]["logprobs"])
        atomic_write_table(self.path / TOKENS_DIR / f"part-{index:05d}.parquet", results_to_table(results, k))
        with open(self.path / COMPLETIONS, "ab") as f:
            for c in completions:
                f.write((json.dumps({**c, "part": index}, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
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
        self.manifest.update(extra)
        self.manifest["status"] = status
        self.manifest["finished_at"] = now_iso()
        if status == "complete":
            # Completions sorted by (prompt order, sample) so a resumed run ends byte-identical to an uninterrupted one.
            order = {pid: i for i, pid in enumerate(r["id"] for r in read_jsonl(self.path / PROMPTS))}
            rows = read_jsonl(self.path / COMPLETIONS)
            rows.sort(key=lambda r: (r["part"], order.get(r["prompt_id"], 0), r["sample"]))
            write_jsonl(self.path / COMPLETIONS, rows)
        self.write_manifest()


def _part_index(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _peek_status(path: Path) -> str | None:
    try:
        return json.loads((path / MANIFEST).read_text()).get("status")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


# ---- reader --------------------------------------------------------------------------------------------------------


class RunReader:
    """A schema-checked view of a run directory. Token parts are read lazily, once."""

    def __init__(self, path: str | Path, *, check_parts: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunError(f"{self.path}: not a run directory")
        mpath = self.path / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise RunError(f"{mpath}: missing (not a run directory?)") from None
        except json.JSONDecodeError as exc:
            raise RunError(f"{mpath}: not valid JSON ({exc.msg})") from None
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
            self.prompts  # noqa: B018 - validates hashes eagerly

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
                t = pq.read_table(part)
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
