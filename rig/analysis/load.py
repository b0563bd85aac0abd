"""Reading a run directory's tokens into flat NumPy arrays, fast: the input of every analysis.

A fast loader reads the Parquet parts column-wise with a dictionary-encoded prompt_id; rig.run.store.RunReader still
checks the manifest and the prompt hashes.

    run = load_run("runs/hf")       # RunData: flat arrays in (prompt, sample, pos) order, sequences by offsets
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rig.run.store import RunError, RunReader, token_schema

Rows = np.ndarray | None  # row indices into a run's arrays; None = all of its rows, in order


@dataclass
class RunData:
    """One run's tokens as flat arrays in (prompt order, sample, pos) order, sequences delimited by offsets."""

    reader: RunReader
    prompt_ids: list[str]  # in prompts.jsonl order
    seq_prompt: np.ndarray  # int64 [S] index into prompt_ids
    seq_sample: np.ndarray  # int64 [S]
    offsets: np.ndarray  # int64 [S + 1]
    token_id: np.ndarray  # int32 [N]
    logprob: np.ndarray  # float32 [N] nats
    topk_ids: np.ndarray  # int32 [N, K]
    topk_logprobs: np.ndarray  # float32 [N, K] nats

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def manifest(self) -> dict[str, Any]:
        return self.reader.manifest

    @property
    def k(self) -> int:
        return self.topk_ids.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


_COLUMNS = (("prompt_id", np.int32), ("sample", np.int32), ("pos", np.int32), ("token_id", np.int32))
_COLUMNS += (("logprob", np.float32), ("topk_ids", np.int32), ("topk_logprobs", np.float32))


def load_run(path: str | Path, progress: Callable[[int, int], None] | None = None) -> RunData:
    """Reads a run directory into a RunData; progress(done_parts, total_parts) is called after each part.

    Each Parquet part is decoded once (single-threaded when pyarrow is set so) and each column copied once, zero-copy
    from Arrow, into preallocated arrays; prompt_id is read dictionary-encoded and mapped to the prompt's index in
    prompts.jsonl. Rows already in (prompt, sample, pos) order, as the writer leaves them, are not sorted again.
    """
    # The read-time integrity check (rig.run.verify: parts present, footers, schema, rows, coverage, sha256) runs here,
    # before anything is decoded: a damaged run raises RunError naming the file, never yields a verdict.
    reader = RunReader(path)
    k = reader.k
    prompt_ids = list(reader.prompts)
    pindex = {p: i for i, p in enumerate(prompt_ids)}
    expected = token_schema(k)
    parts = reader.part_paths()
    files = [pq.ParquetFile(part, read_dictionary=["prompt_id"]) for part in parts]
    for part, pf in zip(parts, files, strict=True):
        schema = pf.schema_arrow
        if len(schema) != len(expected) or any(
            f.name != e.name or not _same_type(f.type, e.type) for f, e in zip(schema, expected, strict=True)
        ):
            raise RunError(f"{part}: schema differs from the tokens/ schema for K={k}")
    n = sum(pf.metadata.num_rows for pf in files)
    c = {name: np.empty((n, k) if name.startswith("topk") else n, dtype) for name, dtype in _COLUMNS}
    at = 0
    for i, (part, pf) in enumerate(zip(parts, files, strict=True)):
        try:
            t = pf.read(use_threads=False)
        except (OSError, pa.ArrowException) as exc:  # a damaged data page in a run written before checksums
            raise RunError(
                f"{part}: unreadable ({str(exc).splitlines()[0]}); `rig verify` lists every problem"
            ) from None
        m = t.num_rows
        _prompt_index(t.column("prompt_id"), pindex, c["prompt_id"][at : at + m], part)
        for name, _ in _COLUMNS[1:]:
            _copy_column(t.column(name), c[name][at : at + m], part, name)
        at += m
        if progress:
            progress(i + 1, len(files))
    return _assemble(reader, prompt_ids, c)


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    """Type equality ignoring field nullability and dictionary encoding (prompt_id is read dictionary-encoded)."""
    if pa.types.is_dictionary(got):
        got = got.value_type
    if pa.types.is_fixed_size_list(got) and pa.types.is_fixed_size_list(want):
        return got.list_size == want.list_size and got.value_type == want.value_type
    return got == want


def _prompt_index(col: pa.ChunkedArray, pindex: dict[str, int], out: np.ndarray, part: Path) -> None:
    """Writes each row's prompt index (position in prompts.jsonl) into out, through the column's dictionary."""
    at = 0
    for chunk in col.chunks:
        if chunk.null_count:
            raise RunError(f"{part}: field 'prompt_id' holds nulls")
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        names = chunk.dictionary.to_pylist()
        lookup = np.array([pindex.get(x, -1) for x in names], dtype=np.int32)
        if (lookup < 0).any():
            raise RunError(f"{part}: field 'prompt_id' {names[int(np.argmax(lookup < 0))]!r} is not in prompts.jsonl")
        if len(chunk):
            np.take(lookup, _numpy(chunk.indices), out=out[at : at + len(chunk)])
        at += len(chunk)


