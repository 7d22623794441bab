"""Test doubles for the engine and the act layer (no I/O; used by tests).

``Scenario`` drives ``decide`` the way ``reconcile`` does, with made-up traffic, and stores
the status as JSON between calls, so every test also proves that a rollout resumes from
stored status alone (an operator restart).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from mlrollout.operator import queries as q
from mlrollout.operator.decide.engine import (
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
    ProviderError,
    RevisionSpec,
    RevisionState,
    Sample,
)
from mlrollout.operator.model import ModelDeploymentSpec, ModelDeploymentStatus
from mlrollout.services.metrics import LATENCY_BUCKETS
from mlrollout.services.router.table import RoutingTable, parse_table


@dataclass(frozen=True)
class TrackTraffic:
    """What one version's metrics say over the analysis window."""

    requests: float = 0.0
    errors: float = 0.0
    latency: float = 0.05
    input_psi: Mapping[str, float] = field(default_factory=dict)
    drift_alarm: Mapping[str, float] = field(default_factory=dict)
    drift_windows: float = 0.0
    prediction_bins: Mapping[str, float] = field(default_factory=dict)
    feedback: Mapping[str, float] = field(default_factory=dict)
    agreement: Mapping[str, float] = field(default_factory=dict)  # canary only: agree/disagree


def results_for(
    planned: Mapping[str, str],
    stable: TrackTraffic,
    canary: TrackTraffic,
    *,
    age: float | None = 5.0,
    custom: Mapping[str, float] | None = None,
    failing: frozenset[str] = frozenset(),
) -> dict[str, list[Sample] | ProviderError]:
    """Answers to the planned queries (by name). ``failing``: names that raise ProviderError;
    ``age``: seconds since the canary's last scrape (None: never scraped).

    Counts are what the queried range holds, whatever the range (since the step or the
    rollout began); latency puts every request in the bucket of ``latency``."""
    tracks = {"stable": stable, "canary": canary}

    def scalar(value: float | None) -> list[Sample]:
        return [] if value is None else [Sample(labels={}, value=value)]

    def vector(label: str, values: Mapping[str, float]) -> list[Sample]:
        return [Sample(labels={label: k}, value=v) for k, v in values.items()]

    answers: dict[str, list[Sample] | ProviderError] = {}
    for name in planned:
        if name in failing:
            answers[name] = ProviderError(f"{name}: connection refused")
            continue
        kind, _, track = name.partition(".")
        track = track.partition("@")[0]
        t = tracks.get(track, canary)
        if name == q.FRESHNESS:
            answers[name] = scalar(age)
        elif kind == "requests":
            answers[name] = scalar(t.requests)
        elif kind == "errors":
            answers[name] = scalar(t.errors) if t.errors else []
        elif kind == "latency":
            answers[name] = [
                Sample(labels={"le": repr(edge)}, value=t.requests if t.latency <= edge else 0.0)
                for edge in LATENCY_BUCKETS
            ] + [Sample(labels={"le": "+Inf"}, value=t.requests)]
        elif name == q.AGREEMENT:
            answers[name] = vector("result", canary.agreement)

        elif kind == "inputPsi":
            answers[name] = vector("feature", t.input_psi)
        elif name == q.DRIFT_WINDOWS:
            answers[name] = scalar(canary.drift_windows)
        elif kind == "predictionBins":
            answers[name] = vector("bin", t.prediction_bins)
        elif kind == "feedback":
            answers[name] = vector("outcome", t.feedback)
        elif name == q.STABLE_DRIFT_PSI:
            answers[name] = vector("feature", stable.input_psi)
        elif name == q.STABLE_DRIFT_ALARM:
            answers[name] = vector("feature", stable.drift_alarm)
        elif kind == "custom":
            answers[name] = scalar((custom or {}).get(track))
        else:
            raise KeyError(f"no fake answer for query {name}")
    return answers


