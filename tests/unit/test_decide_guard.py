"""The router guard, operator side: table options, and a reported trip as the rollback."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from mlrollout.operator.decide import guard
from mlrollout.operator.k8s_routers import stale_guard
from mlrollout.operator.model import ModelDeploymentSpec
from mlrollout.services.router.table import RoutingTable, parse_table

from tests.doubles.decide import Scenario

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def spec(**traffic: Any) -> dict[str, Any]:
    return {
        "model": {"name": "fraud", "version": "v1", "uri": "https://models.example/v1.tar.gz"},
        "rollout": {
            "steps": [{"weight": 10}, {"weight": 50}],
            "progressDeadline": "5m",
            "analysis": {"interval": "30s", "minSamples": 100, "failureLimit": 2},
        },
        "traffic": traffic,
    }


def canary_running(**traffic: Any) -> Scenario:
    s = Scenario(spec(**traffic), T0)
    s.healthy_traffic()
    s.tick()
    s.set_model("v2")
    s.tick()
    assert s.phase == "Progressing" and s.status["weights"]["canary"] == 10
    return s


def trip_for(s: Scenario, version: str = "v2", **changes: Any) -> dict[str, Any]:
    rev = s.status["canary"]["id"]
    trip = {
        "test": "errors",
        "canaryVersion": version,
        "canaryUrl": f"http://{rev}",
        "at": 1.0,
        "alpha": 0.005,
        "eValue": 331.0,
        "threshold": 200.0,
        "message": "router guard: canary v2 errors 3/5 vs stable 0/45 at 10% canary traffic",
        "evidence": {"canaryRequests": 5, "canaryErrors": 3, "stableRequests": 45},
        **changes,
    }
    return {"state": "tripped", "trip": trip}


def test_a_trip_is_the_rollback_with_a_verdict_naming_the_guard() -> None:
    s = canary_running()
    s.router_guard = trip_for(s)
    d = s.tick(1)  # not waiting for the analysis interval
    assert s.phase == "RolledBack"
    assert s.status["weights"] == {"stable": 100, "canary": 0}
    (verdict,) = s.status["analysis"]["verdicts"]
    assert verdict["check"] == "routerGuard" and verdict["outcome"] == "fail"
    assert verdict["value"] == 331.0 and verdict["threshold"] == 200.0
    assert verdict["samples"] == 5
    assert "errors 3/5 vs stable 0/45" in verdict["message"] and "alpha 0.005" in verdict["message"]
    assert "RouterGuard" in s.reasons()
    assert s.status["rejectedRevisions"][-1]["reason"].startswith("router guard: canary v2")
    assert d.routing is not None and "canary" not in d.routing.weights


def test_a_trip_of_a_dead_canary_does_not_wait_for_the_progress_deadline() -> None:
    s = canary_running()
    s.not_ready = {"v2"}
    s.router_guard = trip_for(s)
    s.tick(1)
    assert s.phase == "RolledBack"


@pytest.mark.parametrize(
    "changes",
    [{"canaryVersion": "v0"}, {"canaryUrl": "http://elsewhere:8000"}],
)
def test_a_trip_of_another_canary_is_ignored(changes: dict[str, Any]) -> None:
    s = canary_running()
    s.router_guard = trip_for(s, **changes)
    s.tick(1)
    assert s.phase == "Progressing"
    s.router_guard = {"state": "watching"}
    s.tick(1)
    assert s.phase == "Progressing"


def test_table_carries_guard_and_agreement_only_with_a_canary() -> None:
    s = canary_running(agreement={"percent": 25})
    options = s.last.routing.options if s.last and s.last.routing else {}
    assert options["guard"] == {"alpha": pytest.approx(0.005), "maxRatio": 1.0}
    assert options["agreement"] == {
        "percent": 25.0,
        "source": "canary",
        "relTol": 0.001,
        "absTol": 0.0001,
    }


def test_guard_options() -> None:
    base = ModelDeploymentSpec.model_validate(spec())
    assert guard.table_options(base)["guard"] == {"alpha": 0.005, "maxRatio": 1.0}
    assert guard.table_options(base)["agreement"] is None
    own = ModelDeploymentSpec.model_validate(spec(guard={"alpha": 0.02, "maxRatio": 2}))
    assert guard.table_options(own)["guard"] == {"alpha": 0.02, "maxRatio": 2.0}
    off = ModelDeploymentSpec.model_validate(spec(guard={"enabled": False}))
    assert guard.table_options(off)["guard"] is None
    gateway = ModelDeploymentSpec.model_validate(
        spec(router="gatewayAPI", gateway={"parentRefs": [{"name": "gw"}]})
    )
    assert guard.table_options(gateway) == {"agreement": None, "guard": None}


def test_the_routers_parser_accepts_what_the_operator_writes() -> None:
    from mlrollout.operator.interfaces import DeploymentKey, RevisionState
    from mlrollout.operator.reconcile import routing_table

    s = canary_running(agreement={"percent": 25, "source": "stable"})
    assert s.last is not None
    states = {
        rev: RevisionState(rev, True, f"http://127.0.0.1:{8000 + i}")
        for i, rev in enumerate(s.wanted)
    }
    table = routing_table(DeploymentKey("default", "fraud"), s.last, states)
    assert table is not None
    parsed = parse_table(table.to_doc())  # what the router process reads
    assert parsed == table
    assert parsed.guard is not None and parsed.guard.alpha == pytest.approx(0.005)
    assert parsed.agreement is not None and parsed.agreement.source == "stable"


def _routes(canary: dict[str, str] | None) -> RoutingTable:
    backends = {"stable": {"version": "v1", "url": "http://s"}}
    weights = {"stable": 100}
    if canary is not None:
        backends["canary"], weights = canary, {"stable": 90, "canary": 10}
    doc = {"generation": 1, "deployment": "d", "backends": backends, "weights": weights}
    return parse_table(doc)


def test_stale_guard_reports_are_recognised() -> None:
    trip = {"trip": {"canaryVersion": "v2", "canaryUrl": "http://a"}}
    table = _routes({"version": "v2", "url": "http://a"})
    assert not stale_guard(trip, table)
    assert stale_guard(trip, _routes({"version": "v3", "url": "http://b"}))
    assert stale_guard(trip, _routes(None))
    assert not stale_guard(None, table)
    assert stale_guard({"state": "watching"}, _routes(None))
    assert not stale_guard({"state": "watching"}, table)


def test_a_running_canary_is_looked_at_often_enough_to_record_a_trip_soon() -> None:
    s = canary_running()
    assert s.last is not None and s.last.requeue_after <= guard.RECHECK_SECONDS
    off = canary_running(guard={"enabled": False})
    assert off.last is not None and off.last.requeue_after > guard.RECHECK_SECONDS
