"""Kubernetes implementations of the act layer's plug-ins, over ``kube.Kube``.

- :class:`KubeRuntime` (a ``Runtime``): one Deployment + Service (+ HPA) per wanted
  revision, the deployment-wide objects (router, its RBAC, public Service, PDB), and
  deletion of revisions no longer wanted. Readiness comes from Deployment status.
- :class:`ConfigMapRouter` (a ``TrafficRouter``, ``traffic.router: builtin``): the routing
  table in ``{md}-routes``; the router pods watch it.
- :class:`HTTPRouteRouter` (``traffic.router: gatewayAPI``): weights on an HTTPRoute's
  backendRefs; the table itself is kept in an annotation so ``get_routes`` can answer.

Both routers also point ``{md}-stable`` / ``{md}-canary`` at the revisions in the table.
Each object is written only when it differs from what the server holds (one list per kind
per call), so a steady deployment costs reads, not writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlrollout.operator import builders as b
from mlrollout.operator.interfaces import DeploymentKey, Event, RevisionSpec, RevisionState
from mlrollout.operator.kube import Kube, KubeError, is_subset
from mlrollout.operator.model import Gateway, ModelRef, Serving, Traffic

log = logging.getLogger(__name__)
TABLE_ANNOTATION = "mlrollout.io/routing-table"
# The deployment-wide objects rarely change; re-read them at most this often (seconds) so a
# steady deployment costs a few list calls per tick, yet a deleted router comes back.
SHARED_RECHECK_SECONDS = 60.0
SharedSeen = dict[str, tuple[str, float]]  # owner uid -> (hash of objects, monotonic time)
REVISION_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler")


def to_serving(serving: Serving, router_image: str | None = None) -> b.Serving:
    auto = serving.autoscaling
    return b.Serving(
        image=serving.image,
        replicas=serving.effective_replicas,
        autoscaling=None
        if auto is None
        else b.Autoscaling(
            auto.min_replicas, auto.max_replicas, auto.target_cpu_utilization_percentage
        ),
        resources=serving.resources.model_dump(),
        env={e.name: e.value for e in serving.env},
        router_image=router_image,
    )


def to_model(revision: str, model: ModelRef) -> b.ModelRef:
    return b.ModelRef(revision, model.name, model.version, model.uri, model.sha256)


def deployment_ready(dep: Mapping[str, Any], want: int) -> tuple[bool, str]:
    """Ready when the controller saw the latest spec and enough replicas are ready."""
    meta, status = dep.get("metadata", {}), dep.get("status") or {}
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 1)):
        return False, "waiting for the Deployment controller"
    ready = int(status.get("readyReplicas") or 0)
    if want <= 0:
        return False, "scaled to zero"
    if ready < want:
        return False, f"{ready}/{want} replicas ready"
    return True, f"{ready}/{want} replicas ready"


class KubeRuntime:
    """Runs model revisions as Deployments. Built per reconcile from the object's body."""

    def __init__(
        self,
        kube: Kube,
        owner: b.Owner,
        traffic: Traffic,
        emit: Callable[[Event], None],
        router_image: str | None = None,
        shared_seen: SharedSeen | None = None,
    ) -> None:
        self.kube = kube
        self.owner = owner
        self.traffic = traffic
        self.emit = emit
        self.router_image = router_image
        self.shared_seen = {} if shared_seen is None else shared_seen

    def ensure_revisions(
        self, deployment: DeploymentKey, wanted: Mapping[str, RevisionSpec]
    ) -> dict[str, RevisionState]:
        existing = {kind: self._owned(kind) for kind in REVISION_KINDS}
        if wanted:
            self._ensure_shared(next(iter(wanted.values())).serving)
        states = {rev: self._ensure_revision(rev, spec, existing) for rev, spec in wanted.items()}
        self._prune(existing, wanted)
        return states

    def _owned(self, kind: str) -> dict[str, dict[str, Any]]:
        labels = {
            "app.kubernetes.io/instance": self.owner.name,
            "app.kubernetes.io/component": "model-server",
        }
        return {
            o["metadata"]["name"]: o
            for o in self.kube.list(kind, self.owner.namespace, labels)
            if b.LABEL_REVISION in (o["metadata"].get("labels") or {})
        }

    def _ensure_revision(
        self, rev: str, spec: RevisionSpec, existing: Mapping[str, Mapping[str, Any]]
    ) -> RevisionState:
        name = b.revision_name(self.owner.name, rev)
        current = existing["Deployment"].get(name)
        # The track label is fixed at creation: changing it would restart the pods.
        track = (current or {}).get("metadata", {}).get("labels", {}).get(b.LABEL_TRACK)
        serving = to_serving(spec.serving, self.router_image)
        model = to_model(rev, spec.model)
        dep = b.revision_deployment(self.owner, model, serving, track or spec.track)
        applied = self.kube.apply(dep, current)
        self.kube.apply(b.revision_service(self.owner, rev), existing["Service"].get(name))
        hpa = existing["HorizontalPodAutoscaler"].get(name)
        if serving.autoscaling is not None:
            self.kube.apply(b.revision_hpa(self.owner, model, serving.autoscaling), hpa)
        elif hpa is not None:  # autoscaling switched off: stop the HPA fighting `replicas`
            self.kube.delete("HorizontalPodAutoscaler", self.owner.namespace, name)
        ready, message = deployment_ready(applied, spec.serving.effective_replicas)
        return RevisionState(rev, ready, b.revision_url(self.owner, rev), message)

    def _prune(
        self, existing: Mapping[str, Mapping[str, Any]], wanted: Mapping[str, RevisionSpec]
    ) -> None:
        keep = {b.revision_name(self.owner.name, rev) for rev in wanted}
        for kind, objs in existing.items():
            for name in objs.keys() - keep:
                log.info("deleting %s %s/%s: revision not wanted", kind, self.owner.namespace, name)
                self.kube.delete(kind, self.owner.namespace, name)

    def _ensure_shared(self, serving_spec: Serving) -> None:
        serving = to_serving(serving_spec, self.router_image)
        objs: list[dict[str, Any]] = [b.pod_disruption_budget(self.owner)]
        if self.traffic.router == "builtin":
            objs += [*b.router_objects(self.owner, serving), b.public_service(self.owner)]
        digest = hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
        seen = self.shared_seen.get(self.owner.uid)
        now = time.monotonic()
        if seen is not None and seen[0] == digest and now - seen[1] < SHARED_RECHECK_SECONDS:
            return
        for obj in objs:
            self.kube.apply(obj)
        if seen is None or seen[0] != digest:  # start-up or a spec change: maybe a new path
            self._remove_other_path()
        self.shared_seen[self.owner.uid] = (digest, now)

    def _remove_other_path(self) -> None:
        """Delete what the other ``traffic.router`` made, so traffic has one way in.

        Left behind, an HTTPRoute keeps gateway traffic on frozen weights (towards Services a
        later promotion deletes) and a router keeps serving a stale table.
        """
        md, ns = self.owner.name, self.owner.namespace
        if self.traffic.router == "builtin":
            leftovers = [("HTTPRoute", md)]
        else:
            router = f"{md}-router"
            leftovers = [
                ("Deployment", router),
                ("RoleBinding", router),
                ("Role", router),
                ("ServiceAccount", router),
                ("Service", md),
                ("ConfigMap", b.routes_configmap_name(md)),
            ]
        for kind, name in leftovers:
            try:
                current = self.kube.get(kind, ns, name)
            except KubeError as exc:
                if exc.status == 403:  # no rights on the kind (HTTPRoute): we made none
                    continue
                raise
            if current is not None and _owned_by(current, self.owner.uid):
                log.info(
                    "deleting %s %s/%s: traffic.router is now %s",
                    kind,
                    ns,
                    name,
                    self.traffic.router,
                )
                self.kube.delete(kind, ns, name)

    def record(self, deployment: DeploymentKey, event: Event) -> None:
        self.emit(event)


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def sync_track_services(kube: Kube, owner: b.Owner, table: Mapping[str, Any]) -> dict[str, str]:
    """Point ``{md}-{track}`` at the revision the table routes that track to.

    Returns ``{track: revision Service name}``; a track with no backend loses its Service.
    """
    out: dict[str, str] = {}
    for track in ("stable", "canary"):
        backend = (table.get("backends") or {}).get(track)
        revision = b.revision_of_url(owner.name, backend["url"]) if backend else None
        if revision is None:
            if track == "canary":
                kube.delete("Service", owner.namespace, f"{owner.name}-canary")
            continue
        kube.apply(b.track_service(owner, track, revision))
        out[track] = b.revision_name(owner.name, revision)
    return out


