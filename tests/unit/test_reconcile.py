"""The act layer with fakes: order of effects, routing generations, provider handling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mlrollout.operator import queries as q
from mlrollout.operator.decide import checks
from mlrollout.operator.interfaces import DeploymentKey, Event, RoutesChanged
from mlrollout.operator.model import ModelDeploymentSpec
from mlrollout.operator.reconcile import ReconcileResult, reconcile
from mlrollout.services.router.table import RoutingTable, parse_table

from tests.doubles.decide import (
    FakeMetrics,
    FakeRouter,
    FakeRuntime,
    TrackTraffic,
    results_for,
)

KEY = DeploymentKey("team-a", "fraud")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HEALTHY = TrackTraffic(requests=5000, errors=1)


def spec(version: str = "v1", **rollout: Any) -> dict[str, Any]:
    return {
        "model": {"name": "fraud", "version": version, "uri": f"https://m.example/{version}"},
        "rollout": {"steps": [{"weight": 25}], "analysis": {"interval": "30s"}, **rollout},
        "traffic": {"stickyHeader": "x-user-id"},
    }


class Loop:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.runtime = FakeRuntime(self.log)
        self.router = FakeRouter(self.log)
        self.metrics = FakeMetrics()
        self.status: dict[str, Any] | None = None
        self.now = T0

    def feed(self, raw: dict[str, Any], stable: str, canary: str, traffic: TrackTraffic) -> None:
        analysis = ModelDeploymentSpec.model_validate(raw).rollout.analysis
        planned = checks.analysis_queries(analysis, KEY.name, KEY.namespace, stable, canary)
        planned.update(q.stable_drift_queries(KEY.name, KEY.namespace, stable))
        self.metrics.load(planned, results_for(planned, HEALTHY, traffic))

    def run(
        self, raw: dict[str, Any], seconds: float = 30.0, generation: int = 1
    ) -> ReconcileResult:
        self.now += timedelta(seconds=seconds)
        result = reconcile(
            KEY,
            raw,
            self.status,
            self.now,
            runtime=self.runtime,
            router=self.router,
            metrics=self.metrics,
            generation=generation,
        )
        self.status = result.status
        return result


def test_first_deployment_starts_the_revision_then_routes_to_it() -> None:
    loop = Loop()
    result = loop.run(spec())
    assert loop.log == ["start v1", "route stable=100"]
    table = loop.router.table
    assert table == {
        "generation": 1,
        "deployment": "fraud",
        "backends": {"stable": {"url": "http://v1", "version": "v1"}},
        "weights": {"stable": 100},
        "stickyHeader": "x-user-id",
        "shadowPercent": 0,
    }
    assert result.status["routingGeneration"] == 1
    assert result.status["observedGeneration"] == 1
    assert [e.reason for e in loop.runtime.events] == ["Deploying", "Deployed"]


def test_unchanged_routes_are_not_rewritten() -> None:
    loop = Loop()
    loop.run(spec())
    loop.run(spec())
    loop.run(spec())
    assert loop.router.writes == 1
    assert loop.status is not None and loop.status["routingGeneration"] == 1


def test_promotion_moves_traffic_before_stopping_the_old_stable() -> None:
    loop = Loop()
    loop.run(spec())
    loop.feed(spec("v2"), "v1", "v2", HEALTHY)
    loop.run(spec("v2"), generation=2)
    assert loop.router.table is not None
    assert loop.router.table["weights"] == {"stable": 75, "canary": 25}
    assert loop.router.table["backends"]["canary"] == {"url": "http://v2", "version": "v2"}
    assert loop.router.table["generation"] == 2
    result = loop.run(spec("v2"), generation=2)
    assert result.status["phase"] == "Healthy"
    assert loop.log == [
        "start v1",
        "route stable=100",
        "start v2",
        "route canary=25,stable=75",
        "route stable=100",
        "stop v1",
    ]
    assert loop.router.table["backends"] == {"stable": {"url": "http://v2", "version": "v2"}}


def test_rollback_moves_traffic_before_stopping_the_canary() -> None:
    loop = Loop()
    loop.run(spec())
    loop.feed(spec("v2"), "v1", "v2", TrackTraffic(requests=1000, errors=300))
    loop.run(spec("v2"))
    result = loop.run(spec("v2"))
    assert result.status["phase"] == "RolledBack"
    assert loop.log[-2:] == ["route stable=100", "stop v2"]
    assert any(e.reason == "RolledBack" and e.type == "Warning" for e in result.events)


def test_invalid_spec_touches_neither_runtime_nor_router() -> None:
    loop = Loop()
    loop.run(spec())
    before = list(loop.log)
    bad = spec()
    bad["rollout"]["steps"] = [{"weight": 200}]
    result = loop.run(bad)
    assert loop.log == before
    assert result.status["phase"] == "InvalidSpec"
    assert "rollout.steps.0.weight" in result.status["message"]
    assert result.status["stable"]["version"] == "v1"


def test_offline_provider_is_not_queried_and_holds() -> None:
    loop = Loop()
    loop.run(spec())
    loop.metrics.calls.clear()
    loop.metrics.online = False
    loop.feed(spec("v2"), "v1", "v2", HEALTHY)
    loop.run(spec("v2"))  # the canary's step starts: nothing to judge yet
    result = loop.run(spec("v2"))
    assert loop.metrics.calls == []
    verdicts = result.status["analysis"]["verdicts"]
    assert verdicts and {v["outcome"] for v in verdicts} == {"providerError"}
    assert "offline" in verdicts[0]["message"]
    assert result.status["phase"] == "Progressing"


def test_a_failing_query_is_a_provider_error_not_a_crash() -> None:
    loop = Loop()
    loop.run(spec())
    loop.feed(spec("v2"), "v1", "v2", HEALTHY)
    raw = spec("v2")
    analysis = ModelDeploymentSpec.model_validate(raw).rollout.analysis
    planned = checks.analysis_queries(analysis, KEY.name, KEY.namespace, "v1", "v2")
    loop.metrics.load(
        planned, results_for(planned, HEALTHY, HEALTHY, failing=frozenset({"latency.canary"}))
    )
    loop.run(raw)  # the canary's step starts: nothing to judge yet
    result = loop.run(raw)
    outcomes = {v["check"]: v["outcome"] for v in result.status["analysis"]["verdicts"]}
    assert outcomes["latency"] == "providerError" and outcomes["errorRate"] == "pass"


def test_generation_continues_from_the_table_in_force() -> None:
    loop = Loop()
    loop.router.table = {
        "generation": 41,
        "deployment": "fraud",
        "backends": {"stable": {"url": "http://elsewhere", "version": "v0"}},
        "weights": {"stable": 100},
    }
    result = loop.run(spec())
    assert loop.router.table is not None and loop.router.table["generation"] == 42
    assert result.status["routingGeneration"] == 42


class RacedRouter(FakeRouter):
    """Another writer puts a table in force between our read and our write, ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races

    def set_routes(self, table: RoutingTable) -> None:
        if self.races > 0:
            self.races -= 1
            gen = (self.routes.generation if self.routes else 0) + 10
            theirs = parse_table({**table.to_doc(), "generation": gen, "deployment": "theirs"})
            FakeRouter.set_routes(self, theirs)
            raise RoutesChanged("the routing table changed since it was read")
        super().set_routes(table)


