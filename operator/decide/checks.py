"""Analysis checks: one object per check, holding its queries, its test and its verdict (pure).

A check is added here, in one place: give it a name, say when it is enabled, which
PromQL it needs (named queries, read back by the same object) and how the results turn
into a ``Verdict``. ``CHECKS`` lists them in the order verdicts are reported.

Two kinds:

- **sequential** checks test cumulative counts with anytime-valid statistics
  (``sequential.py``). A crossing rolls the canary back at once; a pass needs a
  confidence bound inside the spec's tolerance; otherwise the check is ``inconclusive``
  and says roughly how many more requests would decide it. They share the rollout's
  false-rollback budget ``analysis.alpha`` (Bonferroni over the enabled checks).
- **window** checks (input drift, custom PromQL) compare one number with a limit per run;
  ``failureLimit`` failed runs *of that check* in a row roll back.

Counts are cumulative since the current step began (``@step``: the canary's share of
traffic is fixed there, which the error split needs, and latency depends on load) or
since the rollout's first step began (``@rollout``: properties of a request that do not
depend on the weight: error rate, predictions, agreement, feedback).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import mlrollout.operator.decide.sequential as seq
import numpy as np
from mlrollout.operator import queries as q
from mlrollout.operator.interfaces import ProviderError, Sample
from mlrollout.operator.model import Analysis, Verdict, parse_duration
from mlrollout.services import metric_names as n
from mlrollout.services import sequential as shared

Results = Mapping[str, Sequence[Sample] | ProviderError]

STEP = "step"
ROLLOUT = "rollout"
REQUESTS_TOTAL = n.total(n.MODEL_REQUESTS)


class Unavailable(Exception):
    """A query this check needs failed or was not run."""


@dataclass(frozen=True)
class Context:
    """What a check needs besides the results: spec, identity, time at the weight, budget."""

    analysis: Analysis
    deployment: str
    namespace: str
    stable_version: str
    canary_version: str
    step_seconds: float = 0.0  # canary traffic time at the current step
    rollout_seconds: float = 0.0  # since the rollout's first step began
    steps: int = 1  # steps in the rollout (latency spends its budget per step)
    carried: Mapping[str, float] = field(default_factory=dict)  # log e from earlier steps
    # The router guard's share of analysis.alpha (docs/routing.md); the checks get the rest.
    guard_alpha: float = 0.0

    def budget(self) -> float:
        """The false-rollback probability the checks may spend together."""
        return max(self.analysis.alpha - self.guard_alpha, self.analysis.alpha / 2)

    def selector(self, track: str, **extra: str) -> str:
        version = self.canary_version if track == "canary" else self.stable_version
        return q.selector(self.deployment, self.namespace, version, **extra)

    def predict_selector(self, track: str) -> str:
        return self.selector(track)[:-1] + ',endpoint=~"' + q.PREDICT_ENDPOINTS + '"}'

    def range(self, scope: str) -> str:
        seconds = self.step_seconds if scope == STEP else self.rollout_seconds
        return f"[{max(1, math.ceil(seconds))}s]"


@dataclass(frozen=True)
class Risk:
    """A check's share of the rollout's error budgets: ``fail`` of ``analysis.alpha`` (a
    canary no worse than stable rolled back), ``pass_`` of ``analysis.passRisk`` (a step
    passed on a bound that does not hold)."""

    fail: float
    pass_: float


class Check(Protocol):
    """One analysis check. Attributes: ``name``, ``sequential`` (a crossing rolls back at
    once) and ``test`` (named in verdicts), read-only."""

    @property
    def name(self) -> str: ...

    @property
    def sequential(self) -> bool: ...

    @property
    def test(self) -> str: ...

    def enabled(self, analysis: Analysis) -> bool: ...

    def queries(self, ctx: Context) -> dict[str, str]: ...

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict: ...


# --------------------------------------------------------------------------- helpers


def vector(results: Results, name: str) -> Sequence[Sample]:
    value = results.get(name)
    if value is None:
        raise Unavailable(f"query {name} was not run")
    if isinstance(value, ProviderError):
        raise Unavailable(f"query {name} failed: {value}")
    return value


def scalar(results: Results, name: str) -> float | None:
    values = [s.value for s in vector(results, name) if not math.isnan(s.value)]
    return sum(values) if values else None


def by_label(results: Results, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in vector(results, name):
        if not math.isnan(s.value):
            key = s.labels.get(label, "")
            out[key] = out.get(key, 0.0) + s.value
    return out


def count(value: float | None) -> int:
    """A whole, non-negative event count from an extrapolated ``increase()``."""
    return 0 if value is None or not math.isfinite(value) else max(0, round(value))


def requests(results: Results, track: str, scope: str) -> tuple[int, int]:
    """(server errors, requests) of a track over a scope."""
    n = count(scalar(results, q.REQUESTS.format(track=track) + "@" + scope))
    e = count(scalar(results, q.ERRORS.format(track=track) + "@" + scope))
    return min(e, n), n


def request_queries(ctx: Context) -> dict[str, str]:
    """Requests and server errors per track and scope (shared by several checks)."""
    out: dict[str, str] = {}
    for track in ("stable", "canary"):
        base = ctx.predict_selector(track)
        errors = base[:-1] + ',outcome="server_error"}'
        for scope in (STEP, ROLLOUT):
            rng = ctx.range(scope)
            out[q.REQUESTS.format(track=track) + "@" + scope] = (
                f"sum(increase({REQUESTS_TOTAL}{base}{rng}))"
            )
            out[q.ERRORS.format(track=track) + "@" + scope] = (
                f"sum(increase({REQUESTS_TOTAL}{errors}{rng}))"
            )
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _verdict(check: str, test: str, outcome: str, message: str, **kw: object) -> Verdict:
    return Verdict.model_validate(
        {"check": check, "test": test, "outcome": outcome, "message": message, **kw}
    )


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
            f"rate above {_fmt(lo)} (alpha {_fmt(risk.fail)}), below {_fmt(hi)} "
            f"(risk {_fmt(risk.pass_)}), anytime"
        )
        common = {"value": e / n if n else None, "threshold": limit, "samples": n}
        common.update({"lower": lo, "upper": hi})
        if lo > limit:
            msg = f"{counts}: {bounds} > max {limit}"
            return _verdict(self.name, self.test, "fail", msg, **common)
        if hi <= limit:
            return _verdict(
                self.name, self.test, "pass", f"{counts}: {bounds} <= max {limit}", **common
            )
        more = seq.requests_to_decide(e, n, risk.pass_, limit)
        msg = f"{counts}: {bounds} straddles max {limit}"
        return _verdict(self.name, self.test, "inconclusive", msg, needed=more, **common)


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
            return _verdict(self.name, self.test, "fail", msg, samples=n_c, threshold=tol, **extra)
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
            return _verdict(self.name, self.test, "pass", msg, **extra)
        more = seq.requests_to_decide(ec, nc, risk.pass_ / 4, tol + lo_s)
        msg = f"{counts}; {evidence}; {bound} > maxIncrease {tol}: not yet evidence of safety"
        return _verdict(self.name, self.test, "inconclusive", msg, needed=more, **extra)


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
            return _verdict(
                self.name,
                self.test,
                "noData",
                "no canary latency observations at this step",
                samples=0,
                threshold=spec.max_seconds,
            )
        p = f"p{qn * 100:g}"
        counts = (
            f"canary {p} in ({_fmt(lc)}, {_fmt(uc)}]s from {nc} requests, stable {p} in "
            f"({_fmt(ls)}, {_fmt(us)}]s from {ns} (bucket edges, anytime; lower canary and upper "
            f"stable bounds at alpha {_fmt(a)}, the others at risk {_fmt(b)})"
        )
        extra: dict[str, object] = {"samples": nc, "lower": lc, "upper": uc}
        ratio = spec.max_ratio
        if lc >= spec.max_seconds:
            msg = f"{counts}: above maxSeconds {spec.max_seconds}"
            return _verdict(self.name, self.test, "fail", msg, threshold=spec.max_seconds, **extra)
        if ratio is not None and ns > 0 and math.isfinite(us) and lc >= ratio * us:
            msg = f"{counts}: canary above {ratio} x stable's upper bound {_fmt(ratio * us)}s"
            return _verdict(self.name, self.test, "fail", msg, threshold=ratio * us, **extra)
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
                    f"min(maxSeconds {spec.max_seconds}, {ratio} x stable's lower bound {_fmt(ls)}s)"
                )
            )
            return _verdict(
                self.name, self.test, "pass", f"{counts}: within {basis}", threshold=limit, **extra
            )
        why = (
            "stable's quantile is not yet bounded below"
            if ls == 0 and ratio
            else (f"canary's upper bound {_fmt(uc)}s > {_fmt(limit)}s")
        )
        needed = max(0, ctx.analysis.min_samples - nc) or None
        msg = f"{counts}: not yet evidence of safety ({why})"
        return _verdict(
            self.name, self.test, "inconclusive", msg, threshold=limit, needed=needed, **extra
        )


# --------------------------------------------------------------------------- predictions


def psi_term(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    a = np.clip(a, PSI_FLOOR, 1.0)
    e = np.clip(e, PSI_FLOOR, 1.0)
    out: np.ndarray = (a - e) * np.log(a / e)
    return out


PSI_FLOOR = 1e-4


def psi_bounds(
    canary: Mapping[str, float], stable: Mapping[str, float], alpha: float
) -> tuple[float, float, float, int, int]:
    """(estimate, lower, upper) of PSI between two binned distributions, anytime-valid.

    Each bin's share in each version gets a confidence sequence (budget split over the
    bins of both); PSI's terms are convex, so its extremes over those boxes are found bin
    by bin at the corners. Shares are floored at 1e-4 so an empty bin counts, finitely.
    """
    bins = sorted(set(canary) | set(stable))
    c = np.array([count(canary.get(b, 0.0)) for b in bins], dtype=float)
    s = np.array([count(stable.get(b, 0.0)) for b in bins], dtype=float)
    nc, ns = c.sum(), s.sum()
    if not bins or nc == 0 or ns == 0:
        return 0.0, 0.0, math.inf, int(nc), int(ns)
    a = alpha / (2 * len(bins))
    lc, hc = seq.rate_bounds(c, np.full_like(c, nc), a)
    ls, hs = seq.rate_bounds(s, np.full_like(s, ns), a)
    corners = np.stack([psi_term(lc, ls), psi_term(lc, hs), psi_term(hc, ls), psi_term(hc, hs)])
    upper = float(corners.max(axis=0).sum())
    low = np.where(lc > hs, psi_term(lc, hs), np.where(ls > hc, psi_term(hc, ls), 0.0))
    estimate = float(psi_term(c / nc, s / ns).sum())
    return estimate, float(low.sum()), upper, int(nc), int(ns)


@dataclass(frozen=True)
class PredictionDrift:
    """The canary's prediction distribution vs stable's over the rollout (PSI bounds)."""

    name: str = "predictionDrift"
    sequential: bool = True
    test: str = "PSI bounds from bin counts"

    def enabled(self, analysis: Analysis) -> bool:
        m = analysis.metrics.prediction_drift
        return m is not None and m.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        rng = ctx.range(ROLLOUT)
        return {
            q.PREDICTION_BINS.format(track=track): (
                f"sum by (bin) (increase({n.total(n.PREDICTION_BIN)}{ctx.selector(track)}{rng}))"
            )
            for track in ("stable", "canary")
        }

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        spec = ctx.analysis.metrics.prediction_drift
        assert spec is not None
        canary = by_label(results, q.PREDICTION_BINS.format(track="canary"), "bin")
        stable = by_label(results, q.PREDICTION_BINS.format(track="stable"), "bin")
        est, lo, _, nc, ns = psi_bounds(canary, stable, risk.fail)
        _, _, hi, _, _ = psi_bounds(canary, stable, risk.pass_)
        if nc == 0 or ns == 0:
            return _verdict(
                self.name,
                self.test,
                "noData",
                f"predictions since the rollout began: canary {nc}, stable {ns}: nothing to compare",
                samples=nc,
                threshold=spec.max_psi,
            )
        msg = (
            f"prediction PSI {est:.3f} in [{lo:.3f}, {_fmt(hi)}] from {nc} canary and {ns} "
            f"stable rows (anytime; lower at alpha {_fmt(risk.fail)}, upper at risk "
            f"{_fmt(risk.pass_)})"
        )
        extra: dict[str, object] = {
            "value": est,
            "threshold": spec.max_psi,
            "samples": nc,
            "lower": lo,
            "upper": hi,
        }
        if lo > spec.max_psi:
            return _verdict(self.name, self.test, "fail", f"{msg} > maxPsi {spec.max_psi}", **extra)
        if hi <= spec.max_psi:
            return _verdict(
                self.name, self.test, "pass", f"{msg} <= maxPsi {spec.max_psi}", **extra
            )
        return _verdict(
            self.name, self.test, "inconclusive", f"{msg} straddles maxPsi {spec.max_psi}", **extra
        )


# --------------------------------------------------------------------------- feedback


@dataclass(frozen=True)
class FeedbackAccuracy:
    """Accuracy from delayed ground truth vs stable's, over the rollout."""

    name: str = "feedbackAccuracy"
    sequential: bool = True
    test: str = "rate confidence sequences"

    def enabled(self, analysis: Analysis) -> bool:
        m = analysis.metrics.feedback_accuracy
        return m is not None and m.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        rng = ctx.range(ROLLOUT)
        return {
            q.FEEDBACK.format(track=track): (
                f"sum by (outcome) (increase({n.total(n.FEEDBACK)}{ctx.selector(track)}{rng}))"
            )
            for track in ("stable", "canary")
        }

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        spec = ctx.analysis.metrics.feedback_accuracy
        assert spec is not None

        def counts(track: str) -> tuple[int, int]:
            by = by_label(results, q.FEEDBACK.format(track=track), "outcome")
            wrong = count(by.get("incorrect"))
            return wrong, wrong + count(by.get("correct"))

        w_c, n_c = counts("canary")
        w_s, n_s = counts("stable")
        # Fail side: canary's lower and stable's upper error bounds at alpha / 2 each; pass
        # side: the other two at passRisk / 2.
        lo_c = float(seq.rate_bounds(w_c, n_c, risk.fail / 2)[0][0])
        hi_s = float(seq.rate_bounds(w_s, n_s, risk.fail / 2)[1][0])
        hi_c = float(seq.rate_bounds(w_c, n_c, risk.pass_ / 2)[1][0])
        lo_s = float(seq.rate_bounds(w_s, n_s, risk.pass_ / 2)[0][0])
        acc = 1 - w_c / n_c if n_c else None
        msg = (
            f"feedback canary {n_c - w_c}/{n_c} correct (accuracy in [{1 - hi_c:.4f}, "
            f"{1 - lo_c:.4f}]), stable {n_s - w_s}/{n_s}; accuracy drop in "
            f"[{lo_c - hi_s:+.4f}, {hi_c - lo_s:+.4f}] (anytime, alpha {_fmt(risk.fail)}, "
            f"risk {_fmt(risk.pass_)})"
        )
        extra: dict[str, object] = {
            "value": acc,
            "threshold": spec.max_decrease,
            "samples": n_c,
            "lower": lo_c - hi_s,
            "upper": hi_c - lo_s,
        }
        if spec.min_accuracy is not None and 1 - lo_c < spec.min_accuracy:
            return _verdict(
                self.name,
                self.test,
                "fail",
                f"{msg}: below minAccuracy {spec.min_accuracy}",
                **extra,
            )
        if n_s and lo_c - hi_s > spec.max_decrease:
            return _verdict(
                self.name,
                self.test,
                "fail",
                f"{msg}: drop > maxDecrease {spec.max_decrease}",
                **extra,
            )
        if n_c < spec.min_samples:
            return _verdict(
                self.name,
                self.test,
                "noData",
                f"{msg}; {n_c} canary feedback rows, need {spec.min_samples} before a pass",
                needed=spec.min_samples - n_c,
                **extra,
            )
        ok_min = spec.min_accuracy is None or 1 - hi_c >= spec.min_accuracy
        if ok_min and hi_c - lo_s <= spec.max_decrease:
            return _verdict(
                self.name,
                self.test,
                "pass",
                f"{msg}: within maxDecrease {spec.max_decrease}",
                **extra,
            )
        return _verdict(
            self.name, self.test, "inconclusive", f"{msg}: not yet evidence of safety", **extra
        )


