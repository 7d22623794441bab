"""kopf handler bodies: the exact status patch sent, skipping, serialisation, events.

The engine is replaced by a scripted ``reconcile`` where the test is about the handler;
the last tests run the real ``reconcile`` with fake plug-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from mlrollout.operator import builders as b
from mlrollout.operator import handlers as h
from mlrollout.operator.interfaces import DeploymentKey, Event, RevisionSpec, RevisionState, Sample
from mlrollout.operator.model import Traffic
from mlrollout.operator.reconcile import ReconcileResult, load_status
from mlrollout.operator.settings import OperatorSettings
from mlrollout.services.router.table import RoutingTable

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeRuntime:
    def __init__(self, emit: h.Emit) -> None:
        self.emit = emit
        self.calls: list[dict[str, RevisionSpec]] = []

    def ensure_revisions(
        self, deployment: DeploymentKey, wanted: Mapping[str, RevisionSpec]
    ) -> dict[str, RevisionState]:
        self.calls.append(dict(wanted))
        return {r: RevisionState(r, True, f"http://{r}") for r in wanted}

    def record(self, deployment: DeploymentKey, event: Event) -> None:
        self.emit(event)


class FakeRouter:
    def __init__(self) -> None:
        self.table: RoutingTable | None = None

    def set_routes(self, table: RoutingTable) -> None:
        self.table = table

    def get_routes(self) -> RoutingTable | None:
        return self.table

    def guard_report(self) -> dict[str, Any] | None:
        return None


class FakePlugins:
    def __init__(self) -> None:
        self.owners: list[b.Owner] = []
        self.runtimes: list[FakeRuntime] = []
        self.routers: list[FakeRouter] = []

    def runtime(self, owner: b.Owner, traffic: Traffic, emit: h.Emit) -> FakeRuntime:
        self.owners.append(owner)
        self.runtimes.append(FakeRuntime(emit))
        return self.runtimes[-1]

    def router(self, owner: b.Owner, traffic: Traffic) -> FakeRouter:
        self.routers.append(FakeRouter())
        return self.routers[-1]


class NoMetrics:
    def query(self, promql: str, now: datetime) -> list[Sample]:
        return []

    def is_online(self) -> bool:
        return True


class Scripted:
    """A reconcile that returns prepared results and records what it was given."""

    def __init__(self, *results: ReconcileResult) -> None:
        self.results = list(results)
        self.seen: list[dict[str, Any]] = []

    def __call__(
        self, key: DeploymentKey, spec: Any, status: Any, now: datetime, **kw: Any
    ) -> ReconcileResult:
        self.seen.append({"key": key, "status": dict(status or {}), "now": now, **kw})
        return self.results.pop(0)


def result(
    status: dict[str, Any], events: tuple[Event, ...] = (), requeue: float = 30.0
) -> ReconcileResult:
    return ReconcileResult(
        status=status,
        events=events,
        requeue_after=requeue,
        decision=None,  # type: ignore[arg-type]
        state=load_status(status),
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_deps(reconcile: Any) -> tuple[h.Deps, FakePlugins, Clock]:
    plugins, clock = FakePlugins(), Clock()
    deps = h.Deps(
        settings=OperatorSettings(),
        plugins=plugins,
        metrics=NoMetrics(),
        reconcile=reconcile,
        clock=lambda: NOW,
        monotonic=clock,
    )
    return deps, plugins, clock


def body(
    status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": spec
        if spec is not None
        else {"model": {"name": "fraud", "version": "1", "uri": "http://m/1.tgz"}},
        "status": status or {},
    }


PROGRESSING = {
    "phase": "Progressing",
    "canary": {"id": "bbb", "version": "2"},
    "weights": {"stable": 90, "canary": 10},
    "currentStep": 0,
}
PROMOTED = {"phase": "Healthy", "weights": {"stable": 100, "canary": 0}, "currentStep": 0}


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({}, {"phase": "Healthy"}, {"phase": "Healthy"}),
        ({"phase": "Healthy"}, {"phase": "Healthy"}, {}),
        ({"canary": {"id": "x"}, "phase": "P"}, {"phase": "P"}, {"canary": None}),
        (
            {"weights": {"stable": 90, "canary": 10}},
            {"weights": {"stable": 100, "canary": 10}},
            {"weights": {"stable": 100}},
        ),
        ({"weights": {"canary": 10}}, {"weights": {}}, {"weights": {"canary": None}}),
        ({"history": [1, 2]}, {"history": [1, 2, 3]}, {"history": [1, 2, 3]}),
        ({"x": 0}, {"x": None}, {"x": None}),
    ],
)
def test_status_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert h.status_patch(old, new) == patch


def test_reconcile_sends_the_exact_status_patch() -> None:
    engine = Scripted(result(PROMOTED))
    deps, plugins, _ = make_deps(engine)
    patch = kopf.Patch()
    requeue = h.reconcile_object(
        deps, body=body(PROGRESSING), patch=patch, emit=lambda e: None, reason="timer"
    )
    assert requeue == 30.0
    assert patch == {
        "status": {"phase": "Healthy", "canary": None, "weights": {"stable": 100, "canary": 0}}
    }
    assert plugins.owners == [b.Owner(name="fraud", namespace="ml", uid="u-1")]
    assert engine.seen[0]["key"] == DeploymentKey("ml", "fraud")
    assert engine.seen[0]["generation"] == 3
    assert engine.seen[0]["now"] == NOW


def test_spec_is_never_patched() -> None:
    deps, _, _ = make_deps(Scripted(result(PROMOTED)))
    patch = kopf.Patch()
    h.reconcile_object(
        deps, body=body(PROGRESSING), patch=patch, emit=lambda e: None, reason="create"
    )
    assert set(patch) == {"status"}


def test_due_run_before_due_does_nothing() -> None:
    engine = Scripted(result(PROGRESSING, requeue=10.0), result(PROMOTED))
    deps, _, clock = make_deps(engine)
    h.reconcile_object(deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="create")
    clock.t += 9.0
    patch = kopf.Patch()
    assert (
        h.reconcile_object(
            deps, body=body(), patch=patch, emit=lambda e: None, reason="due", force=False
        )
        is None
    )
    assert patch == {}
    assert len(engine.seen) == 1
    clock.t += 1.0
    assert (
        h.reconcile_object(
            deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="due", force=False
        )
        == 30.0
    )
    assert len(engine.seen) == 2


def test_every_decided_due_time_is_handed_to_the_scheduler() -> None:
    engine = Scripted(result(PROGRESSING, requeue=10.0), result(PROMOTED, requeue=30.0))
    deps, _, clock = make_deps(engine)
    told: list[tuple[str, float]] = []
    deps.on_due = lambda uid, at: told.append((uid, at))
    h.reconcile_object(deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="create")
    clock.t += 10.0
    h.reconcile_object(
        deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="due", force=False
    )
    assert told == [("u-1", 1010.0), ("u-1", 1040.0)]


def test_nothing_is_due_before_a_change_handler_decided() -> None:
    deps, _, _ = make_deps(Scripted(result(PROMOTED)))
    patch = kopf.Patch()
    # No memory of the object (never seen, or deleted): a due run does nothing.
    assert (
        h.reconcile_object(
            deps, body=body(), patch=patch, emit=lambda e: None, reason="due", force=False
        )
        is None
    )
    assert deps.memory == {}


def test_due_run_writes_only_what_changed_since_its_own_last_write() -> None:
    """The body kept from the create handler still has the old status; the due path
    diffs against what it last wrote, so a steady object writes nothing."""
    healthy = {**PROMOTED, "analysis": {"lastRunAt": "t1"}}
    later = {**PROMOTED, "analysis": {"lastRunAt": "t2"}}
    engine = Scripted(result(healthy), result(healthy), result(later))
    deps, _, clock = make_deps(engine)
    h.reconcile_object(
        deps, body=body({}), patch=kopf.Patch(), emit=lambda e: None, reason="create"
    )
    writes: list[tuple[str, str, dict[str, Any]]] = []

    def write(ns: str, name: str, status: dict[str, Any]) -> None:
        writes.append((ns, name, status))

    clock.t += 30
    assert h.reconcile_due(deps, "u-1", lambda e: None, write) is True
    assert writes == []  # same status as already written by the create handler's patch
    clock.t += 30
    h.reconcile_due(deps, "u-1", lambda e: None, write)
    assert writes == [("ml", "fraud", {"analysis": {"lastRunAt": "t2"}})]


def test_failed_status_write_is_retried_soon_and_rediffed_against_the_body() -> None:
    engine = Scripted(result(PROGRESSING), result(PROMOTED), result(PROMOTED))
    deps, _, clock = make_deps(engine)
    h.reconcile_object(
        deps, body=body({}), patch=kopf.Patch(), emit=lambda e: None, reason="create"
    )
    clock.t += 30

    def broken(ns: str, name: str, status: dict[str, Any]) -> None:
        raise RuntimeError("API down")

    with pytest.raises(RuntimeError):
        h.reconcile_due(deps, "u-1", lambda e: None, broken)
    assert deps.of("u-1").due == clock.t + h.RETRY_SECONDS
    clock.t += h.RETRY_SECONDS
    writes: list[dict[str, Any]] = []
    h.reconcile_due(deps, "u-1", lambda e: None, lambda ns, n, st: writes.append(st))
    assert writes == [PROMOTED]  # the whole change since the stored body, not nothing


def test_change_handlers_run_even_when_not_due() -> None:
    engine = Scripted(result(PROGRESSING, requeue=60.0), result(PROMOTED))
    deps, _, _ = make_deps(engine)
    h.reconcile_object(deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="create")
    h.reconcile_object(deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="update")
    assert len(engine.seen) == 2


def test_next_run_uses_the_status_just_decided_not_the_stale_body() -> None:
    engine = Scripted(result(PROGRESSING, requeue=1.0), result(PROMOTED))
    deps, _, clock = make_deps(engine)
    h.reconcile_object(
        deps, body=body({}), patch=kopf.Patch(), emit=lambda e: None, reason="create"
    )
    clock.t += 5
    patch = kopf.Patch()
    # kopf has not delivered our own status write yet: the body still has the old status.
    h.reconcile_object(deps, body=body({}), patch=patch, emit=lambda e: None, reason="update")
    assert engine.seen[1]["status"] == PROGRESSING
    # ... but the patch is computed against what is stored, so the store converges.
    assert patch["status"] == PROMOTED


def test_busy_object_skips_the_due_run() -> None:
    engine = Scripted(result(PROMOTED))
    deps, _, _ = make_deps(engine)
    deps.of("u-1").due = 0.0
    deps.of("u-1").lock.acquire()
    try:
        patch = kopf.Patch()
        assert (
            h.reconcile_object(
                deps, body=body(), patch=patch, emit=lambda e: None, reason="due", force=False
            )
            is None
        )
    finally:
        deps.of("u-1").lock.release()
    assert engine.seen == [] and patch == {}


def test_phase_change_without_engine_event_gets_one() -> None:
    events: list[Event] = []
    deps, _, _ = make_deps(Scripted(result({"phase": "Degraded"})))
    h.reconcile_object(
        deps,
        body=body({"phase": "Healthy"}),
        patch=kopf.Patch(),
        emit=events.append,
        reason="timer",
    )
    assert events == [Event(type="Warning", reason="Degraded", message="phase Healthy -> Degraded")]


def test_phase_change_with_engine_events_adds_none() -> None:
    events: list[Event] = []
    engine_event = Event(type="Normal", reason="Promoted", message="2 is now stable")
    deps, _, _ = make_deps(Scripted(result(PROMOTED, events=(engine_event,))))
    h.reconcile_object(
        deps, body=body(PROGRESSING), patch=kopf.Patch(), emit=events.append, reason="timer"
    )
    assert events == []  # the engine's own events are posted by the runtime, not here


def test_failure_propagates_and_the_object_falls_due_again_soon() -> None:
    def broken(*args: Any, **kwargs: Any) -> ReconcileResult:
        raise RuntimeError("API down")

    deps, _, _ = make_deps(broken)
    deps.of("u-1").due = 10**9
    patch = kopf.Patch()
    with pytest.raises(RuntimeError, match="API down"):
        h.reconcile_object(deps, body=body(), patch=patch, emit=lambda e: None, reason="update")
    assert patch == {}
    assert deps.of("u-1").due == 1000.0 + h.RETRY_SECONDS
    assert not deps.of("u-1").lock.locked()


def test_forget_drops_memory() -> None:
    deps, _, _ = make_deps(Scripted(result(PROMOTED)))
    h.reconcile_object(deps, body=body(), patch=kopf.Patch(), emit=lambda e: None, reason="create")
    h.forget_object(deps, body=body())
    assert "u-1" not in deps.memory


# --- with the real reconcile -------------------------------------------------------------


def test_invalid_spec_gets_a_condition_and_touches_nothing() -> None:
    from mlrollout.operator.reconcile import reconcile

    deps, plugins, _ = make_deps(reconcile)
    events: list[Event] = []
    bad = {
        "model": {"name": "fraud", "version": "1", "uri": "http://m/1.tgz"},
        "serving": {"replicas": 2, "autoscaling": {}},
    }
    patch = kopf.Patch()
    h.reconcile_object(
        deps, body=body({}, spec=bad), patch=patch, emit=events.append, reason="create"
    )
    status = patch["status"]
    assert status["phase"] == "InvalidSpec"
    spec_valid = [c for c in status["conditions"] if c["type"] == "SpecValid"]
    assert spec_valid and spec_valid[0]["status"] == "False"
    assert "replicas or autoscaling" in spec_valid[0]["message"]
    assert plugins.runtimes[0].calls == []
    assert plugins.routers[0].table is None
    assert any(e.reason == "InvalidSpec" for e in events)


def test_first_reconcile_starts_the_stable_revision_and_routes_to_it() -> None:
    from mlrollout.operator.reconcile import reconcile

    deps, plugins, _ = make_deps(reconcile)
    patch = kopf.Patch()
    h.reconcile_object(deps, body=body(), patch=patch, emit=lambda e: None, reason="create")
    (wanted,) = {tuple(c) for c in plugins.runtimes[0].calls}
    assert len(wanted) == 1
    assert plugins.routers[0].table is not None
    assert plugins.routers[0].table.weights == {"stable": 100}
    assert patch["status"]["observedGeneration"] == 3


def test_phase_change_explained_by_no_engine_event_still_gets_one() -> None:
    # Progressing -> Paused comes with AnalysisPassed only; a manual pause waits for a
    # human, so the phase change itself must be announced.
    events: list[Event] = []
    passed = Event(type="Normal", reason="AnalysisPassed", message="errorRate pass")
    paused = {**PROGRESSING, "phase": "Paused"}
    deps, _, _ = make_deps(Scripted(result(paused, events=(passed,))))
    h.reconcile_object(
        deps, body=body(PROGRESSING), patch=kopf.Patch(), emit=events.append, reason="timer"
    )
    assert events == [Event(type="Normal", reason="Paused", message="phase Progressing -> Paused")]


def test_decision_events_reach_the_notifier_and_its_failure_costs_nothing() -> None:
    told: list[tuple[DeploymentKey, dict[str, Any], tuple[Event, ...]]] = []
    engine_event = Event(type="Normal", reason="Promoted", message="2 is now stable")
    deps, _, _ = make_deps(Scripted(result(PROMOTED, events=(engine_event,))))
    deps.notify = lambda key, spec, events, now: told.append((key, dict(spec), tuple(events)))
    patch = kopf.Patch()
    h.reconcile_object(deps, body=body(PROGRESSING), patch=patch, emit=[].append, reason="timer")
    assert told == [(DeploymentKey("ml", "fraud"), body()["spec"], (engine_event,))]

    def broken(*_args: Any) -> None:
        raise RuntimeError("endpoint down")

    deps, _, _ = make_deps(Scripted(result(PROMOTED, events=(engine_event,))))
    deps.notify = broken
    patch = kopf.Patch()
    h.reconcile_object(deps, body=body(PROGRESSING), patch=patch, emit=[].append, reason="timer")
    assert patch.status["phase"] == "Healthy"  # the status is still written
