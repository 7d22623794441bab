"""Anytime-valid statistics for canary analysis (pure numpy/scipy, no clock, no I/O).

Everything here works on *cumulative counts* and may be evaluated after every new count,
as often as one likes: the error guarantees hold uniformly over time (Ville's inequality
for nonnegative supermartingales).

- ``rate_bounds``: a confidence sequence for a Bernoulli rate (errors per request,
  agreement per mirrored request, share of requests at most a latency bucket edge). It
  is Robbins' mixture: the likelihood of the counts under a Jeffreys Beta(1/2, 1/2)
  mixture over rates divided by the likelihood at rate ``p`` is a nonnegative martingale
  when the true rate is ``p``; the bound is the set of ``p`` where it stays below
  ``1/alpha``. With probability at least ``1 - alpha`` the true rate lies inside the
  bounds *at every time*.
- the e-processes for "the canary's errors are no more frequent than stable's" and for
  agreement are the router guard's (``mlrollout.services.sequential``), so that the
  router and the operator apply the same test.

Rates are arrays: a call bounds many rates at once (vectorised bisection), which keeps a
simulator of thousands of rollouts fast.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln

# The Jeffreys prior: adapts to small rates (errors) as well as to rates near 1/2.
PRIOR_A = 0.5
PRIOR_B = 0.5
_BISECT_STEPS = 48


def _log_mixture(k: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    """log of the Beta(a, b)-mixture likelihood of k successes in n (up to the binomial)."""
    out: NDArray[np.float64] = betaln(k + PRIOR_A, n - k + PRIOR_B) - betaln(PRIOR_A, PRIOR_B)
    return out


def _log_lik(
    k: NDArray[np.float64], n: NDArray[np.float64], p: NDArray[np.float64]
) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(k > 0, k * np.log(np.clip(p, 1e-300, 1.0)), 0.0)
        b = np.where(n - k > 0, (n - k) * np.log(np.clip(1.0 - p, 1e-300, 1.0)), 0.0)
    return a + b


def rate_log_evalue(k: ArrayLike, n: ArrayLike, p: ArrayLike) -> NDArray[np.float64]:
    """log of the mixture martingale against the rate ``p`` after ``k`` of ``n``."""
    kk = np.asarray(k, dtype=float)
    nn = np.asarray(n, dtype=float)
    pp = np.asarray(p, dtype=float)
    out: NDArray[np.float64] = _log_mixture(kk, nn) - _log_lik(kk, nn, pp)
    return out


def rate_bounds(
    k: ArrayLike, n: ArrayLike, alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Anytime-valid (lower, upper) bounds of Bernoulli rates from ``k`` successes in ``n``.

    Holds for all times at once with probability >= 1 - alpha (per rate). ``n == 0``
    gives (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    kk = np.atleast_1d(np.asarray(k, dtype=float))
    nn = np.atleast_1d(np.asarray(n, dtype=float))
    kk, nn = np.broadcast_arrays(kk, nn)
    if np.any(nn < 0) or np.any(kk < 0) or np.any(kk > nn):
        raise ValueError("rate_bounds needs 0 <= k <= n")
    level = math.log(1.0 / alpha)
    # The set {p : log M(p) < level} is an interval around k/n (log M is convex in p).
    target = _log_mixture(kk, nn) - level  # inside: log-likelihood(p) > target
    centre = np.where(nn > 0, kk / np.maximum(nn, 1.0), 0.5)
    lo_a, lo_b = np.zeros_like(centre), centre.copy()  # lik(lo_a) <= target, lik(lo_b) > target
    hi_a, hi_b = centre.copy(), np.ones_like(centre)  # lik(hi_a) > target, lik(hi_b) <= target
    for _ in range(_BISECT_STEPS):
        mid = (lo_a + lo_b) / 2
        inside = _log_lik(kk, nn, mid) > target
        lo_b = np.where(inside, mid, lo_b)
        lo_a = np.where(inside, lo_a, mid)
        mid = (hi_a + hi_b) / 2
        inside = _log_lik(kk, nn, mid) > target
        hi_a = np.where(inside, mid, hi_a)
        hi_b = np.where(inside, hi_b, mid)
    lower = np.where((kk > 0) & (nn > 0), lo_a, 0.0)
    upper = np.where((kk < nn) & (nn > 0), hi_b, 1.0)
    return lower, upper


def requests_to_decide(k: float, n: float, alpha: float, limit: float) -> int | None:
    """More trials after which the upper bound would fall to ``limit`` at the same rate.

    An estimate for status ("about N more requests would decide it"): it assumes the
    observed rate (at least half an event) holds. None when that rate is above ``limit``.
    """
    rate = max(k, 0.5) / max(n, 1.0)
    if rate >= limit:
        return None
    lo, hi = max(n, 1.0), max(n, 1.0)
    for _ in range(60):  # grow until the bound is under the limit, then bisect
        _, upper = rate_bounds(rate * hi, hi, alpha)
        if upper[0] <= limit:
            break
        lo, hi = hi, hi * 2
    else:
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        _, upper = rate_bounds(rate * mid, mid, alpha)
        if upper[0] <= limit:
            hi = mid
        else:
            lo = mid
    return max(0, math.ceil(hi - n))