class Scenario:
    """One ModelDeployment driven through time with fake readiness and traffic."""

    def __init__(self, spec: Mapping[str, Any], start: datetime) -> None:
        self.spec: dict[str, Any] = dict(spec)
        self.now = start
        self.key = DeploymentKey("default", "fraud")
        self.status: dict[str, Any] = {}
        self.events: list[Event] = []
        self.wanted: dict[str, RevisionSpec] = {}
        self.not_ready: set[str] = set()  # versions whose revisions are not ready
        self.gone: set[str] = set()  # versions whose process exited for good
        self.stable = TrackTraffic()
        self.canary = TrackTraffic()
        self.age: float | None = 5.0
        self.failing: frozenset[str] = frozenset()
        self.custom: dict[str, float] = {}
        self.last: Decision | None = None
        self.router_guard: dict[str, Any] | None = None  # what the router guard reports

    def set_model(self, version: str, **extra: Any) -> None:
        model = {
            "name": "fraud",
            "version": version,
            "uri": f"https://models.example/{version}.tar.gz",
        }
        self.spec = {**self.spec, "model": {**model, **extra}}

    def set_control(self, name: str, token: str) -> None:
        self.spec = {**self.spec, "controls": {**self.spec.get("controls", {}), name: token}}

    def tick(self, seconds: float = 0.0) -> Decision:
        """Advance the clock, then observe and decide once (like one reconcile)."""
        self.now += timedelta(seconds=seconds)
        status = ModelDeploymentStatus.model_validate(self.status)
        try:
            spec = ModelDeploymentSpec.model_validate(self.spec)
        except ValueError as exc:
            decision = decide_invalid(status, str(exc), self.now)
        else:
            wanted = wanted_revisions(spec, status, self.now)
            states = {
                rev: RevisionState(
                    rev,
                    ready=w.model.version not in self.not_ready | self.gone,
                    url=f"http://{rev}",
                    gone=w.model.version in self.gone,
                )
                for rev, w in wanted.items()
            }
            planned = plan_queries(spec, status, self.key, states, self.now)
            metrics = results_for(
                planned,
                self.stable,
                self.canary,
                age=self.age,
                custom=self.custom,
                failing=self.failing,
            )
            observed = Observations(states, metrics, router_guard=self.router_guard)
            decision = decide(spec, status, observed, self.now)
        self.status = decision.status.to_json()
        self.events.extend(decision.events)
        if decision.wanted is not None:
            self.wanted = decision.wanted
        self.last = decision
        return decision

    def run(self, seconds: float, every: float = 30.0) -> Decision:
        """Tick every ``every`` seconds for ``seconds`` (bounded by the caller's numbers)."""
        steps = max(1, int(seconds // every))
        decision = self.last
        for _ in range(steps):
            decision = self.tick(every)
        assert decision is not None
        return decision

    def healthy_traffic(self, n: float = 5000.0) -> None:
        self.stable = TrackTraffic(requests=n, errors=n * 0.0002, latency=0.05)
        self.canary = replace(self.stable)

    @property
    def phase(self) -> str:
        return str(self.status.get("phase"))

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


class FakeRuntime:
    """A Runtime that 'runs' revisions in memory; ``not_ready`` holds versions not ready."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.running: dict[str, RevisionSpec] = {}
        self.not_ready: set[str] = set()
        self.events: list[Event] = []
        self.log = log if log is not None else []

    def ensure_revisions(
        self, deployment: DeploymentKey, wanted: Mapping[str, RevisionSpec]
    ) -> dict[str, RevisionState]:
        for rev in set(self.running) - set(wanted):
            self.log.append(f"stop {self.running.pop(rev).model.version}")
        for rev, spec in wanted.items():
            if rev not in self.running:
                self.log.append(f"start {spec.model.version}")
                self.running[rev] = spec
        return {
            rev: RevisionState(
                rev,
                ready=spec.model.version not in self.not_ready,
                url=f"http://{spec.model.version}",
            )
            for rev, spec in wanted.items()
        }

    def record(self, deployment: DeploymentKey, event: Event) -> None:
        self.events.append(event)


class FakeRouter:
    """A TrafficRouter holding the table in memory."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.routes: RoutingTable | None = None
        self.tables: list[dict[str, Any]] = []  # every table written, as documents, in order
        self.writes = 0
        self.log = log if log is not None else []
        self.guard: dict[str, Any] | None = None

    @property
    def table(self) -> dict[str, Any] | None:
        """The table in force as its document (what tests compare)."""
        return None if self.routes is None else self.routes.to_doc()

    @table.setter
    def table(self, doc: dict[str, Any] | None) -> None:
        self.routes = None if doc is None else parse_table(doc)

    def set_routes(self, table: RoutingTable) -> None:
        self.routes = table
        self.tables.append(table.to_doc())
        self.writes += 1
        self.log.append("route " + ",".join(f"{k}={v}" for k, v in sorted(table.weights.items())))

    def get_routes(self) -> RoutingTable | None:
        return self.routes

    def guard_report(self) -> dict[str, Any] | None:
        """What a router's guard would report: set ``guard`` to simulate a trip."""
        return self.guard


_RANGE = re.compile(r"\[[0-9]+s\]")


def _any_range(promql: str) -> str:
    # Count queries cover "since the step began": the range grows with the clock.
    return _RANGE.sub("[range]", promql)


class FakeMetrics:
    """A MetricsProvider answering by PromQL text (any count range matches); unknown queries
    get an empty vector."""

    def __init__(self) -> None:
        self.online = True
        self.answers: dict[str, list[Sample] | ProviderError] = {}
        self.calls: list[str] = []

    def load(
        self, planned: Mapping[str, str], results: Mapping[str, list[Sample] | ProviderError]
    ) -> None:
        self.answers.update({_any_range(planned[name]): v for name, v in results.items()})

    def query(self, promql: str, now: datetime) -> list[Sample]:
        self.calls.append(promql)
        answer = self.answers.get(_any_range(promql), [])
        if isinstance(answer, ProviderError):
            raise answer
        return list(answer)

    def is_online(self) -> bool:
        return self.online
