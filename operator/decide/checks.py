"""Analysis checks: one object per check, holding its queries, its test and its verdict (pure).

A check is one object: a name, when it is enabled, which PromQL it needs (named queries,
read back by the same object) and how the results turn into a ``Verdict``. The objects
live in ``checks_requests.py``, ``checks_outputs.py`` and ``checks_window.py`` (shared
parts: ``checkbase.py``); ``BUILTIN`` here lists them in the order verdicts are reported.

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

from collections.abc import Sequence

from mlrollout.operator import queries as q
from mlrollout.operator.decide.checkbase import ROLLOUT as ROLLOUT
from mlrollout.operator.decide.checkbase import STEP as STEP
from mlrollout.operator.decide.checkbase import Check as Check
from mlrollout.operator.decide.checkbase import Context as Context
from mlrollout.operator.decide.checkbase import Results as Results
from mlrollout.operator.decide.checkbase import Risk as Risk
from mlrollout.operator.decide.checkbase import Unavailable as Unavailable
from mlrollout.operator.decide.checkbase import by_label as by_label
from mlrollout.operator.decide.checkbase import count as count
from mlrollout.operator.decide.checkbase import make_verdict
from mlrollout.operator.decide.checkbase import request_queries as request_queries
from mlrollout.operator.decide.checkbase import requests as requests
from mlrollout.operator.decide.checkbase import scalar as scalar
from mlrollout.operator.decide.checkbase import vector as vector
from mlrollout.operator.decide.checks_outputs import PSI_FLOOR as PSI_FLOOR
from mlrollout.operator.decide.checks_outputs import Agreement, FeedbackAccuracy
from mlrollout.operator.decide.checks_outputs import PredictionDrift as PredictionDrift
from mlrollout.operator.decide.checks_outputs import psi_bounds as psi_bounds
from mlrollout.operator.decide.checks_outputs import psi_term as psi_term
from mlrollout.operator.decide.checks_requests import ErrorRate, ErrorRateVsStable, Latency
from mlrollout.operator.decide.checks_requests import quantile_bounds as quantile_bounds
from mlrollout.operator.decide.checks_window import Custom, InputDrift
from mlrollout.operator.model import Analysis, Verdict, parse_duration

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
        return [make_verdict(n, "", "providerError", str(exc)) for n in names]
    if age is None:
        msg = "no metrics from the canary yet (not scraped)"
        return [make_verdict(n, "", "noData", msg) for n in names]
    limit = parse_duration(ctx.analysis.max_staleness)
    if age > limit:
        msg = f"canary metrics are stale: last scrape {age:.0f}s ago (maxStaleness {limit:.0f}s)"
        return [make_verdict(n, "", "providerError", msg) for n in names]
    risk = risk_per_check(ctx, checks)
    out = []
    for check in checks:
        try:
            out.append(check.judge(ctx, results, risk))
        except Unavailable as exc:
            out.append(make_verdict(check.name, check.test, "providerError", str(exc)))
    return out
