"""rig.analysis.stats: KL with the tail bucket, list matching, token metrics, bootstrap, McNemar, the floor rules.

Known answers are worked out by hand in the comments (docs/metrics.md points at each test).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from rig.analysis.stats import (
    TAIL_EPS,
    bootstrap_paired,
    clears_rate,
    clears_value,
    kl_topk,
    match_lists,
    mcnemar_exact,
    mean_by_position,
    token_metrics,
    two_proportion_p,
)


def test_kl_known_values():
    # A lists {1: 0.5, 2: 0.3}, tail 0.2; B lists {1: 0.6, 3: 0.2}, tail 0.2. Union {1, 2, 3} + tail.
    # A lacks 3: e_A = min(0.3, 0.2 / 2) = 0.1, R_A = 0.1 -> P_A = (0.5, 0.3, 0.1, 0.1)
    # B lacks 2: e_B = min(0.2, 0.2 / 2) = 0.1, R_B = 0.1 -> P_B = (0.6, 0.1, 0.2, 0.1)
    # KL = 0.5 ln(5/6) + 0.3 ln 3 + 0.1 ln(1/2) + 0 = 0.16910786
    ids_a, lps_a = np.array([[1, 2]]), np.log(np.array([[0.5, 0.3]], np.float32))
    ids_b, lps_b = np.array([[1, 3]]), np.log(np.array([[0.6, 0.2]], np.float32))
    assert kl_topk(ids_a, lps_a, ids_b, lps_b)[0] == pytest.approx(0.16910786, rel=1e-5)  # float32 inputs
    # the missing-token estimate is capped by the smallest listed probability: B lists {1: 0.5, 3: 0.05}, tail 0.45,
    # so e_B = min(0.05, 0.45 / 2) = 0.05 and R_B = 0.4 -> P_B = (0.5, 0.05, 0.05, 0.4); P_A as above
    lps_b2 = np.log(np.array([[0.5, 0.05]], np.float32))
    want = 0.5 * math.log(1.0) + 0.3 * math.log(0.3 / 0.05) + 0.1 * math.log(0.1 / 0.05) + 0.1 * math.log(0.1 / 0.4)
    assert kl_topk(ids_a, lps_a, ids_b, lps_b2)[0] == pytest.approx(want, rel=1e-5)


def test_kl_identical_lists_and_order_and_tail_floor():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(30), size=50)[:, :20]
    lps = np.log(-np.sort(-p, axis=1)).astype(np.float32)
    ids = rng.permuted(np.tile(np.arange(100), (50, 1)), axis=1)[:, :20]
    assert np.allclose(kl_topk(ids, lps, ids, lps), 0.0, atol=1e-12)
    perm = rng.permutation(20)  # the same list in another order: still zero
    assert np.allclose(kl_topk(ids, lps, ids[:, perm], lps[:, perm]), 0.0, atol=1e-12)
    # listed mass above 1 (float rounding): the tail is floored at TAIL_EPS, KL stays finite and >= 0
    full = np.log(np.array([[0.7, 0.31]], np.float32))
    assert np.isfinite(kl_topk(np.array([[1, 2]]), full, np.array([[2, 1]]), full)).all()
    assert TAIL_EPS == 1e-6
    # -inf entries (a masked token) are clamped, not NaN
    neg = np.array([[-0.1, -np.inf]], np.float32)
    assert np.isfinite(kl_topk(np.array([[1, 2]]), neg, np.array([[1, 3]]), neg)).all()


def test_match_lists():
    ids_a = np.array([[1, 2, 3], [4, 5, 6]])
    ids_b = np.array([[1, 3, 9], [6, 5, 4]])
    in_b, j_b, in_a = match_lists(ids_a, ids_b)
    assert in_b.tolist() == [[True, False, True], [True, True, True]]
    assert j_b.tolist() == [[0, 0, 1], [2, 1, 0]]
    assert in_a.tolist() == [[True, True, False], [True, True, True]]


def test_token_metrics_definitions():
    lp_a = np.array([-1.0, -2.0, -0.5, -0.1], np.float32)
    lp_b = lp_a + np.array([0.0, 0.1, -0.2, 0.3], np.float32)
    m = token_metrics(lp_a, lp_b)
    assert m["mean_abs_delta"] == pytest.approx(0.15, abs=1e-6)
    assert m["p99_abs_delta"] == pytest.approx(0.297, abs=1e-6)
    assert m["exp_mean_abs_delta"] == pytest.approx(math.exp(0.15), rel=1e-6)
    assert m["top1_agreement"] is None and m["mean_kl"] is None  # no top-K lists given
    empty = token_metrics(np.zeros(0), np.zeros(0))
    assert empty["n_positions"] == 0 and empty["mean_abs_delta"] is None


def test_mean_by_position():
    pos, mean = mean_by_position(np.array([0, 1, 1, 3]), np.array([1.0, 2.0, 4.0, 5.0]))
    assert pos.tolist() == [0, 1, 3] and mean.tolist() == [1.0, 3.0, 5.0]


def test_bootstrap_known_cases():
    # constant paired differences: every resample has the same mean, the interval collapses onto it
    a = np.zeros(50)
    b = np.full(50, 0.2)
    assert bootstrap_paired(a, b) == pytest.approx({"diff": 0.2, "lo": 0.2, "hi": 0.2})
    # differences 0 or 1, half each, n = 400: the bootstrap mean is close to normal with sd sqrt(0.25 / 400) = 0.025,
    # so the 95% interval is about 0.5 -/+ 1.96 * 0.025 = [0.451, 0.549]
    d = np.tile([0.0, 1.0], 200)
    r = bootstrap_paired(np.zeros(400), d, seed=3)
    assert r["diff"] == 0.5
    assert r["lo"] == pytest.approx(0.451, abs=0.006) and r["hi"] == pytest.approx(0.549, abs=0.006)
    assert bootstrap_paired(np.zeros(400), d, seed=3) == r  # seeded
    assert bootstrap_paired(np.zeros(400), d, seed=4) != r
    assert bootstrap_paired([], []) == {"diff": None, "lo": None, "hi": None}


def test_bootstrap_is_vectorized():
    rng = np.random.default_rng(0)
    a, b = rng.random(2000), rng.random(2000)
    t = time.process_time()
    bootstrap_paired(a, b, n_resamples=10_000)
    assert time.process_time() - t < 5.0  # 20 million draws; a Python loop over resamples would take far longer


def test_mcnemar_exact_hand_computed():
    # n01 = 1, n10 = 6: n = 7, P(X <= 1) = (C(7,0) + C(7,1)) / 2^7 = 8 / 128; two-sided: 0.125
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0  # 2 * 42 / 64 > 1, capped
    assert mcnemar_exact(0, 0) == 1.0
    # large counts stay exact: 2 * P(X <= 900), X ~ Bin(2000, 1/2), about 8e-6
    assert 1e-6 < mcnemar_exact(900, 1100) < 2e-5


def test_two_proportion_and_floor_rules():
    # 10/20 against 5/20: pooled 0.375, se = sqrt(0.375 * 0.625 * 0.1), z = 1.63299, one-sided p = 0.0512352
    assert two_proportion_p(10, 20, 5, 20) == pytest.approx(0.0512352, rel=1e-5)
    assert two_proportion_p(0, 20, 0, 20) == 1.0
    assert two_proportion_p(1, 0, 0, 20) is None
    assert clears_rate(10, 20, 5, 20)["clears"] is False  # p = 0.051, not < 0.05
    assert clears_rate(12, 20, 5, 20)["clears"] is True
    assert clears_value(0.03, 0.01)["clears"] is True  # 0.03 > 2 * 0.01 + 1e-6
    assert clears_value(0.02, 0.01)["clears"] is False
    assert clears_value(None, 0.01)["clears"] is None
