"""Numbers over aligned token rows and paired samples: teacher-forced metrics, paired tests and the noise floor.

`rig diff` aligns two runs (rig.analysis.diff) and hands the aligned rows here. Everything is vectorized over NumPy
arrays:
a million positions with top-20 lists take well under a second. The exact definitions are in docs/metrics.md; each
function names the test that pins it.

    m = token_metrics(lp_a, lp_b, ids_a, lps_a, ids_b, lps_b)   # delta, |delta| stats, top-1 agreement, KL (nats)
    boot = bootstrap_paired(pass_a, pass_b)                       # {"diff", "lo", "hi"}, seeded, 10,000 resamples
    p = mcnemar_exact(n01, n10)                                   # two-sided exact p-value
    ci = bootstrap_two_level(passes, counts)                      # repeats: over prompts, then samples in each
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TAIL_EPS = 1e-6  # floor of a top-K list's tail mass (probability), about float32 rounding of a sum of 20 probabilities
FLOOR_FACTOR = 2.0  # a value metric clears the floor when cross > FLOOR_FACTOR * floor + FLOOR_ABS
FLOOR_ABS = 1e-6  # nats
FLOOR_ALPHA = 0.05  # a rate clears the floor when the one-sided two-proportion test gives p < FLOOR_ALPHA


# ---- teacher-forced metrics over aligned rows -------------------------------------------------------------------


def _match(ids_a: np.ndarray, ids_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(same column mask, flat indices of the other entries, whether each is in B's row, its column there)."""
    k = ids_a.shape[1]
    same = ids_a == ids_b
    miss = np.flatnonzero(~same.reshape(-1))
    if not len(miss):
        return same, miss, np.zeros(0, bool), np.zeros(0, np.int64)
    cmp = ids_b[miss // k] == ids_a.reshape(-1)[miss][:, None]
    return same, miss, cmp.any(axis=1), cmp.argmax(axis=1)


def match_lists(ids_a: np.ndarray, ids_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Membership of each row's top-K ids in the other row's list.

    Returns (in_b, j_b, in_a): in_b[i, k] whether ids_a[i, k] is in ids_b[i]; j_b[i, k] its column there (0 where
    absent); in_a[i, j] whether ids_b[i, j] is in ids_a[i]. Rows whose lists agree column by column (the common case)
    cost one comparison; the other entries are compared against the whole other row.
    """
    n, k = ids_a.shape
    same, miss, hit, col = _match(ids_a, ids_b)
    in_b, in_a = same.copy(), same.copy()
    j_b = np.broadcast_to(np.arange(k), (n, k)).copy()
    in_b.reshape(-1)[miss] = hit
    j_b.reshape(-1)[miss] = np.where(hit, col, 0)
    in_a[miss[hit] // k, col[hit]] = True
    return in_b, j_b, in_a


def kl_topk(
    ids_a: np.ndarray,
    lps_a: np.ndarray,
    ids_b: np.ndarray,
    lps_b: np.ndarray,
    eps: float = TAIL_EPS,
    *,
    rows_a: np.ndarray | None = None,
    rows_b: np.ndarray | None = None,
) -> np.ndarray:
    """KL(A||B) per row (nats) over the union of the two top-K lists plus one tail bucket (docs/metrics.md, "KL").

    For each side X: listed probabilities q = exp(lps), tail T = max(1 - sum q, eps). A union token missing from X's
    list gets e = min(q_K, T / (m + 1)), q_K being its K-th (last listed) probability and m how many union tokens X
    lacks; the tail bucket keeps R = T - m * e. Both vectors are divided by their sums Z = sum q + T and
    KL = sum P_A (log P_A - log P_B). Float64 throughout; log-probabilities are clamped at -700 so that -inf entries
    stay finite. Lists of different K are compared over their first min(K_A, K_B) entries. rows_a/rows_b (optional)
    select the rows compared (row i is ids_a[rows_a[i]] against ids_b[rows_b[i]]); they are gathered chunk by chunk
    (16,384 rows, a few MB), so no aligned copy of the (n, K) arrays is ever made.
    Pinned by tests/test_stats.py::test_kl_known_values.
    """
    k = min(ids_a.shape[1], ids_b.shape[1])
    n = len(rows_a) if rows_a is not None else len(ids_a)
    if k == 0:
        return np.full(n, np.nan)
    out = np.empty(n)
    step = min(n, 1 << 14)
    work = _Work(step, k)  # reused buffers: fresh multi-MB arrays per chunk cost more in page faults than in arithmetic
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        ia, la = _chunk(ids_a, rows_a, sl, k), _chunk(lps_a, rows_a, sl, k)
        ib, lb = _chunk(ids_b, rows_b, sl, k), _chunk(lps_b, rows_b, sl, k)
        out[sl] = _kl_chunk(ia, la, ib, lb, eps, work)
    return out


class _Work:
    """Float64 scratch arrays for _kl_chunk, (rows, k) each, allocated once per kl_topk call."""

    def __init__(self, rows: int, k: int):
        self.la, self.lb, self.qa, self.qb = (np.empty((rows, k)) for _ in range(4))
        self.ones = np.ones(k)

    def views(self, n: int) -> tuple[np.ndarray, ...]:
        return self.la[:n], self.lb[:n], self.qa[:n], self.qb[:n]


def _chunk(x: np.ndarray, rows: np.ndarray | None, sl: slice, k: int) -> np.ndarray:
    """The first k columns of rows[sl] of x (of x[sl] when rows is None), C-contiguous."""
    if rows is not None:
        return x[rows[sl], :k] if x.shape[1] != k else x[rows[sl]]
    return np.ascontiguousarray(x[sl, :k])


def _kl_chunk(
    ids_a: np.ndarray, lps_a: np.ndarray, ids_b: np.ndarray, lps_b: np.ndarray, eps: float, work: _Work | None = None
) -> np.ndarray:
    n, k = ids_a.shape
    work = work or _Work(n, k)
    la, lb, qa, qb = work.views(n)
    la[...], lb[...] = lps_a, lps_b
    if lps_a.min(initial=0.0) < -700.0 or lps_b.min(initial=0.0) < -700.0:
        np.maximum(la, -700.0, out=la)
        np.maximum(lb, -700.0, out=lb)
    np.exp(la, out=qa)
    np.exp(lb, out=qb)
    ones = work.ones
    sa, sb = qa @ ones, qb @ ones
    miss, hit, col = _match(ids_a, ids_b)[1:]
    rows = miss // k
    # both lists hold k distinct tokens, so each side lacks as many union tokens as the other: m = k - |A and B|
    m = np.bincount(rows[~hit], minlength=n)
    ta, tb = np.maximum(1.0 - sa, eps), np.maximum(1.0 - sb, eps)
    ea = np.minimum(qa[:, -1], ta / (m + 1))  # the K-th (last listed, smallest) probability caps the estimate
    eb = np.minimum(qb[:, -1], tb / (m + 1))
    ra, rb = ta - m * ea, tb - m * eb
    za, zb = sa + ta, sb + tb
    c = np.log(zb) - np.log(za)  # log P_A - log P_B = (log q_A - log q_B) + c
    # A's listed tokens, first as if B's list matched column by column, then corrected where it does not:
    # there B's log-probability is the matching entry's, or log e_B when the token is not in B's list
    kl = np.multiply(np.subtract(la, lb, out=qb), qa, out=qb) @ ones  # qb is not needed after eb
    if len(miss):
        flat = miss % k
        lb_at = np.where(hit, lb[rows, col], np.log(eb[rows]))
        kl += np.bincount(rows, weights=qa[rows, flat] * (lb[rows, flat] - lb_at), minlength=n)
        # B's listed tokens that A lacks (e_A each): the miss positions of B's row that no A entry matched
        matched = np.zeros(n * k, bool)
        matched[rows[hit] * k + col[hit]] = True
        lone = miss[~matched[miss]]
        lb_lone = np.bincount(lone // k, weights=lb.reshape(-1)[lone], minlength=n)
        kl += np.where(m > 0, ea * (m * (np.log(ea) + c) - lb_lone), 0.0)
    kl = (kl + sa * c) / za
    # the tail bucket
    kl += (ra / za) * (np.log(ra) - np.log(rb) + c)
    return kl


def token_metrics(
    lp_a: np.ndarray,
    lp_b: np.ndarray,
    ids_a: np.ndarray | None = None,
    lps_a: np.ndarray | None = None,
    ids_b: np.ndarray | None = None,
    lps_b: np.ndarray | None = None,
    *,
    rows_a: np.ndarray | None = None,
    rows_b: np.ndarray | None = None,
) -> dict[str, Any]:
    """Teacher-forced metrics over aligned rows (same token, same context on both sides).

    Returns {"n_positions", "mean_delta", "mean_abs_delta", "p99_abs_delta", "max_abs_delta", "exp_mean_abs_delta",
    "top1_agreement", "top1_disagreements", "mean_kl", "p99_kl", "max_kl"}; deltas and KL in nats, delta = lp_b - lp_a,
    p99 by NumPy's linear interpolation. Values are None where there are no rows (or no top-K lists). lp_a and lp_b
    are aligned; the top-K arrays are too, or are indexed by rows_a / rows_b (see kl_topk).
    """
    n = len(lp_a)
    out: dict[str, Any] = dict.fromkeys(
        (
            "mean_delta",
            "mean_abs_delta",
            "p99_abs_delta",
            "max_abs_delta",
            "exp_mean_abs_delta",
            "top1_agreement",
            "top1_disagreements",
            "mean_kl",
            "p99_kl",
            "max_kl",
        ),
    )
    out["n_positions"] = int(n)
    if n == 0:
        return out
    delta = lp_b.astype(np.float64) - lp_a.astype(np.float64)
    ad = np.abs(delta)
    mad = float(ad.mean())
    out.update(
        mean_delta=float(delta.mean()),
        mean_abs_delta=mad,
        p99_abs_delta=float(np.percentile(ad, 99)),
        max_abs_delta=float(ad.max()),
        exp_mean_abs_delta=math.exp(mad),
    )
    if ids_a is not None and ids_b is not None and ids_a.shape[1] and ids_b.shape[1]:
        top_a = ids_a[:, 0] if rows_a is None else ids_a[rows_a, 0]
        top_b = ids_b[:, 0] if rows_b is None else ids_b[rows_b, 0]
        agree = top_a == top_b
        out["top1_agreement"] = float(agree.mean())
        out["top1_disagreements"] = int(n - agree.sum())
        if lps_a is not None and lps_b is not None:
            kl = kl_topk(ids_a, lps_a, ids_b, lps_b, rows_a=rows_a, rows_b=rows_b)
            out.update(mean_kl=float(kl.mean()), p99_kl=float(np.percentile(kl, 99)), max_kl=float(kl.max()))
    return out


def mean_by_position(pos: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions that occur, mean of values at each); e.g. mean |delta| (nats) per continuation position."""
    if len(pos) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    counts = np.bincount(pos)
    sums = np.bincount(pos, weights=values)
    keep = np.flatnonzero(counts)
    return keep, sums[keep] / counts[keep]


# ---- paired tests ------------------------------------------------------------------------------------------------


def bootstrap_paired(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float | None]:
    """Paired bootstrap of mean(b - a) over items (prompts): {"diff", "lo", "hi"}, a percentile (1 - alpha) interval.

    Resamples item indices with replacement, seeded (numpy default_rng(seed)), vectorized in chunks of resamples.
    Pinned by tests/test_stats.py::test_bootstrap_known_cases.
    """
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(d)
    if n == 0:
        return {"diff": None, "lo": None, "hi": None}
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi)}


