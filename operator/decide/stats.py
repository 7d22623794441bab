"""Small, exact statistics for canary analysis (pure Python; checked against scipy in tests).

Counts come from Prometheus ``increase()``, which extrapolates and returns floats; callers
round them to whole events before testing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

_STD_NORMAL = NormalDist()


def z_quantile(confidence: float) -> float:
    """The one-sided standard normal quantile for ``confidence`` (0.95 -> 1.645)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return _STD_NORMAL.inv_cdf(confidence)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater_p(errors_a: int, total_a: int, errors_b: int, total_b: int) -> float:
    """One-sided Fisher exact p-value that group a has a higher event rate than group b.

    P(X >= errors_a) where X is hypergeometric: the events of both groups dealt at random
    between them. Same as ``scipy.stats.fisher_exact(table, alternative="greater")`` with
    ``table = [[errors_a, total_a - errors_a], [errors_b, total_b - errors_b]]``.
    """
    _check_counts(errors_a, total_a)
    _check_counts(errors_b, total_b)
    events = errors_a + errors_b
    total = total_a + total_b
    if total == 0 or total_a == 0:
        return 1.0
    hi = min(events, total_a)
    lo = max(errors_a, events - total_b)
    if lo > hi:
        return 0.0
    base = _log_comb(total, total_a)
    logs = [
        _log_comb(events, k) + _log_comb(total - events, total_a - k) - base
        for k in range(lo, hi + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def rate_difference_lower_bound(
    errors_a: int, total_a: int, errors_b: int, total_b: int, confidence: float
) -> float:
    """One-sided lower confidence bound of rate_a - rate_b (Agresti-Caffo interval).

    Adding one event and one non-event to each group keeps the interval honest at small
    counts and zero events, where the plain Wald interval collapses to a point.
    """
    _check_counts(errors_a, total_a)
    _check_counts(errors_b, total_b)
    pa = (errors_a + 1) / (total_a + 2)
    pb = (errors_b + 1) / (total_b + 2)
    se = math.sqrt(pa * (1 - pa) / (total_a + 2) + pb * (1 - pb) / (total_b + 2))
    return (pa - pb) - z_quantile(confidence) * se


def psi(
    expected: Mapping[str, float], actual: Mapping[str, float], smoothing: float = 0.5
) -> float:
    """Population stability index between two binned count distributions.

    Bins are the union of both key sets; ``smoothing`` pseudo-counts are added to every bin
    so that an empty bin gives a large but finite contribution instead of infinity.
    """
    bins = sorted(set(expected) | set(actual))
    if not bins:
        raise ValueError("psi needs at least one bin")
    e_total = sum(max(0.0, expected.get(b, 0.0)) for b in bins) + smoothing * len(bins)
    a_total = sum(max(0.0, actual.get(b, 0.0)) for b in bins) + smoothing * len(bins)
    value = 0.0
    for b in bins:
        e = (max(0.0, expected.get(b, 0.0)) + smoothing) / e_total
        a = (max(0.0, actual.get(b, 0.0)) + smoothing) / a_total
        value += (a - e) * math.log(a / e)
    return value


def _check_counts(events: int, total: int) -> None:
    if total < 0 or events < 0 or events > total:
        raise ValueError(f"invalid counts: {events} events out of {total}")
