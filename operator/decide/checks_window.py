"""Window checks (pure): one number per analysis run against a limit; ``failureLimit``
failed runs of the same check in a row roll back. Input drift and custom PromQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlrollout.operator import queries as q
from mlrollout.operator.decide.checkbase import (
    Context,
    Results,
    Risk,
    by_label,
    make_verdict,
    scalar,
)
from mlrollout.operator.model import Analysis, Verdict
from mlrollout.services import metric_names as n

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
            return make_verdict(self.name, self.test, "noData", msg, threshold=limit, samples=0)
        canary = by_label(results, q.INPUT_PSI.format(track="canary"), "feature")
        stable = by_label(results, q.INPUT_PSI.format(track="stable"), "feature")
        common = sorted(set(canary) & set(stable))
        if not common:
            msg = "no feature has drift values from both versions"
            return make_verdict(
                self.name, self.test, "noData", msg, threshold=limit, samples=round(windows)
            )
        feature = max(common, key=lambda f: canary[f] - stable[f])
        excess = canary[feature] - stable[feature]
        ok = excess <= limit
        return make_verdict(
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
            return make_verdict(self.name, self.test, "noData", "empty result", threshold=threshold)
        ok = (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
        return make_verdict(
            self.name,
            self.test,
            "pass" if ok else "fail",
            f"{self.name} = {value:.4g}, allowed [{'-inf' if self.lo is None else self.lo}, "
            f"{'inf' if self.hi is None else self.hi}]",
            value=value,
            threshold=threshold,
        )
