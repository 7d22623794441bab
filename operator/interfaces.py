"""The plug-in points of the act layer, and the plain values that cross them.

Kubernetes mode and local mode differ only in the implementations they inject into
``mlrollout.operator.reconcile.reconcile``: a Runtime (Deployments vs processes), a
TrafficRouter (ConfigMap/HTTPRoute vs a file) and a MetricsProvider (Prometheus, or a
fake in tests). Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from mlrollout.operator.model import ModelRef, Serving, Traffic
from mlrollout.services.router.table import RoutingTable


@dataclass(frozen=True)
class DeploymentKey:
    """Which ModelDeployment: namespace and name (local mode uses namespace ``local``)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class RevisionSpec:
    """One model revision the runtime must keep running.

    ``track`` is the role the revision had when first started (``stable`` or ``canary``);
    a promoted canary keeps running with it, as the metrics contract requires.
    """

    revision: str
    track: Literal["stable", "canary"]
    model: ModelRef
    serving: Serving


@dataclass(frozen=True)
class RevisionState:
    """What the runtime knows of one revision: ready to take traffic, and where."""

    revision: str
    ready: bool
    url: str | None = None
    message: str = ""
    gone: bool = False  # exited and will not be restarted: the engine need not wait


@dataclass(frozen=True)
class Sample:
    """One element of a Prometheus instant vector."""

    labels: Mapping[str, str]
    value: float
    timestamp: float = 0.0


@dataclass(frozen=True)
class Event:
    """A Kubernetes-style event about one ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class RoutingInputs:
    """What the engine wants the router to do; the act layer adds URLs and generation."""

    weights: Mapping[str, int]  # role (stable/canary) -> percent
    traffic: Traffic
    revisions: Mapping[str, str] = field(default_factory=dict)  # role -> revision id
    versions: Mapping[str, str] = field(default_factory=dict)  # role -> model version
    # More table keys for the router when there is a canary (``agreement``, ``guard``).
    options: Mapping[str, Any] = field(default_factory=dict)


class ProviderError(Exception):
    """The metrics provider could not answer (down, timeout, bad query, stale data)."""


class RoutesChanged(Exception):
    """The table in force changed between ``get_routes`` and ``set_routes`` (another
    writer); nothing was written. Read it again and decide the write again."""


class TrafficRouter(Protocol):
    """Every implementation takes and returns the router's own ``RoutingTable`` type: a
    table is validated once, where it is built (``parse_table``), the same way the router
    process validates what it reads."""

    def set_routes(self, table: RoutingTable) -> None:
        """Put the routing table (docs/architecture.md) in force; raise on failure, and
        ``RoutesChanged`` when the table in force is no longer the one last read."""

    def get_routes(self) -> RoutingTable | None:
        """The routing table in force, or None when there is none yet."""

    def guard_report(self) -> dict[str, Any] | None:
        """The router guard's report (with ``trip`` once it took the canary off), or None
        when the router has none or cannot say (docs/routing.md, The router guard)."""


class MetricsProvider(Protocol):
    def query(self, promql: str, now: datetime) -> list[Sample]:
        """Evaluate an instant query at ``now``; raise ProviderError on any failure."""

    def is_online(self) -> bool:
        """True when the provider answers at all (cheap; no exception)."""


class Runtime(Protocol):
    def ensure_revisions(
        self, deployment: DeploymentKey, wanted: Mapping[str, RevisionSpec]
    ) -> dict[str, RevisionState]:
        """Run exactly the ``wanted`` revisions (keyed by revision id), stop the others.

        Returns the state of every wanted revision, keyed by revision id. Idempotent.
        """

    def record(self, deployment: DeploymentKey, event: Event) -> None:
        """Publish an event (Kubernetes Event, log line, ...)."""
