"""Router Prometheus metrics (names and labels are a contract: docs/architecture.md).

Label children are resolved once per (track, version, ...) and cached, because
``Counter.labels(...)`` costs more than the increment itself and this runs on every
request.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .table import TRACKS, RoutingTable

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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