def test_a_table_changed_under_us_is_read_again_and_the_generation_recomputed() -> None:
    loop = Loop()
    loop.router = RacedRouter(races=2)
    result = loop.run(spec())
    # Theirs (10, then 20) were read back; ours continues after the last one in force.
    assert [t["generation"] for t in loop.router.tables] == [10, 20, 21]
    assert result.status["routingGeneration"] == 21


def test_a_table_that_keeps_changing_fails_the_reconcile() -> None:
    loop = Loop()
    loop.router = RacedRouter(races=100)
    with pytest.raises(RoutesChanged):
        loop.run(spec())


def test_no_routes_while_the_first_revision_is_not_ready() -> None:
    loop = Loop()
    loop.runtime.not_ready = {"v1"}
    result = loop.run(spec())
    assert loop.router.writes == 0
    assert result.status["phase"] == "Initializing"
    assert result.requeue_after <= 5


def test_readiness_is_looked_at_soon_then_less_often() -> None:
    """Hundreds of starting revisions must not flood the API server with reads: the
    re-check interval grows with the time waited (a third of it, 2 s to 15 s)."""
    loop = Loop()
    loop.runtime.not_ready = {"v1"}
    waits = [loop.run(spec(), seconds=s).requeue_after for s in (0, 3, 12, 30, 60, 120)]
    assert waits[0] == 2.0
    assert waits == sorted(waits)
    assert waits[-1] == 15.0
    loop.runtime.not_ready = set()
    assert loop.run(spec(), seconds=15).status["phase"] == "Healthy"


