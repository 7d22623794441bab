"""Checks on the canary's requests (pure): error rate, against a limit and against stable
(sequential, on the error split), and latency quantiles from histogram buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlrollout.operator.decide.sequential as seq
import numpy as np
from mlrollout.operator import queries as q
from mlrollout.operator.decide.checkbase import (
    ROLLOUT,
    STEP,
    Context,
    Results,
    Risk,
    by_label,
    count,
    fmt,
    make_verdict,
    request_queries,
    requests,
)
from mlrollout.operator.model import Analysis, Verdict
from mlrollout.services import metric_names as n
from mlrollout.services import sequential as shared

# --------------------------------------------------------------------------- error rate


@dataclass(frozen=True)
class ErrorRate:
    """Absolute limit: the canary's error rate bounded from the requests since the rollout began."""

    name: str = "errorRate"
    sequential: bool = True
    test: str = "rate confidence sequence"

    def enabled(self, analysis: Analysis) -> bool:
        return analysis.metrics.error_rate.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        return request_queries(ctx)

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        limit = ctx.analysis.metrics.error_rate.max_rate
        e, n = requests(results, "canary", ROLLOUT)
        lo = float(seq.rate_bounds(e, n, risk.fail)[0][0])
        hi = float(seq.rate_bounds(e, n, risk.pass_)[1][0])
        counts = f"{e}/{n} canary requests failed"
        bounds = (
            f"rate above {fmt(lo)} (alpha {fmt(risk.fail)}), below {fmt(hi)} "
            f"(risk {fmt(risk.pass_)}), anytime"
        )
        common = {"value": e / n if n else None, "threshold": limit, "samples": n}
        common.update({"lower": lo, "upper": hi})
        if lo > limit:
            msg = f"{counts}: {bounds} > max {limit}"
            return make_verdict(self.name, self.test, "fail", msg, **common)
        if hi <= limit:
            return make_verdict(
                self.name, self.test, "pass", f"{counts}: {bounds} <= max {limit}", **common
            )
        more = seq.requests_to_decide(e, n, risk.pass_, limit)
        msg = f"{counts}: {bounds} straddles max {limit}"
        return make_verdict(self.name, self.test, "inconclusive", msg, needed=more, **common)


