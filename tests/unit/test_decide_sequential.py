"""Anytime-valid statistics: coverage and false-alarm rates hold however often one looks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from mlrollout.operator.decide import checks
from mlrollout.operator.decide import sequential as seq


def test_rate_bounds_contain_the_estimate_and_shrink() -> None:
    lo, hi = seq.rate_bounds([0, 5, 50, 500], [100, 100, 100, 1000], 0.01)
    assert lo[0] == 0.0 and 0 < hi[0] < 0.1
    assert (lo <= np.array([0, 0.05, 0.5, 0.5])).all()
    assert (hi >= np.array([0, 0.05, 0.5, 0.5])).all()
    _, hi_more = seq.rate_bounds(0, 10_000, 0.01)
    assert hi_more[0] < hi[0] / 50
    assert seq.rate_bounds(0, 0, 0.05) == (pytest.approx([0.0]), pytest.approx([1.0]))


def test_rate_bounds_are_the_set_where_the_mixture_stays_below_one_over_alpha() -> None:
    k, n, alpha = 7, 300, 0.05
    lo, hi = seq.rate_bounds(k, n, alpha)
    for p, inside in ((lo[0] * 1.001, True), (hi[0] * 0.999, True), (lo[0] * 0.99, False)):
        assert (seq.rate_log_evalue(k, n, p) < math.log(1 / alpha)) == inside


@pytest.mark.parametrize("p", [0.001, 0.02, 0.5])
def test_rate_bounds_cover_at_every_look_with_probability_one_minus_alpha(p: float) -> None:
    # 1000 paths of 2000 trials, looked at after every 20 trials: a path fails if the bound
    # misses p at ANY look. A fixed-sample interval would miss far more often.
    rng = np.random.default_rng(7)
    alpha, paths, length, every = 0.05, 1000, 2000, 20
    hits = rng.random((paths, length)) < p
    k = np.cumsum(hits, axis=1)[:, every - 1 :: every]
    n = np.broadcast_to(np.arange(every, length + 1, every), k.shape)
    lo, hi = seq.rate_bounds(k.ravel(), n.ravel().astype(float), alpha)
    missed = ((lo > p) | (hi < p)).reshape(k.shape).any(axis=1)
    assert missed.mean() <= alpha


def test_requests_to_decide_is_the_size_where_the_bound_reaches_the_limit() -> None:
    more = seq.requests_to_decide(0, 100, 0.01, 0.01)
    assert more is not None and more > 0
    _, hi = seq.rate_bounds(0.5 / 100 * (100 + more), 100 + more, 0.01)
    assert hi[0] <= 0.01 + 1e-9
    assert seq.requests_to_decide(50, 100, 0.01, 0.01) is None  # the rate is above the limit


def test_quantile_bounds_bracket_the_true_quantile() -> None:
    rng = np.random.default_rng(5)
    edges = np.array([0.001 * 1.09**k for k in range(60)] + [math.inf])
    sample = rng.lognormal(math.log(0.005), 0.4, size=20_000)
    counts = np.array([(sample <= e).sum() for e in edges], dtype=float)
    lower, upper, total = checks.quantile_bounds(edges, counts, 0.95, 0.01)
    true = scipy.stats.lognorm(0.4, scale=0.005).ppf(0.95)
    assert total == 20_000
    assert lower < true <= upper
    assert upper / lower < 1.09**3  # resolved within a few buckets


def test_psi_bounds_contain_the_estimate_and_detect_a_shift() -> None:
    same = {"0": 7000.0, "1": 3000.0}
    est, lo, hi, nc, ns = checks.psi_bounds(same, {"0": 6950.0, "1": 3050.0}, 0.01)
    assert lo == 0.0 <= est <= hi < 0.05 and (nc, ns) == (10_000, 10_000)
    est, lo, hi, _, _ = checks.psi_bounds({"0": 300.0, "1": 700.0}, same, 0.01)
    assert 0.2 < lo <= est <= hi
