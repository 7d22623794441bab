"""Router Prometheus metrics (names and labels are a contract: docs/architecture.md).

Label children are resolved once per (track, version, ...) and cached, because
``Counter.labels(...)`` costs more than the increment itself and this runs on every
request.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlrollout.services import metric_names as n
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .table import TRACKS, RoutingTable

if TYPE_CHECKING:
    from .guard import Guard

BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip

OUTCOMES = ("ok", "client_error", "server_error", "unreachable")


def outcome_of(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, ["deployment", "track", "version"]
        self.requests = Counter(
            "mlrollout_router_requests",
            "Requests the router sent to a backend, by outcome (unreachable: no response).",
            [*labels, "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "mlrollout_router_request_duration_seconds",
            "Time from sending a request to a backend to its complete response.",
            labels,
            buckets=BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "mlrollout_router_fallbacks",
            "Requests retried on stable because the labelled backend could not be reached.",
            labels,
            registry=r,
        )
        self.shadow = Counter(
            "mlrollout_router_shadow",
            "Mirrored requests to the labelled (canary) backend, by comparison result.",
            [*labels, "result"],
            registry=r,
        )
        self.weight = Gauge(
            "mlrollout_router_weight",
            "Traffic weight (percent) of each backend in the table in force.",
            labels,
            registry=r,
        )
        self.generation = Gauge(
            "mlrollout_router_table_generation",
            "Generation of the routing table in force (-1 before the first table).",
            ["deployment"],
            registry=r,
        )
        self.rejected = Counter(
            "mlrollout_router_table_rejected",
            "Routing tables refused (invalid, or an older generation); the last good one stays.",
            ["deployment"],
            registry=r,
        )
        self.agreement_total = Counter(
            n.ROUTER_AGREEMENT,
            "Paired comparisons of canary and stable answers to the same request: rows that "
            "agree or disagree, requests whose pair could not be compared (error) or was not "
            "sent (dropped). source: the track whose live request was mirrored.",
            ["deployment", "track", "version", "source", "result"],
            registry=r,
        )
        self.guard_tripped = Gauge(
            "mlrollout_router_guard_tripped",
            "1 once the router guard took this canary to weight 0 (test: errors|agreement).",
            ["deployment", "track", "version", "test"],
            registry=r,
        )
        self.guard_evalue = Gauge(
            "mlrollout_router_guard_e_value",
            "The guard's e-value for this canary (test: errors|agreement); it trips at 1/alpha.",
            ["deployment", "track", "version", "test"],
            registry=r,
        )
        self.guard_threshold = Gauge(
            "mlrollout_router_guard_threshold",
            "1/alpha: the e-value at which the guard trips.",
            ["deployment"],
            registry=r,
        )
        self._guard_labels: list[tuple[str, ...]] = []
        self.source_up = Gauge(
            "mlrollout_router_table_source_up",
            "1 while the routing table source (file poller, ConfigMap watch) runs, else 0.",
            registry=r,
        )
        self.source_failures = Counter(
            "mlrollout_router_table_source_failures",
            "Times the routing table source stopped on an error (it is restarted).",
            registry=r,
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self.deployment = ""
        self._weight_labels: list[tuple[str, str, str]] = []
        self._generation_set = False

    def table_applied(self, table: RoutingTable) -> None:
        if table.deployment != self.deployment:
            # One router serves one deployment; a rename only happens on first load.
            if self._generation_set:
                self.generation.remove(self.deployment)
            self.deployment = table.deployment
            self._children.clear()
        self._generation_set = True
        self.generation.labels(self.deployment).set(table.generation)
        for labels in self._weight_labels:
            self.weight.remove(*labels)
        self._weight_labels = []
        for track in TRACKS:
            backend = table.backends.get(track)
            if backend is not None:
                labels = (self.deployment, track, backend.version)
                self.weight.labels(*labels).set(table.weights.get(track, 0))
                self._weight_labels.append(labels)

    def table_rejected(self) -> None:
        self.rejected.labels(self.deployment).inc()

    def source_state(self, up: bool) -> None:
        if not up:
            self.source_failures.inc()
        self.source_up.set(1 if up else 0)

    def no_table_yet(self) -> None:
        self.generation.labels(self.deployment).set(-1)
        self._generation_set = True

    def request_done(self, track: str, version: str, outcome: str, seconds: float) -> None:
        key = ("r", track, version, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(
                self.deployment, track, version, outcome
            )
        child.inc()
        if outcome != "unreachable":
            hkey = ("d", track, version)
            hist = self._children.get(hkey)
            if hist is None:
                hist = self._children[hkey] = self.duration.labels(self.deployment, track, version)
            hist.observe(seconds)

    def fallback(self, track: str, version: str) -> None:
        self.fallbacks.labels(self.deployment, track, version).inc()

    def shadow_result(self, version: str, result: str) -> None:
        self.shadow.labels(self.deployment, "canary", version, result).inc()

    def agreement(
        self, version: str, source: str, result: str, rows: tuple[int, int] | None
    ) -> None:
        labels = (self.deployment, "canary", version, source)
        if rows is None:
            self.agreement_total.labels(*labels, "error" if result != "dropped" else result).inc()
            return
        agree, disagree = rows
        if agree:
            self.agreement_total.labels(*labels, "agree").inc(agree)
        if disagree:
            self.agreement_total.labels(*labels, "disagree").inc(disagree)

    def guard_state(self, guard: Guard) -> None:
        """Export the guard's e-values and trip for the canary it watches (old ones removed)."""
        st, spec = guard.state, guard.spec
        wanted: list[tuple[str, ...]] = []
        if st is not None and spec is not None:
            base = (self.deployment, "canary", st.canary_version)
            tests = {"errors": st.errors.log_e}
            if spec.min_agreement is not None:
                tests["agreement"] = st.agreement.log_e
            trip = (st.trip or {}).get("test")
            for test, log_e in tests.items():
                labels: tuple[str, ...] = (*base, test)
                wanted.append(labels)
                self.guard_evalue.labels(*labels).set(math.exp(min(log_e, 700.0)))
                self.guard_tripped.labels(*labels).set(1 if trip == test else 0)
            self.guard_threshold.labels(self.deployment).set(1.0 / spec.alpha)
        for labels in self._guard_labels:
            if labels not in wanted:
                self.guard_evalue.remove(*labels)
                self.guard_tripped.remove(*labels)
        self._guard_labels = wanted

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
