"""The thin act layer shared by Kubernetes mode and local mode.

One call observes, decides and applies, in this order:

1. parse the spec (a bad one gets the InvalidSpec phase and nothing else changes);
2. start/keep the revisions the engine wants before judging (``wanted_revisions``);
3. run the Prometheus queries the engine asks for (``plan_queries``), mapping failures to
   provider errors per query;
4. ``decide``;
5. apply: routes first (so traffic leaves a revision before it stops), then events (the
   decision is told before its consequences), then the final set of revisions.

The caller persists ``ReconcileResult.status`` (kopf: ``patch.status``; local mode: a file)
and calls again after ``requeue_after`` seconds or when the spec changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlrollout.operator.decide import (
    Decision,
    Observations,
    decide,
    decide_invalid,
    plan_queries,
    wanted_revisions,
)
from mlrollout.operator.interfaces import (
    DeploymentKey,
    Event,
    MetricsProvider,
    ProviderError,
    RevisionState,
    RoutesChanged,
    Runtime,
    Sample,
    TrafficRouter,
)
from mlrollout.operator.model import ModelDeploymentSpec, ModelDeploymentStatus
from mlrollout.services.router.table import RoutingTable, parse_table
from pydantic import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileResult:
    status: dict[str, Any]  # camelCase JSON, ready for patch.status / a status file
    events: tuple[Event, ...]
    requeue_after: float  # seconds
    decision: Decision
    state: ModelDeploymentStatus  # the same status, typed: read this, not ``status`` keys


def load_status(raw: Mapping[str, Any] | None) -> ModelDeploymentStatus:
    """Status as stored, without the top-level fields that do not validate.

    Dropping only the unreadable fields (say a phase written by a newer operator) keeps
    stable and canary: restarting from an empty status would make the canary's model the
    first deployment, promoted without analysis. Never crash-loops on bad status.
    """
    data = dict(raw or {})
    for _ in range(len(data) + 1):  # each round drops at least one key
        try:
            return ModelDeploymentStatus.model_validate(data)
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            if not bad & data.keys():
                break
            log.warning("status fields %s unreadable, dropping them: %s", sorted(bad), exc)
            data = {k: v for k, v in data.items() if k not in bad}
    log.warning("status unreadable, starting from an empty status")
    return ModelDeploymentStatus()


def reconcile(
    key: DeploymentKey,
    spec: Mapping[str, Any],
    status: Mapping[str, Any] | None,
    now: datetime,
    *,
    runtime: Runtime,
    router: TrafficRouter,
    metrics: MetricsProvider,
    generation: int | None = None,
) -> ReconcileResult:
    """Observe, decide, apply for one ModelDeployment. ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("reconcile needs a timezone-aware now, e.g. datetime.now(UTC)")
    current = load_status(status)
    try:
        parsed = ModelDeploymentSpec.model_validate(dict(spec))
    except ValidationError as exc:
        decision = decide_invalid(current, _validation_message(exc), now, generation)
        return _apply(key, decision, runtime, router, None, None)

    wanted = wanted_revisions(parsed, current, now)
    states = runtime.ensure_revisions(key, wanted)
    queries = plan_queries(parsed, current, key, states, now)
    observations = Observations(
        revisions=states,
        metrics=_run_queries(metrics, queries, now),
        router_guard=_guard_report(router) if current.canary is not None else None,
    )
    decision = decide(parsed, current, observations, now, generation)
    return _apply(key, decision, runtime, router, states, set(wanted))


def _guard_report(router: TrafficRouter) -> dict[str, Any] | None:
    try:
        return router.guard_report()
    except Exception as exc:  # the guard is an extra: never let it stop a reconcile
        log.warning("cannot read the router guard's report: %s", exc)
        return None