@dataclass(frozen=True)
class ErrorRateVsStable:
    """The canary's errors against stable's: sequential split test, promotion by tolerance."""

    name: str = "errorRateVsStable"
    sequential: bool = True
    test: str = "error split e-process"

    def enabled(self, analysis: Analysis) -> bool:
        return analysis.metrics.error_rate.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        return request_queries(ctx)

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        tol = ctx.analysis.metrics.error_rate.max_increase
        e_c, n_c = requests(results, "canary", STEP)
        e_s, n_s = requests(results, "stable", STEP)
        share = n_c / (n_c + n_s) if n_c + n_s else 0.0
        # The router guard's test (services/sequential.py), on this step's counts: the
        # canary's share of traffic is fixed within a step.
        step_log_e = shared.error_split_log_e(e_c, e_s, share) if 0 < share < 1 else 0.0
        log_e = ctx.carried.get(self.name, 0.0) + step_log_e
        threshold = shared.threshold(risk.fail)
        counts = (
            f"errors at this step canary {e_c}/{n_c}, stable {e_s}/{n_s} "
            f"(canary share of requests {share:.3f}, of errors "
            f"{(e_c / (e_c + e_s)) if e_c + e_s else 0:.3f})"
        )
        evidence = f"e-value {math.exp(min(log_e, 700)):.3g} (threshold {1 / risk.fail:.3g})"
        extra: dict[str, object] = {"stepLogEvidence": step_log_e, "logEvidence": log_e}
        if log_e >= threshold:
            msg = f"{counts}; {evidence}: canary fails more often than stable"
            return make_verdict(
                self.name, self.test, "fail", msg, samples=n_c, threshold=tol, **extra
            )
        # Evidence of safety, two ways (each with half the pass budget); either suffices:
        # - the increase bounded from the rollout's requests (best when errors are rare);
        # - the errors' split at this step bounds the canary/stable rate ratio, times a
        #   bound of stable's rate (best when both fail often, e.g. shared bursts).
        ec, nc = requests(results, "canary", ROLLOUT)
        es, ns = requests(results, "stable", ROLLOUT)
        (lo_c, hi_c), (lo_s, hi_s) = (
            (float(a[0]), float(b[0]))
            for a, b in (seq.rate_bounds(k, n, risk.pass_ / 4) for k, n in ((ec, nc), (es, ns)))
        )
        upper = hi_c - lo_s
        via = "rate bounds"
        if 0 < share < 1 and e_c + e_s > 0:
            _, theta_hi = (float(v[0]) for v in seq.rate_bounds(e_c, e_c + e_s, risk.pass_ / 4))
            _, stable_hi = (float(v[0]) for v in seq.rate_bounds(e_s, n_s, risk.pass_ / 4))
            if theta_hi < 1:
                ratio_hi = theta_hi * (1 - share) / (share * (1 - theta_hi))
                by_ratio = stable_hi * max(0.0, ratio_hi - 1)
                if by_ratio < upper:
                    upper, via = by_ratio, f"error split (rate ratio <= {ratio_hi:.3g})"
        diff = (ec / nc if nc else 0.0) - (es / ns if ns else 0.0)
        bound = (
            f"increase over the rollout {diff:+.4f} ({ec}/{nc} vs {es}/{ns}), upper bound "
            f"{upper:+.4f} by {via}"
        )
        extra.update({"value": diff, "threshold": tol, "samples": nc, "upper": upper})
        extra["lower"] = lo_c - hi_s
        if upper <= tol:
            msg = f"{counts}; {evidence}; {bound} <= maxIncrease {tol}"
            return make_verdict(self.name, self.test, "pass", msg, **extra)
        more = seq.requests_to_decide(ec, nc, risk.pass_ / 4, tol + lo_s)
        msg = f"{counts}; {evidence}; {bound} > maxIncrease {tol}: not yet evidence of safety"
        return make_verdict(self.name, self.test, "inconclusive", msg, needed=more, **extra)


# --------------------------------------------------------------------------- latency