class ConfigMapRouter:
    """The built-in router's table lives in ConfigMap ``{md}-routes`` under ``table.json``."""

    def __init__(self, kube: Kube, owner: b.Owner) -> None:
        self.kube = kube
        self.owner = owner

    def set_routes(self, table: dict[str, Any]) -> None:
        sync_track_services(self.kube, self.owner, table)
        cm = self.kube.apply(b.routes_configmap(self.owner, table))
        if stale_guard(_parse_table((cm.get("data") or {}).get(b.GUARD_KEY)), table):
            # A trip of a canary this table no longer routes to (the rollback it caused is
            # recorded): drop it, so a retry of the same revision starts unjudged.
            name = b.routes_configmap_name(self.owner.name)
            patch = {"data": {b.GUARD_KEY: None}}
            self.kube.merge_patch("ConfigMap", self.owner.namespace, name, patch)

    def get_routes(self) -> dict[str, Any] | None:
        return _parse_table(self._data().get(b.TABLE_KEY))

    def guard_report(self) -> dict[str, Any] | None:
        """What the router wrote under ``guard.json`` when its guard tripped."""
        return _parse_table(self._data().get(b.GUARD_KEY))

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

    def set_routes(self, table: dict[str, Any]) -> None:
        services = sync_track_services(self.kube, self.owner, table)
        weights = table.get("weights") or {}
        backends = {t: (svc, int(weights.get(t, 0))) for t, svc in services.items()}
        parents = [
            {"name": p.name, "namespace": p.namespace, "sectionName": p.section_name}
            for p in self.gateway.parent_refs
        ]
        annotation = {TABLE_ANNOTATION: json.dumps(table, sort_keys=True, separators=(",", ":"))}
        route = b.http_route(self.owner, backends, parents, self.gateway.hostnames, annotation)
        current = self.kube.get("HTTPRoute", self.owner.namespace, self.owner.name)
        if current is not None and not is_subset(route, current):
            # backendRefs is a list: merge-patch replaces it whole, which is what we want.
            self.kube.merge_patch("HTTPRoute", self.owner.namespace, self.owner.name, route)
        elif current is None:
            self.kube.create(route)

    def guard_report(self) -> dict[str, Any] | None:
        return None  # no router guard behind a Gateway API route

    def get_routes(self) -> dict[str, Any] | None:
        route = self.kube.get("HTTPRoute", self.owner.namespace, self.owner.name)
        annotations = (route or {}).get("metadata", {}).get("annotations") or {}
        return _parse_table(annotations.get(TABLE_ANNOTATION))


def stale_guard(report: Mapping[str, Any] | None, table: Mapping[str, Any]) -> bool:
    """Whether a guard report names a canary other than the one ``table`` routes to."""
    trip = (report or {}).get("trip")
    if not isinstance(trip, Mapping):
        return report is not None and "canary" not in (table.get("backends") or {})
    canary = (table.get("backends") or {}).get("canary") or {}
    return (trip.get("canaryVersion"), trip.get("canaryUrl")) != (
        canary.get("version"),
        canary.get("url"),
    )


def make_router(kube: Kube, owner: b.Owner, traffic: Traffic) -> ConfigMapRouter | HTTPRouteRouter:
    if traffic.router == "gatewayAPI" and traffic.gateway is not None:
        return HTTPRouteRouter(kube, owner, traffic.gateway)
    return ConfigMapRouter(kube, owner)


def _parse_table(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        table = json.loads(text)
    except ValueError:
        log.warning("routing table in force is not JSON; it will be rewritten")
        return None
    return table if isinstance(table, dict) else None
