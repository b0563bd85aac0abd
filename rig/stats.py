"""Numbers over aligned token rows and paired samples: teacher-forced metrics, paired tests and the noise floor.

`rig diff` aligns two runs (rig.diff) and hands the aligned rows here. Everything is vectorized over NumPy arrays:
a million positions with top-20 lists take well under a second. The exact definitions are in docs/metrics.md; each
function names the test that pins it.

    m = token_metrics(lp_a, lp_b, ids_a, lps_a, ids_b, lps_b)   # delta, |delta| stats, top-1 agreement, KL (nats)
    boot = bootstrap_paired(pass_a, pass_b)                       # {"diff", "lo", "hi"}, seeded, 10,000 resamples
    p = mcnemar_exact(n01, n10)                                   # two-sided exact p-value
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
    ids_a: np.ndarray, lps_a: np.ndarray, ids_b: np.ndarray, lps_b: np.ndarray, eps: float = TAIL_EPS
) -> np.ndarray:
    """KL(A||B) per row (nats) over the union of the two top-K lists plus one tail bucket (docs/metrics.md, "KL").

    For each side X: listed probabilities q = exp(lps), tail T = max(1 - sum q, eps). A union token missing from X's
    list gets e = min(q_K, T / (m + 1)), q_K being its K-th (last listed) probability and m how many union tokens X
    lacks; the tail bucket keeps R = T - m * e. Both vectors are divided by their sums Z = sum q + T and
    KL = sum P_A (log P_A - log P_B). Float64 throughout; log-probabilities are clamped at -700 so that -inf entries
    stay finite. Rows are processed in chunks. Pinned by tests/test_stats.py::test_kl_known_values.
    """
    n, k = ids_a.shape
    if k == 0:
        return np.full(n, np.nan)
    out = np.empty(n)
    step = 1 << 15
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        out[sl] = _kl_chunk(ids_a[sl], lps_a[sl], ids_b[sl], lps_b[sl], eps)
    return out


def _kl_chunk(ids_a: np.ndarray, lps_a: np.ndarray, ids_b: np.ndarray, lps_b: np.ndarray, eps: float) -> np.ndarray:
    n, k = ids_a.shape
    la, lb = lps_a.astype(np.float64), lps_b.astype(np.float64)
    if la.min(initial=0.0) < -700.0 or lb.min(initial=0.0) < -700.0:
        la, lb = np.maximum(la, -700.0), np.maximum(lb, -700.0)
    qa, qb = np.exp(la), np.exp(lb)
    ones = np.ones(k)
    sa, sb = qa @ ones, qb @ ones
    same, miss, hit, col = _match(ids_a, ids_b)
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
    kl = np.einsum("ij,ij->i", qa, la - lb)
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
) -> dict[str, Any]:
    """Teacher-forced metrics over aligned rows (same token, same context on both sides).

    Returns {"n_positions", "mean_delta", "mean_abs_delta", "p99_abs_delta", "max_abs_delta", "exp_mean_abs_delta",
    "top1_agreement", "top1_disagreements", "mean_kl", "p99_kl", "max_kl"}; deltas and KL in nats, delta = lp_b - lp_a,
    p99 by NumPy's linear interpolation. Values are None where there are no rows (or no top-K lists).
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
        agree = ids_a[:, 0] == ids_b[:, 0]
        out["top1_agreement"] = float(agree.mean())
        out["top1_disagreements"] = int(n - agree.sum())
        if ids_a.shape == ids_b.shape and lps_a is not None and lps_b is not None:
            kl = kl_topk(ids_a, lps_a, ids_b, lps_b)
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