@pytest.mark.parametrize("status", [{"phase": "Nonsense"}, {"weights": "x"}])
def test_unreadable_status_restarts_cleanly(status: dict[str, Any]) -> None:
    loop = Loop()
    loop.status = status
    result = loop.run(spec())
    assert result.status["phase"] == "Healthy"


def test_shadow_step_routes_no_weight_but_mirrors_to_the_canary() -> None:
    loop = Loop()
    raw = spec(steps=[{"weight": 0}, {"weight": 50}])
    raw["traffic"] = {"shadowPercent": 100}
    loop.run(raw)
    shadow = {**raw, "model": spec("v2")["model"]}
    loop.run(shadow)
    table = loop.router.table
    assert table is not None
    assert table["weights"] == {"stable": 100, "canary": 0}
    assert table["backends"]["canary"]["version"] == "v2"
    assert table["shadowPercent"] == 100


def test_naive_time_is_refused() -> None:
    loop = Loop()
    with pytest.raises(ValueError, match="timezone-aware"):
        reconcile(
            KEY,
            spec(),
            None,
            datetime(2026, 1, 1),
            runtime=loop.runtime,
            router=loop.router,
            metrics=loop.metrics,
        )
    assert loop.log == []


def test_every_table_written_is_accepted_by_the_router_in_order() -> None:
    from mlrollout.services.router.table import check_successor, parse_table

    loop = Loop()
    loop.run(spec())
    raw = spec("v2", steps=[{"weight": 10}, {"weight": 60}])
    loop.feed(raw, "v1", "v2", HEALTHY)
    for _ in range(4):
        loop.run(raw)
    bad = spec("v3")
    loop.feed(bad, "v2", "v3", TrackTraffic(requests=1000, errors=500))
    for _ in range(3):
        loop.run(bad)
    assert loop.status is not None and loop.status["phase"] == "RolledBack"
    assert len(loop.router.tables) >= 5
    current = None
    for table in loop.router.tables:
        parsed = parse_table(table)
        assert check_successor(current, parsed)
        current = parsed


def test_the_decision_is_told_before_its_consequence() -> None:
    """Issue 13: `Stopped: v3` was printed before the failing analysis run that caused it."""

    class TellingRuntime(FakeRuntime):
        def record(self, deployment: DeploymentKey, event: Event) -> None:
            super().record(deployment, event)
            self.log.append(f"event {event.reason}")

    loop = Loop()
    loop.runtime = TellingRuntime(loop.log)
    loop.run(spec())
    loop.feed(spec("v2"), "v1", "v2", TrackTraffic(requests=1000, errors=300))
    loop.run(spec("v2"))
    loop.run(spec("v2"))
    stop = loop.log.index("stop v2")
    told = [e for e in loop.log[:stop] if e.startswith("event ")]
    assert "event AnalysisFailed" in told and "event RolledBack" in told
    assert not any(e.startswith("event ") for e in loop.log[stop:])