_NUMPY_TYPES = {pa.from_numpy_dtype(t): np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.float32)}


def _numpy(arr: pa.Array) -> np.ndarray:
    """A zero-copy NumPy view of a primitive Arrow array without nulls. (Array.to_numpy imports pandas when it is
    installed: 0.4 s on the first call in a process, a third of `rig diff`'s budget.)"""
    dtype = _NUMPY_TYPES[arr.type]
    return np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * dtype.itemsize)


def _copy_column(col: pa.ChunkedArray, out: np.ndarray, part: Path, name: str) -> None:
    """Copies an Arrow column (primitive, or fixed-size lists of width out.shape[1]) into out, one memcpy per chunk."""
    flat = out.reshape(-1)
    at = 0
    for chunk in col.chunks:
        values = chunk
        if pa.types.is_fixed_size_list(chunk.type):  # .values is free; it ignores a slice offset, flatten() does not
            values = chunk.values if chunk.offset == 0 else chunk.flatten()
            values = values.slice(0, len(chunk) * chunk.type.list_size)
        if chunk.null_count or values.null_count:
            raise RunError(f"{part}: field {name!r} holds nulls")
        arr = _numpy(values)
        flat[at : at + len(arr)] = arr
        at += len(arr)


def _assemble(reader: RunReader, prompt_ids: list[str], c: dict[str, np.ndarray]) -> RunData:
    """RunData from the loaded columns: sorted by (prompt, sample, pos) only when they are not so already."""
    pidx, sample, pos = c["prompt_id"], c["sample"], c["pos"]
    starts = _sequence_starts(pidx, sample, pos)
    if starts is None:  # parts out of order: sort once by one int64 key
        key = (pidx.astype(np.int64) * (int(sample.max()) + 1) + sample) * (int(pos.max()) + 1) + pos
        order = np.argsort(key, kind="stable")
        key = key[order]
        if (np.diff(key) == 0).any():
            raise RunError(f"{reader.path / 'tokens'}: a (prompt_id, sample, pos) row appears twice")
        for name in c:
            c[name] = c[name][order]
        pidx, sample, pos = c["prompt_id"], c["sample"], c["pos"]
        starts = _sequence_starts(pidx, sample, pos)
        if starts is None:
            raise RunError(f"{reader.path / 'tokens'}: field 'pos' is not 0, 1, 2, ... within a sequence")
    offsets = np.concatenate([[0], starts, [len(pidx)]]).astype(np.int64) if len(pidx) else np.zeros(1, np.int64)
    first, lists = offsets[:-1], (c[name] for name in ("token_id", "logprob", "topk_ids", "topk_logprobs"))
    return RunData(reader, prompt_ids, pidx[first].astype(np.int64), sample[first].astype(np.int64), offsets, *lists)


def _sequence_starts(pidx: np.ndarray, sample: np.ndarray, pos: np.ndarray) -> np.ndarray | None:
    """Row indices where a new sequence starts (after row 0), or None unless the rows are strictly ordered by
    (prompt, sample) with pos = 0, 1, 2, ... within each sequence (the order the writer leaves them in)."""
    if len(pidx) == 0:
        return np.zeros(0, np.int64)
    dp, ds = np.diff(pidx), np.diff(sample)
    new = (dp != 0) | (ds != 0)
    starts = np.flatnonzero(new) + 1
    b = starts - 1
    ordered = ((dp[b] > 0) | ((dp[b] == 0) & (ds[b] > 0))).all()
    if not (ordered and pos[0] == 0 and (pos[starts] == 0).all() and ((np.diff(pos) == 1) | new).all()):
        return None
    return starts


def take(arr: np.ndarray, rows: Rows) -> np.ndarray:
    """arr[rows], or arr itself when rows is None (all rows, in order)."""
    return arr if rows is None else arr[rows]


def sequence_rows(run: RunData, seqs: np.ndarray, counts: np.ndarray) -> Rows:
    """Row indices of the first counts[i] rows of each sequence seqs[i], in order; None when that is every row of the
    run in its own order (two runs of one suite, fully aligned: no index array and no gathered copies then)."""
    n = len(seqs)
    if n == len(run.offsets) - 1 and np.array_equal(counts, run.lengths) and np.array_equal(seqs, np.arange(n)):
        return None
    return np.repeat(run.offsets[seqs] - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
