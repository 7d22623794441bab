"""The operator's statistics run without scipy (the operator image has numpy only):
its log-Beta and root finding must agree with scipy's, which the tests have."""

from __future__ import annotations

import numpy as np
import pytest
from mlrollout.operator.decide import sequential as seq
from scipy.optimize import brentq
from scipy.special import betaln as scipy_betaln


def test_betaln_matches_scipy_over_the_counts_analysis_sees() -> None:
    k = np.array([0, 1, 3, 17, 250, 10_000, 3_000_000], dtype=float)
    n = np.array([0, 2, 40, 17, 900, 50_000, 1_000_000_000], dtype=float)
    ours = seq.betaln(k + 0.5, n - k + 0.5)
    theirs = scipy_betaln(k + 0.5, n - k + 0.5)
    assert np.allclose(ours, theirs, rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (3, 5000), (0, 1)])
def test_scalar_bounds_match_brent(k: int, n: int) -> None:
    alpha = 0.01
    lower, upper = seq.rate_bounds(k, n, alpha)
    target = float(scipy_betaln(k + 0.5, n - k + 0.5) - scipy_betaln(0.5, 0.5)) + np.log(alpha)

    def excess(x: float) -> float:
        soft = max(x, 0.0) + np.log1p(np.exp(-abs(x)))
        return k * (x - soft) - (n - k) * soft - target

    c = np.log(max(k / n, 1e-12)) - np.log1p(-min(k / n, 1 - 1e-12))
    want_lo = 0.0 if k == 0 else 1 / (1 + np.exp(-brentq(excess, -40.0, c, xtol=1e-12)))
    want_hi = 1.0 if k == n else 1 / (1 + np.exp(-brentq(excess, c, 40.0, xtol=1e-12)))
    assert lower[0] == pytest.approx(want_lo, rel=1e-6, abs=1e-12)
    assert upper[0] == pytest.approx(want_hi, rel=1e-6, abs=1e-12)
