"""Token alignment of two runs: where they part ways first, how sure each was there, and the teacher-forced numbers.

`rig diff A B` and `rig report` both start here. Two runs of the same prompt token IDs are aligned sequence by
sequence ((prompt id, sample)); the first divergence, both runs' top-1 minus top-2 margins there, the near-tie or
confident class, vLLM's rule, the harmony channel and token kind at the divergence are computed for every sequence at
once over flattened NumPy arrays (no per-token Python loop). A fast loader reads the Parquet parts column-wise with
a dictionary-encoded prompt_id; rig.runs.RunReader still checks the manifest and the prompt hashes.

    a, b = load_run("runs/hf"), load_run("runs/vllm")
    pair = diff_runs(a, b, tau=0.1, scored=load_run("runs/vllm-on-hf"))
    pair.summary, pair.teacher, pair.rows()

Definitions (exact): docs/metrics.md. Aggregates, the JSON document and the verdict: rig.report.summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rig.errors import UserError
from rig.runs import RunError, RunReader, token_schema
from rig.stats import mean_by_position, token_metrics

TAU = 0.1  # nats; both margins below it make a near-tie flip
SPECIAL_MIN = 199998  # harmony's special tokens have IDs >= this
CHANNEL, START, END, MESSAGE, RETURN, CALL = 200005, 200006, 200007, 200008, 200002, 200012
ANALYSIS_TOKEN, FINAL_TOKEN = 35644, 17196  # the o200k_harmony tokens "analysis" and "final" (pinned by a test)
CHANNELS = ("other", "analysis", "final")
CLASSES = ("identical", "near_tie", "confident", "prefix", "unclassified")


# ---- loading -------------------------------------------------------------------------------------------------------


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


def load_run(path: str | Path, progress: Callable[[int, int], None] | None = None) -> RunData:
    """Reads a run directory into a RunData; progress(done_parts, total_parts) is called after each part.

    Each Parquet part is decoded once (single-threaded when pyarrow is set so) and copied once into preallocated
    arrays; prompt_id is read dictionary-encoded and mapped to the prompt's index in prompts.jsonl.
    """
    reader = RunReader(path)
    k = reader.k
    prompt_ids = list(reader.prompts)
    pindex = {p: i for i, p in enumerate(prompt_ids)}
    expected = token_schema(k)
    files = [pq.ParquetFile(part, read_dictionary=["prompt_id"]) for part in reader.part_paths()]
    for part, pf in zip(reader.part_paths(), files, strict=True):
        schema = pf.schema_arrow
        if len(schema) != len(expected) or any(
            f.name != e.name or not _same_type(f.type, e.type) for f, e in zip(schema, expected, strict=True)
        ):
            raise RunError(f"{part}: schema differs from the tokens/ schema for K={k}")
    n = sum(pf.metadata.num_rows for pf in files)
    c = {
        "pidx": np.empty(n, np.int64),
        "sample": np.empty(n, np.int32),
        "pos": np.empty(n, np.int32),
        "token_id": np.empty(n, np.int32),
        "logprob": np.empty(n, np.float32),
        "ids": np.empty((n, k), np.int32),
        "lps": np.empty((n, k), np.float32),
    }
    at = 0
    for i, (part, pf) in enumerate(zip(reader.part_paths(), files, strict=True)):
        t = pf.read(use_threads=False)
        m = len(t)
        for chunk in t.column("prompt_id").chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            names = chunk.dictionary.to_pylist()
            lookup = np.array([pindex.get(x, -1) for x in names], dtype=np.int64)
            if (lookup < 0).any():
                bad = names[int(np.argmax(lookup < 0))]
                raise RunError(f"{part}: field 'prompt_id' {bad!r} is not in prompts.jsonl")
            c["pidx"][at : at + len(chunk)] = lookup[chunk.indices.to_numpy(zero_copy_only=False)] if len(names) else 0
            at += len(chunk)
        start = at - m
        for name in ("sample", "pos", "token_id", "logprob"):
            _copy_column(t.column(name), c[name], start)
        _copy_column(t.column("topk_ids"), c["ids"], start, k)
        _copy_column(t.column("topk_logprobs"), c["lps"], start, k)
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


def _copy_column(col: pa.ChunkedArray, out: np.ndarray, start: int, k: int | None = None) -> None:
    """Copies an Arrow column (primitive, or fixed-size lists of width k) into out[start:...]."""
    for chunk in col.chunks:
        m = len(chunk)
        values = chunk.flatten() if k is not None else chunk
        arr = values.to_numpy(zero_copy_only=False)
        out[start : start + m] = arr.reshape(m, k) if k is not None else arr
        start += m


def _assemble(reader: RunReader, prompt_ids: list[str], c: dict[str, np.ndarray]) -> RunData:
    pidx, sample, pos = (c[k].astype(np.int64, copy=False) for k in ("pidx", "sample", "pos"))
    n = len(pidx)
    n_samples = int(sample.max()) + 1 if n else 1
    width = int(pos.max()) + 1 if n else 1
    code = pidx * n_samples + sample
    key = code * width + pos
    if n > 1 and not (np.diff(key) > 0).all():
        order = np.argsort(key, kind="stable")
        key, code, pos = key[order], code[order], pos[order]
        for name in ("token_id", "logprob", "ids", "lps"):
            c[name] = c[name][order]
        if (np.diff(key) == 0).any():
            raise RunError(f"{reader.path / 'tokens'}: a (prompt_id, sample, pos) row appears twice")
    starts = np.flatnonzero(np.diff(code)) + 1 if n else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], starts, [n]]).astype(np.int64) if n else np.zeros(1, np.int64)
    local = np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets))
    if n and not np.array_equal(local, pos):
        raise RunError(f"{reader.path / 'tokens'}: field 'pos' is not 0, 1, 2, ... within a sequence")
    seq_code = code[offsets[:-1]]
    return RunData(
        reader=reader,
        prompt_ids=prompt_ids,
        seq_prompt=seq_code // n_samples,
        seq_sample=seq_code % n_samples,
        offsets=offsets,
        token_id=c["token_id"].astype(np.int32, copy=False),
        logprob=c["logprob"].astype(np.float32, copy=False),
        topk_ids=c["ids"].astype(np.int32, copy=False),
        topk_logprobs=c["lps"].astype(np.float32, copy=False),
    )


# ---- comparability ------------------------------------------------------------------------------------------------


def check_prompts(a: RunReader, b: RunReader, *, force: bool = False) -> tuple[list[str], list[str]]:
    """(prompt ids both runs hold with identical token hashes, in A's order; ids dropped).

    Raises UserError naming the first differing prompt unless force.
    """
    pa_, pb_ = a.prompts, b.prompts
    common, dropped = [], []
    for pid, rec in pa_.items():
        other = pb_.get(pid)
        (common if other is not None and other["sha256"] == rec["sha256"] else dropped).append(pid)
    dropped += [pid for pid in pb_ if pid not in pa_]
    if dropped and not force:
        pid = dropped[0]
        if pid not in pb_:
            why = f"is missing from {b.path}"
        elif pid not in pa_:
            why = f"is missing from {a.path}"
        else:
            why = f"has different token IDs (sha256 {pa_[pid]['sha256'][:12]} vs {pb_[pid]['sha256'][:12]})"
        hint = f"--force compares the {len(common)} identical prompt(s)" if common else "no prompt is identical"
        raise UserError(f"runs are not comparable: prompt {pid!r} {why} ({len(dropped)} prompt(s) differ); {hint}")
    if not common:
        raise UserError(f"runs are not comparable: {a.path} and {b.path} share no prompt with identical token IDs")
    return common, dropped


def _match_sequences(a: RunData, b: RunData, common: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of the sequences both runs hold for the common prompts, in A's (prompt, sample) order."""
    a_index = {p: i for i, p in enumerate(a.prompt_ids)}
    keep_a = np.zeros(len(a.prompt_ids), bool)
    keep_a[[a_index[p] for p in common]] = True
    b_to_a = np.array([a_index.get(p, -1) for p in b.prompt_ids], dtype=np.int64)
    b_to_a[~np.isin(b_to_a, np.flatnonzero(keep_a))] = -1
    width = int(max(a.seq_sample.max(initial=0), b.seq_sample.max(initial=0))) + 1
    code_a = np.where(keep_a[a.seq_prompt], a.seq_prompt * width + a.seq_sample, -1)
    bp = b_to_a[b.seq_prompt] if len(b.seq_prompt) else np.zeros(0, np.int64)
    code_b = np.where(bp >= 0, bp * width + b.seq_sample, -2)
    _, ia, ib = np.intersect1d(code_a, code_b, assume_unique=True, return_indices=True)
    return ia, ib


def _gather(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """arr[idx], without the copy when idx is the identity permutation (the common case for aligned runs)."""
    if len(idx) == len(arr) and (
        len(idx) == 0 or (idx[0] == 0 and idx[-1] == len(arr) - 1 and (np.diff(idx) > 0).all())
    ):
        return arr
    return arr[idx]


def _segments(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, position within segment) for segments [starts[i], starts[i] + counts[i])."""
    total = int(counts.sum())
    seg_begin = np.cumsum(counts) - counts
    local = np.arange(total) - np.repeat(seg_begin, counts)
    return np.repeat(starts, counts) + local, local


# ---- harmony channels --------------------------------------------------------------------------------------------


def channel_labels(tok: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row, the harmony channel its token belongs to: 0 other, 1 analysis, 2 final (int8).

    A token is in a channel's message when the last <|message|> before it (same sequence) comes after the last
    <|end|>, <|return|>, <|call|>, <|start|> or <|channel|> before it, and that message's header (the last <|channel|>
    before the <|message|>, after the last <|start|>) names the channel. The closing <|end|>/<|return|>/<|call|>
    belongs to the message it closes; header tokens are "other". Uses only tokens before the row, so two runs with
    the same prefix agree on the label at their first divergence. Pinned by tests/test_diff.py::test_channel_labels.
    """
    n = len(tok)
    out = np.zeros(n, np.int8)
    if n == 0:
        return out
    idx = np.arange(n)
    seq_start = np.repeat(offsets[:-1], np.diff(offsets))

    def last_before(mask: np.ndarray) -> np.ndarray:
        acc = np.maximum.accumulate(np.where(mask, idx, -1))
        return np.concatenate([[-1], acc[:-1]])

    msg = last_before(tok == MESSAGE)
    close = last_before(np.isin(tok, (END, RETURN, CALL, START, CHANNEL)))
    body = np.flatnonzero((msg >= seq_start) & (msg > close))
    if len(body) == 0:
        return out
    m = msg[body]
    chan = np.maximum.accumulate(np.where(tok == CHANNEL, idx, -1))[m]
    start = np.maximum.accumulate(np.where(tok == START, idx, -1))[m]
    ok = (chan >= seq_start[body]) & (chan > start)
    names = np.where(ok, tok[np.minimum(np.maximum(chan, 0) + 1, n - 1)], -1)
    out[body] = np.where(names == ANALYSIS_TOKEN, 1, np.where(names == FINAL_TOKEN, 2, 0))
    return out


# ---- the pair diff -----------------------------------------------------------------------------------------------


@dataclass
class PairDiff:
    """Everything `rig diff` says about one pair of runs. seq holds per-sequence columns (NumPy arrays)."""

    a: RunData
    b: RunData
    tau: float
    common: list[str]
    dropped: list[str]
    seq: dict[str, np.ndarray]
    unmatched: dict[str, int]
    prefix: dict[str, Any]  # teacher-forced metrics on the common prefix (always available)
    scored: dict[str, Any] | None = None  # teacher-forced metrics from a scored run (B's stack on A's tokens)
    context: list[dict[str, str]] = field(default_factory=list)

    @property
    def teacher(self) -> dict[str, Any]:
        """The teacher-forced metrics that count: the scored run's where given, else the common prefix's."""
        return self.scored if self.scored is not None else self.prefix


def diff_runs(
    a: RunData,
    b: RunData,
    *,
    tau: float = TAU,
    force: bool = False,
    scored: RunData | None = None,
    n_context: int = 8,
    decode_context: bool = True,
    prefix_metrics: str = "auto",
) -> PairDiff:
    """Aligns B to A and computes the per-sequence divergence columns and the teacher-forced metrics (nats).

    prefix_metrics: "full" (delta statistics, top-1 agreement and KL on the common prefix), "delta" (delta statistics
    only), "none", or "auto" (full without a scored run, delta with one, since the scored run's numbers count then).
    """
    common, dropped = check_prompts(a.reader, b.reader, force=force)
    ia, ib = _match_sequences(a, b, common)
    sa, sb = a.offsets[ia], b.offsets[ib]
    la, lb = a.lengths[ia], b.lengths[ib]
    m = np.minimum(la, lb)
    rows_a, local = _segments(sa, m)
    rows_b, _ = _segments(sb, m)
    seg = np.repeat(np.arange(len(ia)), m)
    neq = np.flatnonzero(_gather(a.token_id, rows_a) != _gather(b.token_id, rows_b))
    d = np.where(la == lb, -1, m).astype(np.int64)
    first_seg, first = np.unique(seg[neq], return_index=True)
    d[first_seg] = local[neq[first]]
    div = d >= 0
    ra = np.where(div & (d < la), sa + d, -1)
    rb = np.where(div & (d < lb), sb + d, -1)
    tok_a = np.where(ra >= 0, a.token_id[np.maximum(ra, 0)] if len(a.token_id) else -1, -1)
    tok_b = np.where(rb >= 0, b.token_id[np.maximum(rb, 0)] if len(b.token_id) else -1, -1)
    margin_a, margin_b = _margin(a, ra), _margin(b, rb)
    prefix_case = div & ((ra < 0) | (rb < 0))
    both = div & ~prefix_case
    cls = np.zeros(len(d), np.int8)
    near = both & (margin_a < tau) & (margin_b < tau)
    cls[near] = 1
    cls[both & ~near] = 2
    cls[prefix_case] = 3
    cls[both & (np.isnan(margin_a) | np.isnan(margin_b))] = 4
    vllm = np.ones(len(d), bool)
    if both.any():
        vllm[both] = _in_topk(b.topk_ids, rb[both], tok_a[both]) & _in_topk(a.topk_ids, ra[both], tok_b[both])
    chan_a = channel_labels(a.token_id, a.offsets)
    chan = np.where(ra >= 0, chan_a[np.maximum(ra, 0)] if len(chan_a) else 0, 0)
    if prefix_case.any():
        chan_b = channel_labels(b.token_id, b.offsets)
        chan = np.where(ra < 0, np.where(rb >= 0, chan_b[np.maximum(rb, 0)] if len(chan_b) else 0, 0), chan)
    special = (tok_a >= SPECIAL_MIN) | (tok_b >= SPECIAL_MIN)
    categories = np.array([a.reader.prompts[a.prompt_ids[p]].get("category") or "none" for p in a.seq_prompt[ia]])
    seq = {
        "ia": ia,
        "ib": ib,
        "prompt": a.seq_prompt[ia],
        "sample": a.seq_sample[ia],
        "len_a": la,
        "len_b": lb,
        "d": d,
        "token_a": tok_a,
        "token_b": tok_b,
        "margin_a": margin_a,
        "margin_b": margin_b,
        "cls": cls,
        "vllm_rule": vllm,
        "channel": np.where(div, chan, -1),
        "special": special,
        "category": categories,
    }
    # teacher-forced on the common prefix: positions before d (all positions of identical sequences)
    mode = ("delta" if scored is not None else "full") if prefix_metrics == "auto" else prefix_metrics
    prefix: dict[str, Any] = {"source": "prefix", "n_positions": None}
    if mode != "none":
        n_pre = np.where(div, d, la)
        pre_a, pre_pos = _segments(sa, n_pre)
        pre_b, _ = _segments(sb, n_pre)
        prefix = _teacher(a, b, pre_a, pre_b, pre_pos, source="prefix", lists=mode == "full")
    pair = PairDiff(
        a=a,
        b=b,
        tau=tau,
        common=common,
        dropped=dropped,
        seq=seq,
        prefix=prefix,
        unmatched={"a": len(a.offsets) - 1 - len(ia), "b": len(b.offsets) - 1 - len(ib)},
    )
    if scored is not None:
        pair.scored = teacher_from_scored(a, scored, common)
    if decode_context:
        pair.context = _contexts(a, b, seq, n_context)
    return pair


def _margin(run: RunData, rows: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 log-probability (nats) at rows; NaN where the row is absent or K < 2."""
    out = np.full(len(rows), np.nan)
    ok = rows >= 0
    if run.k >= 2 and ok.any():
        lp = run.topk_logprobs[rows[ok]]
        out[ok] = lp[:, 0].astype(np.float64) - lp[:, 1]
    return out


def _in_topk(topk_ids: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    if topk_ids.shape[1] == 0:
        return np.zeros(len(rows), bool)
    return (topk_ids[rows] == tokens[:, None]).any(axis=1)


def _teacher(
    a: RunData, b: RunData, rows_a: np.ndarray, rows_b: np.ndarray, pos: np.ndarray, source: str, lists: bool = True
) -> dict[str, Any]:
    """token_metrics over aligned rows (lists=False: delta statistics only) plus mean |delta| by position."""
    lp_a, lp_b = _gather(a.logprob, rows_a), _gather(b.logprob, rows_b)
    k = min(a.k, b.k)  # lists of different K are compared over their common top-k (the rest joins the tail)
    if lists and k:
        ta, tb = (_gather(x if a.k == k else x[:, :k], rows_a) for x in (a.topk_ids, a.topk_logprobs))
        ua, ub = (_gather(x if b.k == k else x[:, :k], rows_b) for x in (b.topk_ids, b.topk_logprobs))
        metrics = token_metrics(lp_a, lp_b, ta, tb, ua, ub)
    else:
        metrics = token_metrics(lp_a, lp_b)
    p, mad = mean_by_position(pos, np.abs(lp_b.astype(np.float64) - lp_a))
    metrics["source"] = source
    metrics["by_position"] = {"pos": p.tolist(), "mean_abs_delta": [round(float(x), 8) for x in mad]}
    return metrics


def teacher_from_scored(a: RunData, s: RunData, common: list[str] | None = None) -> dict[str, Any]:
    """Teacher-forced metrics of A against S, a run that scored A's tokens under another stack (nats).

    Refuses (UserError) a scored run whose tokens are not A's tokens, naming the first differing sequence.
    """
    if s.manifest.get("kind") != "score":
        raise UserError(f"{s.path}: not a scored run (manifest 'kind' is {s.manifest.get('kind')!r}, not 'score')")
    common_s, _ = check_prompts(a.reader, s.reader, force=True)
    in_s = set(common_s)
    common = [p for p in (common or common_s) if p in in_s]
    ia, i_s = _match_sequences(a, s, common)
    la, ls = a.lengths[ia], s.lengths[i_s]
    rows_a, pos = _segments(a.offsets[ia], la)
    bad = np.flatnonzero(la != ls)
    if len(bad) == 0:
        rows_s, _ = _segments(s.offsets[i_s], ls)
        mism = np.flatnonzero(_gather(a.token_id, rows_a) != _gather(s.token_id, rows_s))
        if len(mism):
            bad = np.searchsorted(np.cumsum(la), mism[:1], side="right")
    if len(bad):
        j = int(bad[0])
        raise UserError(
            f"{s.path}: did not score {a.path}'s tokens (prompt {a.prompt_ids[a.seq_prompt[ia[j]]]!r}, sample "
            f"{int(a.seq_sample[ia[j]])} differs)"
        )
    out = _teacher(a, s, rows_a, rows_s, pos, source="scored")
    out["run"] = str(s.path)
    out["sequences"] = int(len(ia))
    return out


def _contexts(a: RunData, b: RunData, seq: dict[str, np.ndarray], n: int) -> list[dict[str, str]]:
    """Decoded text around each divergence: n tokens before d, and each run's n tokens from d on."""
    from rig.suite import decode

    out = []
    for i in np.flatnonzero(seq["d"] >= 0):
        d = int(seq["d"][i])
        sa, sb = a.offsets[seq["ia"][i]], b.offsets[seq["ib"][i]]
        la, lb = int(seq["len_a"][i]), int(seq["len_b"][i])
        out.append(
            {
                "before": decode(a.token_id[sa + max(0, d - n) : sa + d]),
                "a": decode(a.token_id[sa + d : sa + min(la, d + n)]),
                "b": decode(b.token_id[sb + d : sb + min(lb, d + n)]),
            }
        )
    return out
