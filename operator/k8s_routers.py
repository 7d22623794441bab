"""Kubernetes implementations of ``TrafficRouter``, over ``kube.Kube``.

- :class:`ConfigMapRouter` (``traffic.router: builtin``): the routing table in
  ``{md}-routes``; the router pods watch it.
- :class:`HTTPRouteRouter` (``traffic.router: gatewayAPI``): weights on an HTTPRoute's
  backendRefs; the table itself is kept in an annotation so ``get_routes`` can answer.

Both also point ``{md}-stable`` / ``{md}-canary`` at the revisions in the table, in the
same batch as the table (``k8s_runtime.together``). The table is written guarded by the
version read (``RoutesChanged`` on a race).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlrollout.operator import builders as b
from mlrollout.operator.interfaces import RoutesChanged
from mlrollout.operator.k8s_runtime import together
from mlrollout.operator.kube import Conflict, Kube
from mlrollout.operator.model import Gateway, Traffic
from mlrollout.services.router.table import TRACKS, RoutingTable, TableError, Track, parse_table

log = logging.getLogger(__name__)
TABLE_ANNOTATION = "mlrollout.io/routing-table"


def sync_track_services(
    kube: Kube, owner: b.Owner, table: RoutingTable, also: Sequence[Callable[[], Any]] = ()
) -> dict[Track, str]:
    """Point ``{md}-{track}`` at the revision the table routes that track to.

    Returns ``{track: revision Service name}``; a track with no backend loses its Service.
    ``also``: further writes sent in the same batch (the table itself).
    """
    out: dict[Track, str] = {}
    calls: list[Callable[[], Any]] = list(also)
    for track in TRACKS:
        backend = table.backends.get(track)
        revision = b.revision_of_url(owner.name, backend.url) if backend else None
        if revision is None:
            if track == "canary":
                calls.append(
                    lambda: kube.delete("Service", owner.namespace, f"{owner.name}-canary")
                )
            continue
        svc = b.track_service(owner, track, revision)
        calls.append(functools.partial(kube.apply, svc))
        out[track] = b.revision_name(owner.name, revision)
    together(calls)
    return out


class _Guarded:
    """The object a router last read, so its write can be refused if it changed since."""

    def __init__(self) -> None:
        self.read = False
        self.current: dict[str, Any] | None = None

    def saw(self, obj: dict[str, Any] | None) -> dict[str, Any] | None:
        self.read, self.current = True, obj
        return obj

    def write(self, kube: Kube, obj: Mapping[str, Any]) -> Any:
        try:
            if not self.read:  # never read: nothing was decided from it
                return kube.apply(obj)
            out = kube.apply(obj, self.current, guard=True)
        except Conflict as exc:
            self.read = False
            raise RoutesChanged(f"{obj['kind']} {obj['metadata']['name']}: {exc}") from exc
        self.current = out
        return out


class ConfigMapRouter:
    """The built-in router's table lives in ConfigMap ``{md}-routes`` under ``table.json``."""

    def __init__(self, kube: Kube, owner: b.Owner) -> None:
        self.kube = kube
        self.owner = owner
        self._table = _Guarded()

    def set_routes(self, table: RoutingTable) -> None:
        # The table goes out with the track Services; a router pod ignores a table whose
        # Service is not there yet only for the moment they differ (both are retried).
        cm = b.routes_configmap(self.owner, table.to_doc())
        sync_track_services(
            self.kube, self.owner, table, [lambda: self._table.write(self.kube, cm)]
        )
        written = self._table.current  # the ConfigMap as the write left it (or as read)
        data = (written or {}).get("data") if written is not None else self._data()
        data = data if isinstance(data, dict) else {}
        if stale_guard(_parse_json(data.get(b.GUARD_KEY)), table):
            # A trip of a canary this table no longer routes to (the rollback it caused is
            # recorded): drop it, so a retry of the same revision starts unjudged.
            name = b.routes_configmap_name(self.owner.name)
            patch = {"data": {b.GUARD_KEY: None}}
            self._table.saw(self.kube.merge_patch("ConfigMap", self.owner.namespace, name, patch))

    def get_routes(self) -> RoutingTable | None:
        cm = self._table.saw(
            self.kube.get(
                "ConfigMap", self.owner.namespace, b.routes_configmap_name(self.owner.name)
            )
        )
        return _table_in_force((cm or {}).get("data", {}).get(b.TABLE_KEY))

    def guard_report(self) -> dict[str, Any] | None:
        """What the router wrote under ``guard.json`` when its guard tripped."""
        return _parse_json(self._data().get(b.GUARD_KEY))

    def _data(self) -> dict[str, Any]:
        name = b.routes_configmap_name(self.owner.name)
        cm = self.kube.get("ConfigMap", self.owner.namespace, name)
        data = (cm or {}).get("data")
        return data if isinstance(data, dict) else {}


class HTTPRouteRouter:
    """Weights on a Gateway API HTTPRoute named after the ModelDeployment."""

    def __init__(self, kube: Kube, owner: b.Owner, gateway: Gateway) -> None:
        self.kube = kube
        self.owner = owner
        self.gateway = gateway
        self._route = _Guarded()

    def set_routes(self, table: RoutingTable) -> None:
        services = sync_track_services(self.kube, self.owner, table)
        backends: dict[str, tuple[str, int]] = {
            t: (svc, table.weights.get(t, 0)) for t, svc in services.items()
        }
        parents = [
            {"name": p.name, "namespace": p.namespace, "sectionName": p.section_name}
            for p in self.gateway.parent_refs
        ]
        doc = table.to_doc()
        annotation = {TABLE_ANNOTATION: json.dumps(doc, sort_keys=True, separators=(",", ":"))}
        route = b.http_route(self.owner, backends, parents, self.gateway.hostnames, annotation)
        # backendRefs is a list: merge-patch replaces it whole, which is what we want.
        self._route.write(self.kube, route)

    def guard_report(self) -> dict[str, Any] | None:
        return None  # no router guard behind a Gateway API route

    def get_routes(self) -> RoutingTable | None:
        route = self._route.saw(self.kube.get("HTTPRoute", self.owner.namespace, self.owner.name))
        annotations = (route or {}).get("metadata", {}).get("annotations") or {}
        return _table_in_force(annotations.get(TABLE_ANNOTATION))


def stale_guard(report: Mapping[str, Any] | None, table: RoutingTable) -> bool:
    """Whether a guard report names a canary other than the one ``table`` routes to."""
    trip = (report or {}).get("trip")
    canary = table.backends.get("canary")
    if not isinstance(trip, Mapping):
        return report is not None and canary is None
    return (trip.get("canaryVersion"), trip.get("canaryUrl")) != (
        (canary.version, canary.url) if canary else (None, None)
    )


def make_router(kube: Kube, owner: b.Owner, traffic: Traffic) -> ConfigMapRouter | HTTPRouteRouter:
    if traffic.router == "gatewayAPI" and traffic.gateway is not None:
        return HTTPRouteRouter(kube, owner, traffic.gateway)
    return ConfigMapRouter(kube, owner)


def _parse_json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        log.warning("a document in force is not JSON; it will be rewritten")
        return None
    return doc if isinstance(doc, dict) else None


def _table_in_force(text: str | None) -> RoutingTable | None:
    """The table in force, or None when there is none or the router could not use it
    either (it is then rewritten from the decision, like a missing one)."""
    if not text:
        return None
    try:
        return parse_table(text)
    except TableError as exc:
        log.warning("routing table in force is unusable; it will be rewritten: %s", exc)
        return None
