"""Token alignment of two runs: where they part ways first, how sure each was there, and the teacher-forced numbers.

`rig diff A B` and `rig report` both start here. Two runs of the same prompt token IDs are aligned sequence by
sequence ((prompt id, sample)); the first divergence, both runs' top-1 minus top-2 margins there, the near-tie or
confident class, vLLM's rule, the harmony channel and token kind at the divergence are computed for every sequence at
once over flattened NumPy arrays (no per-token Python loop). Loading is rig.analysis.load; the per-sequence table is
a rig.analysis.results.SequenceDiffs.

    a, b, s = load_run("runs/hf"), load_run("runs/vllm"), load_run("runs/vllm-on-hf")
    pair = diff_runs(a, b, tau=0.1, scored=s)
    pair.seq, pair.teacher, sequence_teacher(a, s)   # per-sequence columns, teacher-forced metrics, |delta| per seq

Definitions (exact): docs/metrics.md. Aggregates, the JSON document and the verdict: rig.analysis.summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.analysis.load import Rows, RunData, sequence_rows, take
from rig.analysis.numerics import choose_tau, gumbel_at, logit_grid, pair_mode, run_dtype
from rig.analysis.results import Divergence, SequenceDiffs
from rig.analysis.stats import mean_by_position, token_metrics
from rig.errors import UserError
from rig.harmony import ANALYSIS_TOKEN, CALL, CHANNEL, END, FINAL_TOKEN, MESSAGE, RETURN, SPECIAL_MIN, START
from rig.run.store import RunReader

TAU = 0.1  # nats; both margins below it make a near-tie flip


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
    # sequences outside the common prompts get distinct negative codes (A odd, B even), so that intersect1d's
    # assume_unique holds however many sequences are left out
    code_a = np.where(keep_a[a.seq_prompt], a.seq_prompt * width + a.seq_sample, -1 - 2 * np.arange(len(a.seq_prompt)))
    bp = b_to_a[b.seq_prompt] if len(b.seq_prompt) else np.zeros(0, np.int64)
    code_b = np.where(bp >= 0, bp * width + b.seq_sample, -2 - 2 * np.arange(len(bp)))
    _, ia, ib = np.intersect1d(code_a, code_b, assume_unique=True, return_indices=True)
    return ia, ib


# ---- harmony channels --------------------------------------------------------------------------------------------


def channel_labels(tok: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per row (every row, or only rows), the harmony channel its token belongs to: 0 other, 1 analysis, 2 final (int8).

    A token is in a channel's message when the last <|message|> before it (same sequence) comes after the last
    <|end|>, <|return|>, <|call|>, <|start|> or <|channel|> before it, and that message's header (the last <|channel|>
    before the <|message|>, after the last <|start|>) names the channel. The closing <|end|>/<|return|>/<|call|>
    belongs to the message it closes; header tokens are "other". Uses only tokens before the row, so two runs with
    the same prefix agree on the label at their first divergence. Found by binary search over the positions of the
    special tokens, so labelling a few rows costs one pass over the tokens. Pinned by test_diff.py::test_channel_labels.
    """
    n = len(tok)
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    out = np.zeros(len(rows), np.int8)
    if n == 0 or len(rows) == 0:
        return out
    seq_start = offsets[np.searchsorted(offsets, rows, side="right") - 1]

    def last(positions: np.ndarray, at: np.ndarray, side: str = "left") -> np.ndarray:  # last < at ("left"), <= at
        i = np.searchsorted(positions, at, side=side) - 1
        return np.where(i >= 0, positions[np.maximum(i, 0)], -1) if len(positions) else np.full(len(at), -1)

    msg = last(np.flatnonzero(tok == MESSAGE), rows)
    close = last(np.flatnonzero(np.isin(tok, (END, RETURN, CALL, START, CHANNEL))), rows)
    body = np.flatnonzero((msg >= seq_start) & (msg > close))
    if len(body) == 0:
        return out
    m = msg[body]
    chan = last(np.flatnonzero(tok == CHANNEL), m, "right")
    start = last(np.flatnonzero(tok == START), m, "right")
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
    seq: SequenceDiffs
    unmatched: dict[str, int]
    prefix: dict[str, Any]  # teacher-forced metrics on the common prefix (always available)
    scored: dict[str, Any] | None = None  # teacher-forced metrics from a scored run (B's stack on A's tokens)
    context: list[dict[str, str]] = field(default_factory=list)
    tau_info: dict[str, Any] = field(default_factory=dict)  # the tau used and why (docs/metrics.md)
    mode: dict[str, Any] = field(default_factory=dict)  # greedy, coupled or sampled, and why
    prefix_abs_delta: np.ndarray | None = None  # |lp_B - lp_A| (nats) at every common-prefix position
    spikes: list[dict[str, Any]] = field(default_factory=list)  # isolated large |delta| on identical prefixes

    @property
    def teacher(self) -> dict[str, Any]:
        """The teacher-forced metrics that count: the scored run's where given, else the common prefix's."""
        return self.scored if self.scored is not None else self.prefix


