"""Anytime-valid statistics for canary analysis (pure numpy, no clock, no I/O).

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
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

# The Jeffreys prior: adapts to small rates (errors) as well as to rates near 1/2.
PRIOR_A = 0.5
PRIOR_B = 0.5
_BISECT_STEPS = 40
# The operator image carries numpy but not scipy (a lighter, smaller operator): log-Beta
# comes from math.lgamma, root finding from bisection.
_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def betaln(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """log B(a, b), elementwise (what scipy.special.betaln computes)."""
    aa = np.asarray(a, dtype=float)
    bb = np.asarray(b, dtype=float)
    out: NDArray[np.float64] = np.asarray(_lgamma(aa) + _lgamma(bb) - _lgamma(aa + bb), dtype=float)
    return out


def _bisect(f: Callable[[float], float], lo: float, hi: float, xtol: float = 1e-10) -> float:
    """A root of ``f`` in [lo, hi] where f(lo) and f(hi) differ in sign (or one is zero)."""
    f_lo = f(lo)
    if f_lo == 0.0:
        return lo
    while hi - lo > xtol:
        mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        if f_mid == 0.0:
            return mid
        if (f_mid < 0.0) == (f_lo < 0.0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _log_mixture(k: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    """log of the Beta(a, b)-mixture likelihood of k successes in n (up to the binomial)."""
    out: NDArray[np.float64] = betaln(k + PRIOR_A, n - k + PRIOR_B) - betaln(PRIOR_A, PRIOR_B)
    return out


def _log_lik(
    k: NDArray[np.float64], n: NDArray[np.float64], p: NDArray[np.float64]
) -> NDArray[np.float64]:
    # k log p + (n - k) log(1 - p), with 0 log 0 = 0 (p may round to 0 or 1).
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(k > 0, k * np.log(p), 0.0)
        b = np.where(n > k, (n - k) * np.log1p(-p), 0.0)
    out: NDArray[np.float64] = a + b
    return out


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
    if kk.size <= 4:  # the usual case: a few scalars, solved one by one (fast)
        pairs = [_scalar_bounds(float(a), float(b), alpha) for a, b in zip(kk, nn, strict=True)]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    # The set {p : log M(p) < log(1/alpha)} is an interval around k/n (log M is convex in
    # p): bisect both ends at once, in log-odds so that tiny rates resolve as well.
    target = _log_mixture(kk, nn) - math.log(1.0 / alpha)  # inside: log-lik(p) > target
    centre = np.clip(np.where(nn > 0, kk / np.maximum(nn, 1.0), 0.5), 1e-12, 1 - 1e-12)
    c = np.log(centre) - np.log1p(-centre)
    lo_out, lo_in = np.full_like(c, -40.0), c.copy()  # log-odds: outside / inside the set
    hi_in, hi_out = c.copy(), np.full_like(c, 40.0)
    both = np.concatenate([kk, kk])
    total = np.concatenate([nn, nn])
    goal = np.concatenate([target, target])
    for _ in range(_BISECT_STEPS):
        mid = np.concatenate([(lo_out + lo_in) / 2, (hi_in + hi_out) / 2])
        p = 1.0 / (1.0 + np.exp(-mid))
        inside = _log_lik(both, total, p) > goal
        m = len(c)
        lo_in = np.where(inside[:m], mid[:m], lo_in)
        lo_out = np.where(inside[:m], lo_out, mid[:m])
        hi_in = np.where(inside[m:], mid[m:], hi_in)
        hi_out = np.where(inside[m:], hi_out, mid[m:])
    lower = np.where((kk > 0) & (nn > 0), 1.0 / (1.0 + np.exp(-lo_out)), 0.0)
    upper = np.where((kk < nn) & (nn > 0), 1.0 / (1.0 + np.exp(-hi_out)), 1.0)
    return lower, upper


def _scalar_bounds(k: float, n: float, alpha: float) -> tuple[float, float]:
    """``rate_bounds`` for one rate: bisection on the same boundary."""
    if n <= 0:
        return 0.0, 1.0
    target = float(betaln(k + PRIOR_A, n - k + PRIOR_B) - betaln(PRIOR_A, PRIOR_B)) - math.log(
        1.0 / alpha
    )

    def excess(x: float) -> float:  # log-likelihood at log-odds x minus the boundary
        soft = max(x, 0.0) + math.log1p(math.exp(-abs(x)))  # log(1 + e^x) = -log(1 - p)
        return k * (x - soft) - (n - k) * soft - target

    centre = min(max(k / n, 1e-12), 1 - 1e-12)
    c = math.log(centre) - math.log1p(-centre)
    lower = 0.0 if k <= 0 else 1.0 / (1.0 + math.exp(-_bisect(excess, -40.0, c)))
    upper = 1.0 if k >= n else 1.0 / (1.0 + math.exp(-_bisect(excess, c, 40.0)))
    return lower, upper


def requests_to_decide(k: float, n: float, alpha: float, limit: float) -> int | None:
    """More trials after which the upper bound would fall to ``limit`` at the same rate.

    An estimate for status ("about N more requests would decide it"): it assumes the
    observed rate (at least half an event) holds. None when that rate is above ``limit``
    or more than a billion trials would be needed.
    """
    rate = max(k, 0.5) / max(n, 1.0)
    if rate >= limit:
        return None
    sizes = max(n, 1.0) * np.geomspace(1.0, 1e9 / max(n, 1.0), 200) if n < 1e9 else None
    if sizes is None:
        return None
    _, upper = rate_bounds(rate * sizes, sizes, alpha)
    ok = np.nonzero(upper <= limit)[0]
    if len(ok) == 0:
        return None
    return max(0, math.ceil(float(sizes[ok[0]]) - n))
