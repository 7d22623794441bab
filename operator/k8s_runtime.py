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

Independent requests of one reconcile (the lists, the children of a new deployment, the
track Services and the table) go out together on a small shared thread pool: a new
ModelDeployment's ten children cost about one round trip, not ten. Only single-level
batches are submitted (a pooled task never waits on the pool), so it cannot deadlock.
The routing table is written guarded by the version read (``RoutesChanged`` on a race).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlrollout.operator import builders as b
from mlrollout.operator.interfaces import (
    DeploymentKey,
    Event,
    RevisionSpec,
    RevisionState,
    RoutesChanged,
)
from mlrollout.operator.kube import Conflict, Kube, KubeError
from mlrollout.operator.model import GROUP, VERSION, Gateway, ModelRef, Serving, Traffic
from mlrollout.services.router.table import TRACKS, RoutingTable, TableError, Track, parse_table

log = logging.getLogger(__name__)
TABLE_ANNOTATION = "mlrollout.io/routing-table"
# The deployment-wide objects rarely change; re-read them at most this often (seconds) so a
# steady deployment costs a few list calls per tick, yet a deleted router comes back.
SHARED_RECHECK_SECONDS = 60.0
SharedSeen = dict[str, tuple[str, float]]  # owner uid -> (hash of objects, monotonic time)
REVISION_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler")
# Requests in flight at once, over every reconcile of the process (kopf runs several).
WRITE_CONCURRENCY = 16
_POOL = ThreadPoolExecutor(max_workers=WRITE_CONCURRENCY, thread_name_prefix="kube")
T = TypeVar("T")


def together(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run independent API calls at once; results in order. The first error is raised
    after every call has finished (none is left running behind the caller's back)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    futures = [_POOL.submit(call) for call in calls]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


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
        self._shared_done: tuple[str, float] | None = None

    def ensure_revisions(
        self, deployment: DeploymentKey, wanted: Mapping[str, RevisionSpec]
    ) -> dict[str, RevisionState]:
        lists = together([functools.partial(self._owned, kind) for kind in REVISION_KINDS])
        existing = dict(zip(REVISION_KINDS, lists, strict=True))
        calls: list[Callable[[], Any]] = []
        if wanted:
            # No revision child at all: a new ModelDeployment, whose shared objects are
            # most likely absent too, so they are created without a read first.
            fresh = not any(existing.values())
            calls += self._shared_writes(next(iter(wanted.values())).serving, fresh)
        applied: dict[str, int] = {}
        for rev, spec in wanted.items():
            applied[rev] = len(calls)
            calls += self._revision_writes(rev, spec, existing)
        done = together(calls)
        if self._shared_done is not None:
            self.shared_seen[self.owner.uid] = self._shared_done
        self._prune(existing, wanted)
        states = {}
        for rev, spec in wanted.items():
            ready, message = deployment_ready(done[applied[rev]], spec.serving.effective_replicas)
            states[rev] = RevisionState(rev, ready, b.revision_url(self.owner, rev), message)
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

    def _revision_writes(
        self, rev: str, spec: RevisionSpec, existing: Mapping[str, Mapping[str, Any]]
    ) -> list[Callable[[], Any]]:
        """The revision's writes; the first one's result is its Deployment as stored."""
        name = b.revision_name(self.owner.name, rev)
        current = existing["Deployment"].get(name)
        # The track label is fixed at creation: changing it would restart the pods.
        track = (current or {}).get("metadata", {}).get("labels", {}).get(b.LABEL_TRACK)
        serving = to_serving(spec.serving, self.router_image)
        model = to_model(rev, spec.model)
        dep = b.revision_deployment(self.owner, model, serving, track or spec.track)
        svc = b.revision_service(self.owner, rev)
        calls: list[Callable[[], Any]] = [
            lambda: self.kube.apply(dep, current),
            lambda: self.kube.apply(svc, existing["Service"].get(name)),
        ]
        hpa = existing["HorizontalPodAutoscaler"].get(name)
        if serving.autoscaling is not None:
            hpa_obj = b.revision_hpa(self.owner, model, serving.autoscaling)
            calls.append(lambda: self.kube.apply(hpa_obj, hpa))
        elif hpa is not None:  # autoscaling switched off: stop the HPA fighting `replicas`
            ns = self.owner.namespace
            calls.append(lambda: self.kube.delete("HorizontalPodAutoscaler", ns, name))
        return calls

    def _prune(
        self, existing: Mapping[str, Mapping[str, Any]], wanted: Mapping[str, RevisionSpec]
    ) -> None:
        keep = {b.revision_name(self.owner.name, rev) for rev in wanted}
        ns, calls = self.owner.namespace, []
        for kind, objs in existing.items():
            for name in objs.keys() - keep:
                log.info("deleting %s %s/%s: revision not wanted", kind, ns, name)
                calls.append(functools.partial(self.kube.delete, kind, ns, name))
        together(calls)

    def _shared_writes(self, serving_spec: Serving, fresh: bool = False) -> list[Callable[[], Any]]:
        """Writes keeping the deployment-wide objects as built (none when recently seen)."""
        serving = to_serving(serving_spec, self.router_image)
        objs: list[dict[str, Any]] = [b.pod_disruption_budget(self.owner)]
        if self.traffic.router == "builtin":
            objs += [*b.router_objects(self.owner, serving), b.public_service(self.owner)]
        digest = hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
        seen = self.shared_seen.get(self.owner.uid)
        now = time.monotonic()
        if seen is not None and seen[0] == digest and now - seen[1] < SHARED_RECHECK_SECONDS:
            return []
        calls: list[Callable[[], Any]] = [
            functools.partial(self.kube.apply, o, create_first=fresh) for o in objs
        ]
        if seen is None or seen[0] != digest:  # start-up or a spec change: maybe a new path
            calls.append(self._remove_other_path)
        # Remembered by ensure_revisions once the whole batch succeeded; if any write
        # failed, the next reconcile writes them all again.
        self._shared_done = (digest, now)
        return calls

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


def event_object(
    owner: b.Owner, event: Event, now: str, component: str = "mlrollout-operator"
) -> dict[str, Any]:
    """A core/v1 Event about the ModelDeployment ``owner`` (what ``kubectl describe`` shows)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": owner.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def post_event(kube: Kube, owner: b.Owner, event: Event) -> None:
    """Post an Event; a failure is logged, never fails the reconcile it explains."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        kube.create(event_object(owner, event, now))
    except KubeError as exc:
        log.warning(
            "event %s for %s/%s not posted: %s", event.reason, owner.namespace, owner.name, exc
        )
