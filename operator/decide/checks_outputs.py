"""Checks on what the canary answers (pure): prediction drift against stable (PSI bounds),
accuracy from delayed ground truth, and row agreement on mirrored requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import mlrollout.operator.decide.sequential as seq
import numpy as np
from mlrollout.operator import queries as q
from mlrollout.operator.decide.checkbase import (
    ROLLOUT,
    Context,
    Results,
    Risk,
    by_label,
    count,
    fmt,
    make_verdict,
)
from mlrollout.operator.model import Analysis, Verdict
from mlrollout.services import metric_names as n
from mlrollout.services import sequential as shared

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
            return make_verdict(
                self.name,
                self.test,
                "noData",
                f"predictions since the rollout began: canary {nc}, stable {ns}: nothing to compare",
                samples=nc,
                threshold=spec.max_psi,
            )
        msg = (
            f"prediction PSI {est:.3f} in [{lo:.3f}, {fmt(hi)}] from {nc} canary and {ns} "
            f"stable rows (anytime; lower at alpha {fmt(risk.fail)}, upper at risk "
            f"{fmt(risk.pass_)})"
        )
        extra: dict[str, object] = {
            "value": est,
            "threshold": spec.max_psi,
            "samples": nc,
            "lower": lo,
            "upper": hi,
        }
        if lo > spec.max_psi:
            return make_verdict(
                self.name, self.test, "fail", f"{msg} > maxPsi {spec.max_psi}", **extra
            )
        if hi <= spec.max_psi:
            return make_verdict(
                self.name, self.test, "pass", f"{msg} <= maxPsi {spec.max_psi}", **extra
            )
        return make_verdict(
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
            f"[{lo_c - hi_s:+.4f}, {hi_c - lo_s:+.4f}] (anytime, alpha {fmt(risk.fail)}, "
            f"risk {fmt(risk.pass_)})"
        )
        extra: dict[str, object] = {
            "value": acc,
            "threshold": spec.max_decrease,
            "samples": n_c,
            "lower": lo_c - hi_s,
            "upper": hi_c - lo_s,
        }
        if spec.min_accuracy is not None and 1 - lo_c < spec.min_accuracy:
            return make_verdict(
                self.name,
                self.test,
                "fail",
                f"{msg}: below minAccuracy {spec.min_accuracy}",
                **extra,
            )
        if n_s and lo_c - hi_s > spec.max_decrease:
            return make_verdict(
                self.name,
                self.test,
                "fail",
                f"{msg}: drop > maxDecrease {spec.max_decrease}",
                **extra,
            )
        if n_c < spec.min_samples:
            return make_verdict(
                self.name,
                self.test,
                "noData",
                f"{msg}; {n_c} canary feedback rows, need {spec.min_samples} before a pass",
                needed=spec.min_samples - n_c,
                **extra,
            )
        ok_min = spec.min_accuracy is None or 1 - hi_c >= spec.min_accuracy
        if ok_min and hi_c - lo_s <= spec.max_decrease:
            return make_verdict(
                self.name,
                self.test,
                "pass",
                f"{msg}: within maxDecrease {spec.max_decrease}",
                **extra,
            )
        return make_verdict(
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
            return make_verdict(self.name, self.test, "noData", msg, **extra)
        lo, hi = (float(v[0]) for v in seq.rate_bounds(agree, n, risk.pass_))
        log_e = shared.disagreement_log_e(agree, disagree, spec.min)
        extra.update({"value": agree / n, "lower": lo, "upper": hi, "logEvidence": log_e})
        msg = (
            f"{agree}/{n} mirrored rows agree: rate in [{lo:.4f}, {hi:.4f}], e-value "
            f"{math.exp(min(log_e, 700)):.3g} (threshold {1 / risk.fail:.3g})"
        )
        if log_e >= shared.threshold(risk.fail):
            return make_verdict(
                self.name, self.test, "fail", f"{msg}: below min {spec.min}", **extra
            )
        if lo >= spec.min:
            return make_verdict(self.name, self.test, "pass", f"{msg} >= min {spec.min}", **extra)
        more = seq.requests_to_decide(disagree, n, risk.pass_, 1 - spec.min)
        return make_verdict(
            self.name,
            self.test,
            "inconclusive",
            f"{msg} straddles min {spec.min}",
            needed=more,
            **extra,
        )