# --------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class Agreement:
    """Paired agreement: mirrored requests answered the same by canary and stable."""

    name: str = "agreement"
    sequential: bool = True
    test: str = "disagreement e-process"

    def enabled(self, analysis: Analysis) -> bool:
        m = analysis.metrics.agreement
        return m is not None and m.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        rng = ctx.range(ROLLOUT)
        return {
            q.AGREEMENT: (  # rows compared by the router (traffic.agreement mirrors them)
                f"sum by (result) (increase({q.AGREEMENT_SERIES}{ctx.selector('canary')}{rng}))"
            )
        }

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        spec = ctx.analysis.metrics.agreement
        assert spec is not None
        by = by_label(results, q.AGREEMENT, "result")
        agree, disagree = count(by.get("agree")), count(by.get("disagree"))
        n = agree + disagree
        extra: dict[str, object] = {"threshold": spec.min, "samples": n}
        if n == 0:
            msg = "no mirrored row compared yet (traffic.agreement.percent sets the mirroring)"
            return _verdict(self.name, self.test, "noData", msg, **extra)
        lo, hi = (float(v[0]) for v in seq.rate_bounds(agree, n, risk.pass_))
        log_e = shared.disagreement_log_e(agree, disagree, spec.min)
        extra.update({"value": agree / n, "lower": lo, "upper": hi, "logEvidence": log_e})
        msg = (
            f"{agree}/{n} mirrored rows agree: rate in [{lo:.4f}, {hi:.4f}], e-value "
            f"{math.exp(min(log_e, 700)):.3g} (threshold {1 / risk.fail:.3g})"
        )
        if log_e >= shared.threshold(risk.fail):
            return _verdict(self.name, self.test, "fail", f"{msg}: below min {spec.min}", **extra)
        if lo >= spec.min:
            return _verdict(self.name, self.test, "pass", f"{msg} >= min {spec.min}", **extra)
        more = seq.requests_to_decide(disagree, n, risk.pass_, 1 - spec.min)
        return _verdict(
            self.name,
            self.test,
            "inconclusive",
            f"{msg} straddles min {spec.min}",
            needed=more,
            **extra,
        )