def bootstrap_two_level(
    values: np.ndarray, counts: np.ndarray, *, n_resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float | None]:
    """Bootstrap over prompts and samples of the mean over prompts of each prompt's mean over its samples.

    values is (prompts, max samples), row i holding prompt i's counts[i] values first (the rest is ignored): pass/fail
    outcomes for an accuracy, or B - A outcomes of coupled (prompt, sample) pairs for a paired difference (the same
    sample index is drawn for both runs, so the pairing survives). Each resample draws prompts with replacement, then
    each drawn prompt's samples with replacement (numpy default_rng(seed)). Returns {"mean", "lo", "hi"}, a percentile
    (1 - alpha) interval. Pinned by tests/test_evals.py::test_two_level_bootstrap.
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None}
    kmax = int(counts.max())
    rates = np.array([values[i, : counts[i]].mean() for i in range(n)])
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // (n * kmax))
    slots = np.arange(kmax)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        pick = rng.integers(0, n, size=(stop - start, n))
        c = counts[pick]
        j = (rng.random((stop - start, n, kmax)) * c[..., None]).astype(np.int64)
        drawn = values[pick[..., None], j]
        drawn = np.where(slots < c[..., None], drawn, 0.0)
        means[start:stop] = (drawn.sum(axis=2) / c).mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"mean": float(rates.mean()), "lo": float(lo), "hi": float(hi)}


def sign_test_two_sided(n_up: int, n_down: int) -> float:
    """Two-sided exact sign test over untied pairs: min(1, 2 P(X >= max(n_up, n_down))), X ~ Bin(n_up + n_down, 1/2)."""
    return min(1.0, 2 * sign_test_p(max(n_up, n_down), min(n_up, n_down))) if n_up + n_down else 1.0


def mcnemar_exact(n01: int, n10: int) -> float:
    """McNemar's exact two-sided p-value: 2 * P(X <= min(n01, n10)), X ~ Binomial(n01 + n10, 1/2), capped at 1.

    Exact integer arithmetic (math.comb), so it holds for thousands of discordant pairs.
    Pinned by tests/test_stats.py::test_mcnemar_exact_hand_computed.
    """
    n = int(n01) + int(n10)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(n01, n10) + 1))
    return min(1.0, 2 * tail / 2**n)


def sign_test_p(n_up: int, n_down: int) -> float:
    """One-sided exact sign test: P(X >= n_up), X ~ Binomial(n_up + n_down, 1/2); 1.0 without untied pairs."""
    n = int(n_up) + int(n_down)
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(int(n_up), n + 1)) / 2**n)


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """One-sided p-value that rate x1/n1 exceeds x2/n2 (pooled two-proportion z-test); None without data."""
    if n1 == 0 or n2 == 0:
        return None
    p = (x1 + x2) / (n1 + n2)
    if p in (0.0, 1.0):
        return 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return 0.5 * math.erfc(z / math.sqrt(2))


# ---- the noise floor ---------------------------------------------------------------------------------------------


def clears_rate(x: int, n: int, x_floor: int, n_floor: int, alpha: float = FLOOR_ALPHA) -> dict[str, Any]:
    """Whether a cross rate x/n stands clear of the floor's x_floor/n_floor: {"clears", "p", "rule"}.

    clears is None where either side has no data. Pinned by tests/test_diff.py::test_floor_marking.
    """
    p = two_proportion_p(x, n, x_floor, n_floor)
    return {
        "clears": None if p is None else bool(p < alpha),
        "p": p,
        "rule": f"two-proportion z, one-sided p < {alpha}",
    }


def clears_value(value: float | None, floor: float | None) -> dict[str, Any]:
    """Whether a value metric (bigger is worse, nats) clears the floor: value > FLOOR_FACTOR * floor + FLOOR_ABS."""
    if value is None or floor is None or (isinstance(value, float) and math.isnan(value)):
        return {"clears": None, "p": None, "rule": f"> {FLOOR_FACTOR:g} x floor + {FLOOR_ABS:g}"}
    return {
        "clears": bool(value > FLOOR_FACTOR * floor + FLOOR_ABS),
        "p": None,
        "rule": f"> {FLOOR_FACTOR:g} x floor + {FLOOR_ABS:g}",
    }
