"""Kubernetes implementations of the act layer's plug-ins, over ``kube.Kube``.

- :class:`KubeRuntime` (a ``Runtime``): one Deployment + Service (+ HPA) per wanted
  revision, the deployment-wide objects (router, its RBAC, public Service, PDB), and
  deletion of revisions no longer wanted. Readiness comes from Deployment status.
- the ``TrafficRouter`` implementations are in ``k8s_routers.py``.

Each object is written only when it differs from what the server holds (one list per kind
per call), so a steady deployment costs reads, not writes.

Independent requests of one reconcile (the lists, the children of a new deployment, the
track Services and the table) go out together on a small shared thread pool: a new
ModelDeployment's ten children cost about one round trip, not ten. Only single-level
batches are submitted (a pooled task never waits on the pool), so it cannot deadlock.
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
)
from mlrollout.operator.kube import Kube, KubeError
from mlrollout.operator.model import GROUP, VERSION, ModelRef, Serving, Traffic

log = logging.getLogger(__name__)
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