def diff_runs(
    a: RunData,
    b: RunData,
    *,
    tau: float | None = None,
    force: bool = False,
    scored: RunData | None = None,
    n_context: int = 8,
    decode_context: bool = True,
    prefix_metrics: str = "auto",
    floor: PairDiff | None = None,
) -> PairDiff:
    """Aligns B to A and computes the per-sequence divergence columns and the teacher-forced metrics (nats).

    tau None derives the near-tie threshold from the runs' logit grids and, with a floor pair, from the floor's own
    |delta| (rig.analysis.numerics.choose_tau); a number overrides. Splits of coupled runs are judged by the
    perturbed margin, splits of runs sampled without shared noise are class SAMPLED.

    prefix_metrics: "full" (delta statistics, top-1 agreement and KL on the common prefix), "delta" (delta statistics
    only), "none", or "auto" (full without a scored run, delta with one, since the scored run's numbers count then).
    """
    common, dropped = check_prompts(a.reader, b.reader, force=force)
    ia, ib = _match_sequences(a, b, common)
    sa, sb = a.offsets[ia], b.offsets[ib]
    la, lb = a.lengths[ia], b.lengths[ib]
    m = np.minimum(la, lb)
    # first divergence: the first differing token over the common length, else the shorter length (prefix rule)
    neq = np.flatnonzero(take(a.token_id, sequence_rows(a, ia, m)) != take(b.token_id, sequence_rows(b, ib, m)))
    d = np.where(la == lb, -1, m).astype(np.int64)
    if len(neq):
        seg = np.searchsorted(np.cumsum(m), neq, side="right")
        first = np.flatnonzero(np.diff(seg, prepend=-1))
        d[seg[first]] = neq[first] - (np.cumsum(m) - m)[seg[first]]
    div = d >= 0
    ra = np.where(div & (d < la), sa + d, -1)
    rb = np.where(div & (d < lb), sb + d, -1)
    tok_a = np.where(ra >= 0, a.token_id[np.maximum(ra, 0)] if len(a.token_id) else -1, -1)
    tok_b = np.where(rb >= 0, b.token_id[np.maximum(rb, 0)] if len(b.token_id) else -1, -1)
    grids = [logit_grid(r.topk_logprobs, run_dtype(r.manifest)) for r in (a, b)]
    floor_abs = floor.prefix_abs_delta if floor is not None else None
    tau_info = choose_tau(grids, floor_abs)
    if tau is not None:
        tau_info.update(tau=float(tau), why="given (--tau)")
    tau_info["grids"] = {"a": grids[0], "b": grids[1]}
    tau = tau_info["tau"]
    mode = pair_mode(a.manifest, b.manifest)
    prefix_case = div & ((ra < 0) | (rb < 0))
    both = div & ~prefix_case
    if mode["mode"] == "coupled":
        margin_a, margin_b = _perturbed_margins(a, b, ia, ra, rb, tok_a, tok_b, both, d, mode)
    else:
        margin_a, margin_b = _margin(a, ra), _margin(b, rb)
    cls = np.full(len(d), Divergence.IDENTICAL, np.int8)
    near = both & (margin_a < tau) & (margin_b < tau)
    cls[near] = Divergence.NEAR_TIE
    cls[both & ~near] = Divergence.CONFIDENT
    cls[prefix_case] = Divergence.PREFIX
    cls[both & (np.isnan(margin_a) | np.isnan(margin_b))] = Divergence.UNCLASSIFIED
    if mode["mode"] == "sampled":
        cls[both] = Divergence.SAMPLED
    vllm = np.ones(len(d), bool)
    if both.any():
        vllm[both] = _in_topk(b.topk_ids, rb[both], tok_a[both]) & _in_topk(a.topk_ids, ra[both], tok_b[both])
    # channel at d: A's row, or B's where A has none (prefix case); only the divergent rows are labelled
    chan = np.full(len(d), -1, np.int8)
    on_a, on_b = np.flatnonzero(ra >= 0), np.flatnonzero((ra < 0) & (rb >= 0))
    chan[on_a] = channel_labels(a.token_id, a.offsets, ra[on_a])
    chan[on_b] = channel_labels(b.token_id, b.offsets, rb[on_b])
    special = (tok_a >= SPECIAL_MIN) | (tok_b >= SPECIAL_MIN)
    prompts = a.reader.prompts
    names = [prompts[p].get("category") or "none" for p in a.prompt_ids]
    categories = np.array(names, dtype=object)[a.seq_prompt[ia]].astype(str) if len(ia) else np.array([], str)
    seq = SequenceDiffs(
        ia=ia,
        ib=ib,
        prompt=a.seq_prompt[ia],
        sample=a.seq_sample[ia],
        len_a=la,
        len_b=lb,
        d=d,
        token_a=tok_a,
        token_b=tok_b,
        margin_a=margin_a,
        margin_b=margin_b,
        cls=cls,
        vllm_rule=vllm,
        channel=chan,
        special=special,
        category=categories,
    )
    # teacher-forced on the common prefix: positions before d (all positions of identical sequences)
    metrics_mode = ("delta" if scored is not None else "full") if prefix_metrics == "auto" else prefix_metrics
    prefix: dict[str, Any] = {"source": "prefix", "n_positions": None}
    n_pre = np.where(div, d, la)
    rows_a, rows_b = sequence_rows(a, ia, n_pre), sequence_rows(b, ib, n_pre)
    abs_delta = np.abs(take(b.logprob, rows_b).astype(np.float64) - take(a.logprob, rows_a))
    seq.mean_abs_delta = _per_sequence_mean(abs_delta, n_pre)
    if metrics_mode != "none":
        prefix = _teacher(a, b, rows_a, rows_b, n_pre, source="prefix", lists=metrics_mode == "full")
    unmatched = {"a": len(a.offsets) - 1 - len(ia), "b": len(b.offsets) - 1 - len(ib)}
    pair = PairDiff(a, b, tau, common, dropped, seq, unmatched, prefix, tau_info=tau_info, mode=mode)
    pair.prefix_abs_delta = abs_delta
    pair.spikes = find_spikes(a, b, seq, rows_a, rows_b, abs_delta, n_pre, tau, floor_abs)
    if scored is not None:
        pair.scored = teacher_from_scored(a, scored, common)
    if decode_context:
        pair.context = _contexts(a, b, seq, n_context)
    return pair