# --------------------------------------------------------------------------- window checks


@dataclass(frozen=True)
class InputDrift:
    """Canary input PSI in excess of stable's (each against its own training profile)."""

    name: str = "inputDrift"
    sequential: bool = False
    test: str = "PSI excess over stable (last drift window)"

    def enabled(self, analysis: Analysis) -> bool:
        m = analysis.metrics.input_drift
        return m is not None and m.enabled

    def queries(self, ctx: Context) -> dict[str, str]:
        out = {
            q.INPUT_PSI.format(
                track=track
            ): f"max by (feature) ({n.DRIFT_PSI}{ctx.selector(track)})"
            for track in ("stable", "canary")
        }
        out[q.DRIFT_WINDOWS] = f"sum({n.total(n.DRIFT_WINDOWS)}{ctx.selector('canary')})"
        return out

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        spec = ctx.analysis.metrics.input_drift
        assert spec is not None
        limit = spec.max_psi_increase
        windows = scalar(results, q.DRIFT_WINDOWS) or 0.0
        if windows < 1:
            msg = "the canary has completed no drift window yet"
            return _verdict(self.name, self.test, "noData", msg, threshold=limit, samples=0)
        canary = by_label(results, q.INPUT_PSI.format(track="canary"), "feature")
        stable = by_label(results, q.INPUT_PSI.format(track="stable"), "feature")
        common = sorted(set(canary) & set(stable))
        if not common:
            msg = "no feature has drift values from both versions"
            return _verdict(
                self.name, self.test, "noData", msg, threshold=limit, samples=round(windows)
            )
        feature = max(common, key=lambda f: canary[f] - stable[f])
        excess = canary[feature] - stable[feature]
        ok = excess <= limit
        return _verdict(
            self.name,
            self.test,
            "pass" if ok else "fail",
            f"feature {feature}: canary PSI {canary[feature]:.3f} vs stable {stable[feature]:.3f} "
            f"(excess {excess:+.3f}) vs own training profiles",
            value=excess,
            threshold=limit,
            samples=round(windows),
        )


