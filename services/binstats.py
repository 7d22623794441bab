"""Statistics on binned distributions: PSI, G-tests against a profile or between two
samples, and the pooling of sparse bins. Pure numpy/scipy, no I/O, no clock.

The one PSI definition: the model server's drift windows (``drift.py``) and the operator's
canary-vs-stable prediction check use the same per-bin terms (``psi_terms``), with
proportions floored at ``PSI_FLOOR`` so a bin one side never saw costs a bounded amount.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import chdtrc, xlogy

MIN_EXPECTED = 5.0  # Cochran's rule: cells expecting fewer rows are pooled for the G-test
PSI_FLOOR = 1e-4  # smallest proportion a PSI term sees


def _as_proportions(values: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: must be a non-empty 1-D array")
    if not np.isfinite(x).all() or (x < 0).any():
        raise ValueError(f"{what}: must be finite and non-negative")
    total = float(x.sum())
    if total <= 0:
        raise ValueError(f"{what}: has no mass (all zero)")
    return x / total


def psi_terms(actual: np.ndarray, expected: np.ndarray, floor: float = PSI_FLOOR) -> np.ndarray:
    """Per-bin PSI terms ``(a - e) * ln(a / e)`` of two proportion vectors, each clipped
    to ``[floor, 1]`` so an empty bin costs a bounded amount instead of infinity."""
    a = np.clip(np.asarray(actual, dtype=np.float64), floor, 1.0)
    e = np.clip(np.asarray(expected, dtype=np.float64), floor, 1.0)
    return (a - e) * np.log(a / e)


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_FLOOR) -> float:
    """Population stability index of ``actual`` vs ``expected`` (counts or proportions):
    both normalised to proportions, then the sum of :func:`psi_terms` (floored at ``eps``).
    """
    e = _as_proportions(expected, "expected")
    a = _as_proportions(actual, "actual")
    if e.shape != a.shape:
        raise ValueError(f"expected and actual differ in length: {e.size} != {a.size}")
    return float(np.sum(psi_terms(a, e, eps)))


def g_test(expected_props: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """G-test (log-likelihood ratio) of ``counts`` against ``expected_props``.

    Returns (statistic, p-value) with ``k - 1`` degrees of freedom, k the bins with
    expected mass. Equal to ``scipy.stats.power_divergence(counts, expected,
    lambda_="log-likelihood")`` when every expected proportion is positive. Counts in a
    bin the expected distribution gives no mass make the statistic infinite.
    """
    p = _as_proportions(expected_props, "expected_props")
    n = np.asarray(counts, dtype=np.float64)
    if n.shape != p.shape:
        raise ValueError(f"counts must have {p.size} bins, got shape {n.shape}")
    _as_proportions(n, "counts")  # validates: finite, non-negative, some mass
    total = n.sum()
    support = p > 0
    if (n[~support] > 0).any():
        return math.inf, 0.0
    observed, expected = n[support], p[support] * total
    stat = float(2.0 * np.sum(xlogy(observed, observed / expected)))
    df = int(support.sum()) - 1
    return stat, float(chdtrc(df, stat)) if df > 0 else 1.0


def g_test_two_sample(counts_a: np.ndarray, counts_b: np.ndarray) -> tuple[float, float]:
    """G-test that two samples of bin counts (say canary and stable) share one distribution.

    The 2 x k contingency test: (statistic, p-value) with ``k - 1`` degrees of freedom, k
    the bins either sample reached. Unlike ``g_test`` neither side is taken as exact, so
    it is the right test when both are finite samples.
    """
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"counts_a and counts_b differ in shape: {a.shape} != {b.shape}")
    _as_proportions(a, "counts_a")
    _as_proportions(b, "counts_b")
    keep = (a + b) > 0
    table = np.vstack([a[keep], b[keep]])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    stat = float(2.0 * np.sum(xlogy(table, table / expected)))
    df = int(keep.sum()) - 1
    return stat, float(chdtrc(df, stat)) if df > 0 else 1.0


def pool_bins(proportions: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Map bins to G-test cells so that every cell expects >= MIN_EXPECTED rows per window.

    Returns (cell index of each bin, proportion of each cell). Bins expecting fewer rows
    are pooled into one cell; if that pool still expects too few, it joins the smallest
    regular cell. So a bin the profile never saw (an unseen category, NaN in a feature
    that had none) adds evidence to a cell but never a degree of freedom it cannot fill.
    """
    p = np.asarray(proportions, dtype=np.float64)
    regular = p * window >= MIN_EXPECTED
    cells = np.zeros(p.size, dtype=np.intp)
    n_regular = int(regular.sum())
    cells[regular] = np.arange(n_regular)
    rare = ~regular
    if rare.any() and n_regular > 0:
        if p[rare].sum() * window >= MIN_EXPECTED:
            cells[rare] = n_regular
        else:
            smallest = np.flatnonzero(regular)[np.argmin(p[regular])]
            cells[rare] = cells[smallest]
    return cells, np.bincount(cells, weights=p)
