"""What the act layer needs before ``decide``: the revisions to run and the queries to ask.

``wanted_revisions`` and ``plan_queries`` run the engine's first two steps (controls,
target) on their own, so that the act layer can start revisions and run queries before
calling ``decide``; the steps are idempotent, so ``decide`` reaches the same target (pure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mlrollout.operator.decide.checks as checks
import mlrollout.operator.decide.guard as guard
from mlrollout.operator import queries
from mlrollout.operator.decide.lifecycle import prepare
from mlrollout.operator.interfaces import (
    DeploymentKey,
    ProviderError,
    RevisionSpec,
    RevisionState,
    Sample,
)
from mlrollout.operator.model import ModelDeploymentSpec, ModelDeploymentStatus, parse_duration


@dataclass(frozen=True)
class Observations:
    """What the act layer saw: revision readiness and query results by name."""

    revisions: Mapping[str, RevisionState] = field(default_factory=dict)
    metrics: Mapping[str, Sequence[Sample] | ProviderError] = field(default_factory=dict)
    # The router guard's report (docs/routing.md): a trip naming the canary is its rollback.
    router_guard: Mapping[str, Any] | None = None


def revision_specs(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> dict[str, RevisionSpec]:
    out: dict[str, RevisionSpec] = {}
    for rev in (st.stable, st.canary):
        if rev is not None:
            out[rev.id] = RevisionSpec(
                revision=rev.id, track=rev.track, model=rev.model_ref(), serving=spec.serving
            )
    return out


def wanted_revisions(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
) -> dict[str, RevisionSpec]:
    """The revisions to run before deciding: stable, plus the canary the spec asks for."""
    return revision_specs(spec, prepare(spec, status, now).st)


def analysis_due(spec: ModelDeploymentSpec, st: ModelDeploymentStatus, now: datetime) -> bool:
    last = st.analysis.last_run_at
    return last is None or (now - last).total_seconds() >= parse_duration(
        spec.rollout.analysis.interval
    )


def check_context(
    spec: ModelDeploymentSpec, st: ModelDeploymentStatus, now: datetime, key: DeploymentKey | None
) -> checks.Context:
    assert st.stable is not None and st.canary is not None
    step_start = st.step_started_at or now
    rollout_start = st.analysis.started_at or step_start
    return checks.Context(
        analysis=spec.rollout.analysis,
        deployment=key.name if key else "",
        namespace=key.namespace if key else "",
        stable_version=st.stable.version,
        canary_version=st.canary.version,
        step_seconds=max(0.0, (now - step_start).total_seconds()),
        rollout_seconds=max(0.0, (now - rollout_start).total_seconds()),
        steps=len(spec.rollout.steps),
        carried=dict(st.analysis.carried_evidence),
        guard_alpha=guard_alpha(spec),
    )


def guard_alpha(spec: ModelDeploymentSpec) -> float:
    """What the router guard spends of ``analysis.alpha`` (both its tests)."""
    g = guard.table_options(spec).get("guard")
    if not isinstance(g, Mapping):
        return 0.0
    return float(g["alpha"]) * (2 if g.get("minAgreement") is not None else 1)


def plan_queries(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    key: DeploymentKey,
    states: Mapping[str, RevisionState],
    now: datetime,
) -> dict[str, str]:
    """The PromQL queries ``decide`` needs now (empty when no analysis is due)."""
    st = prepare(spec, status, now).st
    if st.stable is None or not analysis_due(spec, st, now):
        return {}
    out = queries.stable_drift_queries(key.name, key.namespace, st.stable.version)
    canary = st.canary
    if (
        canary is not None
        and is_ready(states, canary.id)
        and not st.controls.promote_pending
        and st.step_started_at is not None  # a step that starts now has no traffic to judge
    ):
        out.update(checks.plan(check_context(spec, st, now, key)))
    return out


def is_ready(states: Mapping[str, RevisionState], rev: str) -> bool:
    state = states.get(rev)
    return state is not None and state.ready