@dataclass(frozen=True)
class Custom:
    """A PromQL check that must stay within [min, max]."""

    name: str
    lo: float | None
    hi: float | None
    query: str
    sequential: bool = False
    test: str = "custom PromQL within bounds"

    def enabled(self, analysis: Analysis) -> bool:
        return True

    def queries(self, ctx: Context) -> dict[str, str]:
        return {
            q.CUSTOM.format(name=self.name): q.render_custom(
                self.query,
                deployment=ctx.deployment,
                namespace=ctx.namespace,
                version=ctx.canary_version,
            )
        }

    def judge(self, ctx: Context, results: Results, risk: Risk) -> Verdict:
        value = scalar(results, q.CUSTOM.format(name=self.name))
        threshold = self.hi if self.hi is not None else self.lo
        if value is None:
            return _verdict(self.name, self.test, "noData", "empty result", threshold=threshold)
        ok = (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
        return _verdict(
            self.name,
            self.test,
            "pass" if ok else "fail",
            f"{self.name} = {value:.4g}, allowed [{'-inf' if self.lo is None else self.lo}, "
            f"{'inf' if self.hi is None else self.hi}]",
            value=value,
            threshold=threshold,
        )


BUILTIN: tuple[Check, ...] = (
    ErrorRate(),
    ErrorRateVsStable(),
    Latency(),
    InputDrift(),
    PredictionDrift(),
    FeedbackAccuracy(),
    Agreement(),
)

# Shares of the false-rollback budget per check (one each; room for heavier ones).
_SHARES: dict[str, int] = {}


def enabled_checks(analysis: Analysis) -> list[Check]:
    out: list[Check] = [c for c in BUILTIN if c.enabled(analysis)]
    out.extend(Custom(c.name, c.min_value, c.max_value, c.query) for c in analysis.metrics.custom)
    return out


def risk_per_check(ctx: Context, checks: Sequence[Check]) -> Risk:
    """Each sequential check's share of the budgets (Bonferroni)."""
    shares = max(1, sum(_SHARES.get(c.name, 1) for c in checks if c.sequential))
    return Risk(fail=ctx.budget() / shares, pass_=ctx.analysis.pass_risk / shares)


def plan(ctx: Context) -> dict[str, str]:
    """Every query the enabled checks need, by name (freshness first)."""
    out = {q.FRESHNESS: q.freshness_query(ctx.analysis, ctx.selector("canary"))}
    out.update(request_queries(ctx))  # the engine counts the step's requests (minSamples)
    for check in enabled_checks(ctx.analysis):
        out.update(check.queries(ctx))
    return out


def analysis_queries(
    analysis: Analysis,
    deployment: str,
    namespace: str,
    stable_version: str,
    canary_version: str,
    *,
    step_seconds: float = 0.0,
    rollout_seconds: float = 0.0,
    steps: int = 1,
) -> dict[str, str]:
    """Every query one analysis run needs, by name (each check says which it needs)."""
    ctx = Context(
        analysis=analysis,
        deployment=deployment,
        namespace=namespace,
        stable_version=stable_version,
        canary_version=canary_version,
        step_seconds=step_seconds,
        rollout_seconds=rollout_seconds,
        steps=steps,
    )
    return plan(ctx)


def evaluate(ctx: Context, results: Results) -> list[Verdict]:
    """Verdicts of one analysis run."""
    checks = enabled_checks(ctx.analysis)
    names = [c.name for c in checks]
    try:
        age = scalar(results, q.FRESHNESS)
    except Unavailable as exc:
        return [_verdict(n, "", "providerError", str(exc)) for n in names]
    if age is None:
        msg = "no metrics from the canary yet (not scraped)"
        return [_verdict(n, "", "noData", msg) for n in names]
    limit = parse_duration(ctx.analysis.max_staleness)
    if age > limit:
        msg = f"canary metrics are stale: last scrape {age:.0f}s ago (maxStaleness {limit:.0f}s)"
        return [_verdict(n, "", "providerError", msg) for n in names]
    risk = risk_per_check(ctx, checks)
    out = []
    for check in checks:
        try:
            out.append(check.judge(ctx, results, risk))
        except Unavailable as exc:
            out.append(_verdict(check.name, check.test, "providerError", str(exc)))
    return out