def _buckets(results: Results, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(finite edges, cumulative counts at them) and the total, from ``sum by (le)``."""
    raw = by_label(results, name, "le")
    pairs = []
    for le, v in raw.items():
        try:
            pairs.append((float(le), count(v)))
        except ValueError:
            continue
    pairs.sort()
    edges = np.array([p[0] for p in pairs], dtype=float)
    counts = (
        np.maximum.accumulate(np.array([p[1] for p in pairs], dtype=float))
        if pairs
        else np.array([])
    )
    return edges, counts


def quantile_bounds(
    edges: np.ndarray, counts: np.ndarray, quantile: float, alpha: float
) -> tuple[float, float, int]:
    """Anytime-valid (lower, upper) bounds of a latency quantile from histogram counts.

    ``counts`` are cumulative (requests at most each edge; the last edge is +Inf). The
    quantile is above edge e when the share at most e is confidently below ``quantile``,
    and at most e when that share is confidently above it; the budget is split over the
    finite edges. Returns (0, inf) sides where nothing is confident, and the total.
    """
    if len(edges) == 0 or counts[-1] <= 0:
        return 0.0, math.inf, 0
    total = counts[-1]
    finite = np.isfinite(edges)
    e, k = edges[finite], counts[finite]
    if len(e) == 0:
        return 0.0, math.inf, int(total)
    log_e = seq.rate_log_evalue(k, np.full_like(k, total), np.full_like(k, quantile))
    sure = log_e >= math.log(len(e) / alpha)
    above = sure & (k / total > quantile)  # quantile <= edge
    below = sure & (k / total < quantile)  # quantile > edge
    upper = float(e[above].min()) if above.any() else math.inf
    lower = float(e[below].max()) if below.any() else 0.0
    return lower, upper, int(total)


@dataclass(frozen=True)
class Latency:
    """A latency quantile vs stable's (and an absolute ceiling) from bucket counts at this step."""

    name: str = "latency"
    sequential: bool = True
    test: str = "quantile bounds from bucket counts"

    def enabled(self, analysis: Analysis) -> bool:
        return analysis.metrics.latency.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        rng = ctx.range(STEP)
        return {
            q.LATENCY.format(track=track): (
                f"sum by (le) (increase({n.bucket(n.MODEL_REQUEST_DURATION)}"
                f"{ctx.predict_selector(track)}{rng}))"
            )
            for track in ("stable", "canary")
        }

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        spec = ctx.analysis.metrics.latency
        # Per step (fresh counts each step) and per track: fail bounds at alpha, pass at risk.
        a = risk.fail / max(1, ctx.steps) / 2
        b = risk.pass_ / max(1, ctx.steps) / 2
        qn = spec.quantile
        canary = _buckets(results, q.LATENCY.format(track="canary"))
        stable = _buckets(results, q.LATENCY.format(track="stable"))
        lc, _, nc = quantile_bounds(*canary, qn, a)
        _, us, ns = quantile_bounds(*stable, qn, a)
        _, uc, _ = quantile_bounds(*canary, qn, b)
        ls, _, _ = quantile_bounds(*stable, qn, b)
        if nc == 0:
            return make_verdict(
                self.name,
                self.test,
                "noData",
                "no canary latency observations at this step",
                samples=0,
                threshold=spec.max_seconds,
            )
        p = f"p{qn * 100:g}"
        counts = (
            f"canary {p} in ({fmt(lc)}, {fmt(uc)}]s from {nc} requests, stable {p} in "
            f"({fmt(ls)}, {fmt(us)}]s from {ns} (bucket edges, anytime; lower canary and upper "
            f"stable bounds at alpha {fmt(a)}, the others at risk {fmt(b)})"
        )
        extra: dict[str, object] = {"samples": nc, "lower": lc, "upper": uc}
        ratio = spec.max_ratio
        if lc >= spec.max_seconds:
            msg = f"{counts}: above maxSeconds {spec.max_seconds}"
            return make_verdict(
                self.name, self.test, "fail", msg, threshold=spec.max_seconds, **extra
            )
        if ratio is not None and ns > 0 and math.isfinite(us) and lc >= ratio * us:
            msg = f"{counts}: canary above {ratio} x stable's upper bound {fmt(ratio * us)}s"
            return make_verdict(self.name, self.test, "fail", msg, threshold=ratio * us, **extra)
        if ratio is not None and ns == 0:
            # A step at 100%: stable serves nothing to compare with; earlier steps did.
            ratio = None
            counts += "; stable served no requests at this step: maxSeconds only"
        limit = spec.max_seconds if ratio is None else min(spec.max_seconds, ratio * ls)
        if uc <= limit:
            basis = (
                f"maxSeconds {spec.max_seconds}"
                if ratio is None
                else (
                    f"min(maxSeconds {spec.max_seconds}, {ratio} x stable's lower bound {fmt(ls)}s)"
                )
            )
            return make_verdict(
                self.name, self.test, "pass", f"{counts}: within {basis}", threshold=limit, **extra
            )
        why = (
            "stable's quantile is not yet bounded below"
            if ls == 0 and ratio
            else (f"canary's upper bound {fmt(uc)}s > {fmt(limit)}s")
        )
        needed = max(0, ctx.analysis.min_samples - nc) or None
        msg = f"{counts}: not yet evidence of safety ({why})"
        return make_verdict(
            self.name, self.test, "inconclusive", msg, threshold=limit, needed=needed, **extra
        )
