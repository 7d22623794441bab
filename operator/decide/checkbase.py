"""What every analysis check shares (pure): the ``Context`` it is judged in, its share of
the error budgets (``Risk``), the ``Check`` protocol, and reading named query results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mlrollout.operator import queries as q
from mlrollout.operator.interfaces import ProviderError, Sample
from mlrollout.operator.model import Analysis, Verdict
from mlrollout.services import metric_names as n

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


def fmt(x: float) -> str:
    return f"{x:.4g}"


def make_verdict(check: str, test: str, outcome: str, message: str, **kw: object) -> Verdict:
    return Verdict.model_validate(
        {"check": check, "test": test, "outcome": outcome, "message": message, **kw}
    )
