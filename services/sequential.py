"""Anytime-valid sequential tests on counts: mixture likelihood ratios (e-processes).

Pure Python, no I/O, no clock: the router's guard and the operator's analysis use the same
functions. The building block is a one-sided test on a stream of yes/no events ("hits"):

    H0: every event is a hit with probability at most p0_i   vs   H1: more often.

``p0_i`` may change from event to event as long as it is fixed before the event is seen
(the router knows the canary's share of traffic when a request is routed). For each odds
ratio ``r`` on a grid the likelihood ratio of one event is

    hit:  p_r / p0 = r / (1 + (r - 1) p0)        miss: (1 - p_r) / (1 - p0) = 1 / (1 + (r - 1) p0)

where ``p_r`` has ``r`` times the odds of ``p0``. Under H0 (any true probability <= p0) each
factor has expectation <= 1, so the product is a nonnegative supermartingale, and so is a
weighted mixture of them over the grid: the *e-value*. By Ville's inequality

    P(e-value ever reaches 1 / alpha | H0) <= alpha

however often it is looked at, after every event or every scrape. That is the whole
guarantee: stop (roll back) the first time ``e >= 1 / alpha``.

Two uses:

- **Errors, canary vs stable** (``error_split``): condition on an error having happened;
  with the canary serving a share ``pi`` of requests, the error is the canary's with
  probability ``rho pi / (rho pi + 1 - pi)`` where ``rho`` is the ratio of the canary's
  error rate to stable's. H0 ``rho <= max_ratio`` gives ``p0`` from ``pi``; a hit is a
  canary error, a miss a stable error. Only error counts and the traffic share are needed
  (Lindon, Sanden, Shirikian, KDD 2022 make the same reduction for Poisson counts).
- **Agreement** (``disagreement``): each paired comparison disagrees with probability
  ``d``; H0 ``d <= 1 - min_agreement``; a hit is a disagreement.

The grid trades power between effect sizes: a weight on large ratios makes a canary that
fails every other request trip after a handful of its errors; weights on small ratios let
a 20 % increase be found eventually. The default is spread evenly in ``log r``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Odds ratios of the alternatives, and their mixture weights (uniform). Ratios reach 1e4 so
# that a canary erring on most of its requests (all errors the canary's) is found with
# close to the best possible evidence, 1 / p0 per error.
DEFAULT_RATIOS: tuple[float, ...] = (1.25, 1.6, 2.5, 4.0, 10.0, 40.0, 250.0, 1e4)
# The router guard acts on gross failures only (a canary erring 4x as often as stable or
# worse); finer effects are the operator's analysis. Few components, so each keeps a large
# weight: at 10 % traffic three canary errors in a row cross even at alpha 0.0025.
GUARD_RATIOS: tuple[float, ...] = (4.0, 30.0, 1e4)


def _check_grid(ratios: Sequence[float]) -> None:
    if not ratios or any(not (r > 1.0 and math.isfinite(r)) for r in ratios):
        raise ValueError(f"odds ratios must be finite and > 1, got {list(ratios)}")


def _check_p0(p0: float) -> None:
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"null probability must be in (0, 1), got {p0}")


def _logsumexp_mean(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def log_e_value(
    hits: int, misses: int, p0: float, ratios: Sequence[float] = DEFAULT_RATIOS
) -> float:
    """log of the mixture e-value after ``hits`` and ``misses`` at a constant null ``p0``."""
    if hits < 0 or misses < 0:
        raise ValueError(f"counts must be >= 0, got {hits} hits, {misses} misses")
    _check_p0(p0)
    _check_grid(ratios)
    n = hits + misses
    return _logsumexp_mean([hits * math.log(r) - n * math.log1p((r - 1.0) * p0) for r in ratios])


def split_null(share: float, max_ratio: float = 1.0) -> float:
    """Null probability that an error is the canary's: canary share ``share`` of requests and
    a canary error rate at most ``max_ratio`` times stable's."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"canary share must be in (0, 1), got {share}")
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
    return max_ratio * share / (max_ratio * share + 1.0 - share)


def error_split_log_e(
    canary_errors: int,
    stable_errors: int,
    share: float,
    max_ratio: float = 1.0,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> float:
    """log e-value that the canary errs more than ``max_ratio`` x stable, from error counts
    gathered while the canary served a constant ``share`` of requests."""
    return log_e_value(canary_errors, stable_errors, split_null(share, max_ratio), ratios)


def disagreement_log_e(
    agree: int, disagree: int, min_agreement: float, ratios: Sequence[float] = DEFAULT_RATIOS
) -> float:
    """log e-value that the agreement rate is below ``min_agreement``."""
    if not 0.0 < min_agreement < 1.0:
        raise ValueError(f"min_agreement must be in (0, 1), got {min_agreement}")
    return log_e_value(disagree, agree, 1.0 - min_agreement, ratios)


def threshold(alpha: float) -> float:
    """log(1 / alpha): the e-value's crossing point for false-alarm probability ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return -math.log(alpha)


def hits_needed(p0: float, alpha: float, ratios: Sequence[float] = DEFAULT_RATIOS) -> int:
    """Fewest hits in a row (no misses) that cross: the least evidence that can ever decide."""
    bound = threshold(alpha)
    for k in range(1, 10_000):
        if log_e_value(k, 0, p0, ratios) >= bound:
            return k
    raise ValueError(f"no run of hits crosses at p0={p0}, alpha={alpha}")


@dataclass
class SequentialTest:
    """The same e-process fed one event at a time, with a null ``p0`` that may vary.

    ``observe`` is O(grid) and allocation-free, cheap enough to run on every error the
    router sees. The test never resets itself: the caller starts a new one for a new
    canary.
    """

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        _check_grid(self.ratios)
        self._logs = [0.0] * len(self.ratios)
        self._log_r = [math.log(r) for r in self.ratios]

    def observe(self, hit: bool, p0: float) -> None:
        _check_p0(p0)
        logs, ratios = self._logs, self.ratios
        for k, r in enumerate(ratios):
            logs[k] -= math.log1p((r - 1.0) * p0)
            if hit:
                logs[k] += self._log_r[k]
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def observe_counts(self, hits: int, misses: int, p0: float) -> None:
        """``hits`` and ``misses`` at one null ``p0`` at once (a batch's rows): O(grid),
        whatever the counts. Looking only after the batch keeps the guarantee."""
        if hits < 0 or misses < 0:
            raise ValueError(f"counts must be >= 0, got {hits} hits, {misses} misses")
        _check_p0(p0)
        n = hits + misses
        for k, r in enumerate(self.ratios):
            self._logs[k] += hits * self._log_r[k] - n * math.log1p((r - 1.0) * p0)
        self.hits += hits
        self.misses += misses

    @property
    def log_e(self) -> float:
        return _logsumexp_mean(self._logs)

    def crossed(self, alpha: float) -> bool:
        return self.log_e >= threshold(alpha)