def _run_queries(
    metrics: MetricsProvider, queries: Mapping[str, str], now: datetime
) -> dict[str, list[Sample] | ProviderError]:
    if not queries:
        return {}
    if not metrics.is_online():
        down = ProviderError("metrics provider is offline")
        return dict.fromkeys(queries, down)
    results: dict[str, list[Sample] | ProviderError] = {}
    for name, promql in queries.items():
        try:
            results[name] = metrics.query(promql, now)
        except ProviderError as exc:
            results[name] = exc
    return results


def _apply(
    key: DeploymentKey,
    decision: Decision,
    runtime: Runtime,
    router: TrafficRouter,
    states: Mapping[str, RevisionState] | None,
    started: set[str] | None,
) -> ReconcileResult:
    status = decision.status
    if decision.routing is not None and states is not None:
        table = routing_table(key, decision, states)
        if table is not None:
            generation = _put_routes(router, table, status.routing_generation)
            if generation is not None:
                status = status.model_copy(update={"routing_generation": generation})
    # Events before stopping revisions: the decision (say a failed analysis run and the
    # rollback) is told before its consequence (the canary's server stopped).
    for event in decision.events:
        runtime.record(key, event)
    if started is not None and decision.wanted is not None and set(decision.wanted) != started:
        runtime.ensure_revisions(key, decision.wanted)
    return ReconcileResult(
        status=status.to_json(),
        events=decision.events,
        requeue_after=decision.requeue_after,
        decision=decision,
        state=status,
    )


ROUTE_ATTEMPTS = 3


def _put_routes(router: TrafficRouter, table: RoutingTable, last: int) -> int | None:
    """Write ``table`` unless it is in force; the generation written, or None.

    The generation continues from the table in force, so it is read right before the
    write; if another writer changed it in between (``RoutesChanged``), read and decide
    again, a bounded number of times (then the reconcile fails and is retried).
    """
    for attempt in range(ROUTE_ATTEMPTS):
        in_force = router.get_routes()
        if not _routes_differ(table, in_force):
            return None
        generation = max(last, in_force.generation if in_force else 0) + 1
        try:
            router.set_routes(table.with_generation(generation))
        except RoutesChanged:
            if attempt + 1 == ROUTE_ATTEMPTS:
                raise
            log.info("routing table changed while it was written; reading it again")
            continue
        return generation
    return None  # unreachable: the last attempt returns or raises


def routing_table(
    key: DeploymentKey, decision: Decision, states: Mapping[str, RevisionState]
) -> RoutingTable | None:
    """The routing table for the decision (generation 0), or None if a backend has no URL.

    Validated here, by the router's own parser, whichever router will carry it: a table
    the router would refuse raises ``TableError`` before anything is written."""
    routing = decision.routing
    if routing is None:
        return None
    backends: dict[str, dict[str, str]] = {}
    weights: dict[str, int] = {}
    for track, revision in routing.revisions.items():
        state = states.get(revision)
        weight = int(routing.weights.get(track, 0))
        if state is None or not state.url:
            if weight > 0:
                return None  # cannot route to it; keep the table in force
            continue
        backends[track] = {"url": state.url, "version": routing.versions.get(track, "")}
        weights[track] = weight
    if "stable" not in backends:
        return None
    return parse_table({
        "generation": 0,
        "deployment": key.name,
        "backends": backends,
        "weights": weights,
        "stickyHeader": routing.traffic.sticky_header,
        "shadowPercent": routing.traffic.shadow_percent if "canary" in backends else 0,
        # Only when on: a table without the key means off (and older tables stay equal).
        **(
            {"trackHeader": routing.traffic.track_header}
            if routing.traffic.track_header != "off"
            else {}
        ),
        **(
            {k: v for k, v in routing.options.items() if v is not None}
            if "canary" in backends
            else {}
        ),
    })  # fmt: skip


def _routes_differ(table: RoutingTable, in_force: RoutingTable | None) -> bool:
    """Whether the documents differ in anything but the generation."""
    if in_force is None:
        return True
    return table.to_doc() | {"generation": 0} != in_force.to_doc() | {"generation": 0}


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