def _lookup(run: RunData, rows: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logprob of tokens[i] at rows[i] from the run's top-K, whether it was in the top-K); absent tokens get the
    K-th logprob, an upper bound of theirs."""
    ids, lps = run.topk_ids[rows], run.topk_logprobs[rows].astype(np.float64)
    hit = ids == tokens[:, None]
    found = hit.any(axis=1)
    value = np.where(found, np.where(hit, lps, -np.inf).max(axis=1), lps[:, -1] if lps.shape[1] else np.nan)
    return value, found


def _perturbed_margins(
    a: RunData,
    b: RunData,
    ia: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    tok_a: np.ndarray,
    tok_b: np.ndarray,
    both: np.ndarray,
    d: np.ndarray,
    mode: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Deciding margins at coupled splits, nats: lp(own) - lp(other) + T (g(own) - g(other)), the gap in the score
    argmax(logprob + T g) that chose each run's token (g the shared Gumbel noise of that position, regenerated here).

    A sampled token is often outside the other run's top-K, so a run's logprob of the other run's token is then taken
    from the other run, which recorded it (on an identical prefix the two differ by the drift, hundredths of a nat,
    against margins of nats); such a margin is an estimate, and its absolute value is used.
    """
    out_a, out_b = np.full(len(d), np.nan), np.full(len(d), np.nan)
    idx = np.flatnonzero(both)
    if len(idx) == 0 or min(a.k, b.k) == 0:
        return out_a, out_b
    t = float(mode["temperature"])
    own_a, own_b = a.logprob[ra[idx]].astype(np.float64), b.logprob[rb[idx]].astype(np.float64)
    a_of_b, a_has_b = _lookup(a, ra[idx], tok_b[idx])
    b_of_a, b_has_a = _lookup(b, rb[idx], tok_a[idx])
    a_of_b = np.where(a_has_b, a_of_b, own_b)  # A's logprob of B's token, else B's own
    b_of_a = np.where(b_has_a, b_of_a, own_a)
    for j, i in enumerate(idx.tolist()):
        s = int(ia[i])
        pid, smp = a.prompt_ids[int(a.seq_prompt[s])], int(a.seq_sample[s])
        g = gumbel_at(mode["seed"], pid, smp, int(d[i]), [int(tok_a[i]), int(tok_b[i])], mode["noise"])
        m_a = own_a[j] - a_of_b[j] + t * (g[0] - g[1])
        m_b = own_b[j] - b_of_a[j] + t * (g[1] - g[0])
        out_a[i] = m_a if a_has_b[j] else abs(m_a)
        out_b[i] = m_b if b_has_a[j] else abs(m_b)
    return out_a, out_b


def _per_sequence_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of consecutive runs of counts[i] values (NaN for an empty run)."""
    means = np.full(len(counts), np.nan)
    nonempty = np.flatnonzero(counts)
    if len(nonempty):
        means[nonempty] = np.add.reduceat(values, (np.cumsum(counts) - counts)[nonempty]) / counts[nonempty]
    return means


SPIKE_LEVEL_FACTOR = 10.0  # a spike stands this many times above its sequence's median |delta| (and the floor's p99)
SPIKE_TAU_FACTOR = 4.0  # ... and at least this many near-tie thresholds
MAX_SPIKES = 50


def find_spikes(
    a: RunData,
    b: RunData,
    seq: SequenceDiffs,
    rows_a: Rows,
    rows_b: Rows,
    abs_delta: np.ndarray,
    counts: np.ndarray,
    tau: float,
    floor_abs: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Positions on an identical prefix whose |delta| stands far above the sequence's own level and the floor: the
    entry points for per-layer localization (largest first, at most MAX_SPIKES). docs/metrics.md, "Spikes"."""
    if len(abs_delta) == 0:
        return []
    starts = np.cumsum(counts) - counts
    seq_of_row = np.repeat(np.arange(len(counts)), counts)
    med = np.zeros(len(counts))
    for i in np.flatnonzero(counts):
        med[i] = np.median(abs_delta[starts[i] : starts[i] + counts[i]])
    floor_p99 = float(np.percentile(floor_abs, 99)) if floor_abs is not None and len(floor_abs) else 0.0
    level = np.maximum(med[seq_of_row], floor_p99)
    hit = np.flatnonzero((abs_delta > SPIKE_LEVEL_FACTOR * level) & (abs_delta > SPIKE_TAU_FACTOR * tau))
    hit = hit[np.argsort(-abs_delta[hit], kind="stable")][:MAX_SPIKES]
    ra = np.arange(len(abs_delta)) if rows_a is None else rows_a
    rb = np.arange(len(abs_delta)) if rows_b is None else rows_b
    out = []
    for r in hit.tolist():
        i = int(seq_of_row[r])
        ka, kb = int(ra[r]), int(rb[r])
        out.append(
            {
                "prompt_id": a.prompt_ids[int(seq.prompt[i])],
                "sample": int(seq.sample[i]),
                "pos": int(r - starts[i]),
                "token": int(a.token_id[ka]),
                "logprob_a": float(a.logprob[ka]),
                "logprob_b": float(b.logprob[kb]),
                "abs_delta": float(abs_delta[r]),
                "sequence_median_abs_delta": float(med[i]),
                "topk_a": {"ids": a.topk_ids[ka, :5].tolist(), "logprobs": a.topk_logprobs[ka, :5].tolist()},
                "topk_b": {"ids": b.topk_ids[kb, :5].tolist(), "logprobs": b.topk_logprobs[kb, :5].tolist()},
            }
        )
    return out


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


def _teacher(a: RunData, b: RunData, rows_a: Rows, rows_b: Rows, counts: np.ndarray, source: str, lists=True) -> dict:
    """token_metrics over aligned rows (None: all rows; lists=False: delta statistics only) plus mean |delta| by
    position; the rows are the first counts[i] of each compared sequence. The top-K lists are gathered chunk by chunk
    inside rig.analysis.stats, never copied whole."""
    lp_a, lp_b = take(a.logprob, rows_a), take(b.logprob, rows_b)
    if lists and min(a.k, b.k):  # lists of different K are compared over their common top-k (the rest joins the tail)
        lists_ab = (a.topk_ids, a.topk_logprobs, b.topk_ids, b.topk_logprobs)
        metrics = token_metrics(lp_a, lp_b, *lists_ab, rows_a=rows_a, rows_b=rows_b)
    else:
        metrics = token_metrics(lp_a, lp_b)
    pos = np.arange(len(lp_a)) - np.repeat(np.cumsum(counts) - counts, counts)
    p, mad = mean_by_position(pos, np.abs(lp_b.astype(np.float64) - lp_a))
    metrics["source"] = source
    metrics["by_position"] = {"pos": p.tolist(), "mean_abs_delta": [round(x, 8) for x in mad.tolist()]}
    return metrics


def _scored_rows(a: RunData, s: RunData, common: list[str] | None = None) -> tuple[np.ndarray, Rows, Rows]:
    """(A's sequences that S scored, their rows in A, the same rows in S; None = all rows in order).

    Refuses (UserError) an S that is not a scored run, or whose tokens are not A's, naming the first differing sequence.
    """
    if s.manifest.get("kind") != "score":
        raise UserError(f"{s.path}: not a scored run (manifest 'kind' is {s.manifest.get('kind')!r}, not 'score')")
    common_s, _ = check_prompts(a.reader, s.reader, force=True)
    in_s = set(common_s)
    common = [p for p in (common or common_s) if p in in_s]
    ia, i_s = _match_sequences(a, s, common)
    la = a.lengths[ia]
    rows_a, rows_s = sequence_rows(a, ia, la), None
    bad = np.flatnonzero(la != s.lengths[i_s])
    if len(bad) == 0:
        rows_s = sequence_rows(s, i_s, la)
        mism = np.flatnonzero(take(a.token_id, rows_a) != take(s.token_id, rows_s))
        if len(mism):
            bad = np.searchsorted(np.cumsum(la), mism[:1], side="right")
    if len(bad):
        j = ia[int(bad[0])]
        which = f"prompt {a.prompt_ids[a.seq_prompt[j]]!r}, sample {int(a.seq_sample[j])}"
        raise UserError(f"{s.path}: did not score {a.path}'s tokens ({which} differs)")
    return ia, rows_a, rows_s


def teacher_from_scored(a: RunData, s: RunData, common: list[str] | None = None) -> dict[str, Any]:
    """Teacher-forced metrics of A against S, a run that scored A's tokens under another stack (nats).

    Refuses (UserError) a scored run whose tokens are not A's tokens, naming the first differing sequence.
    """
    ia, rows_a, rows_s = _scored_rows(a, s, common)
    out = _teacher(a, s, rows_a, rows_s, a.lengths[ia], source="scored")
    out["run"] = str(s.path)
    out["sequences"] = int(len(ia))
    return out


def sequence_teacher(a: RunData, s: RunData) -> dict[tuple[str, int], float]:
    """Per (prompt id, sample) of A that S scored: the teacher-forced mean |lp_S(a_i) - lp_A(a_i)| over that
    sequence's tokens, in nats (NaN for a sequence of no tokens). S is a run of kind "score" of A's tokens; refuses
    (UserError) any other run exactly as teacher_from_scored does."""
    ia, rows_a, rows_s = _scored_rows(a, s)
    counts = a.lengths[ia]
    absdelta = np.abs(take(s.logprob, rows_s).astype(np.float64) - take(a.logprob, rows_a))
    means = np.full(len(ia), np.nan)
    nonempty = np.flatnonzero(counts)
    if len(nonempty):  # reduceat over the starts of non-empty sequences: each sum runs to the next start
        means[nonempty] = np.add.reduceat(absdelta, (np.cumsum(counts) - counts)[nonempty]) / counts[nonempty]
    keys = zip(a.seq_prompt[ia].tolist(), a.seq_sample[ia].tolist(), strict=True)
    return {(a.prompt_ids[p], smp): float(x) for (p, smp), x in zip(keys, means.tolist(), strict=True)}


def _contexts(a: RunData, b: RunData, seq: SequenceDiffs, n: int) -> list[dict[str, str]]:
    """Decoded text around each divergence: n tokens before d, and each run's n tokens from d on."""
    from rig.harmony import decode

    div = np.flatnonzero(seq.d >= 0)
    sa, sb = a.offsets[seq.ia[div]].tolist(), b.offsets[seq.ib[div]].tolist()
    cols = zip(seq.d[div].tolist(), sa, sb, seq.len_a[div].tolist(), seq.len_b[div].tolist(), strict=True)
    return [
        {
            "before": decode(a.token_id[s_a + max(0, d - n) : s_a + d]),
            "a": decode(a.token_id[s_a + d : s_a + min(l_a, d + n)]),
            "b": decode(b.token_id[s_b + d : s_b + min(l_b, d + n)]),
        }
        for d, s_a, s_b, l_a, l_b in cols
    ]
