"""The one module that talks to the Kubernetes API (synchronous; kopf runs sync handlers in
threads).

Only create, JSON merge-patch, JSON-patch, get, list and delete are used: no server-side
apply, no strategic merge, no PUT. That keeps the semantics identical on every API server
and on the test emulator (docs/kmock.md).

Every write names the operator as its field manager (``fieldManager=mlrollout-operator``,
and the same name leads the User-Agent), so ``managedFields`` and audit logs say who
wrote what. Writes are last-writer-wins merge patches except where a value is computed
from what was read (the routing table's generation): :meth:`Kube.update` sends the
``resourceVersion`` it read and, on 409, reads again and recomputes. Requests go through the ``kubernetes`` package's
configuration (kubeconfig or in-cluster, TLS, token refresh) but bodies are handled as
plain JSON, so resources without generated models (ModelDeployment, HTTPRoute) need no
special casing and a create answered with any 2xx still returns the object.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3
from mlrollout.operator.api import API_VERSION, PLURAL

log = logging.getLogger(__name__)
Obj = dict[str, Any]
APPLIED_HASH = "mlrollout.io/applied-hash"
FIELD_MANAGER = "mlrollout-operator"
WRITE_ATTEMPTS = 5  # bounded retries of a write that raced another writer (409)
# A 429 (API priority and fairness, storage initialising) is sent again this many times
# after the server's Retry-After (capped), then raised like any other error.
RETRY_429 = 4
RETRY_429_MAX_SECONDS = 2.0


def _version() -> str:
    try:
        return importlib.metadata.version("mlrollout")
    except importlib.metadata.PackageNotFoundError:  # a source tree without metadata
        return "dev"


USER_AGENT = f"{FIELD_MANAGER}/{_version()}"


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


@dataclass(frozen=True)
class Resource:
    api_version: str
    plural: str
    namespaced: bool = True
    # What the operator calls on this resource. The chart's RBAC rules are generated from
    # these (``tools/deploy_assets.py``), and the operator's client refuses a
    # call not declared here, so the tests find a missing grant before a cluster does.
    verbs: frozenset[str] = frozenset()
    status_verbs: frozenset[str] = frozenset()  # on the status subresource

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if sub:
            base += f"/{sub}"
        return base


def _verbs(*names: str) -> frozenset[str]:
    return frozenset(names)


# `apply` is get + create + patch; children are found by `list` with a label selector and
# removed with `delete` when a revision or the other router path is no longer wanted.
_CHILD = _verbs("get", "create", "patch", "delete")
RESOURCES: dict[str, Resource] = {
    "ConfigMap": Resource("v1", "configmaps", verbs=_CHILD),
    "Service": Resource("v1", "services", verbs=_CHILD | {"list"}),
    "ServiceAccount": Resource("v1", "serviceaccounts", verbs=_CHILD),
    # The operator posts Events (k8s_runtime.post_event; kopf its warnings); nothing here
    # reads or changes them.
    "Event": Resource("v1", "events", verbs=_verbs("create")),
    "Deployment": Resource("apps/v1", "deployments", verbs=_CHILD | {"list"}),
    "Role": Resource("rbac.authorization.k8s.io/v1", "roles", verbs=_CHILD),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings", verbs=_CHILD),
    # One per ModelDeployment, never removed by the operator (garbage-collected with it).
    "PodDisruptionBudget": Resource(
        "policy/v1", "poddisruptionbudgets", verbs=_verbs("get", "create", "patch")
    ),
    "HorizontalPodAutoscaler": Resource(
        "autoscaling/v2", "horizontalpodautoscalers", verbs=_CHILD | {"list"}
    ),
    "HTTPRoute": Resource("gateway.networking.k8s.io/v1", "httproutes", verbs=_CHILD),
    # kopf lists and watches them, patches its annotations (progress, last-handled
    # configuration) on the object and the status through the status subresource.
    "ModelDeployment": Resource(
        API_VERSION,
        PLURAL,
        verbs=_verbs("list", "watch", "patch"),
        status_verbs=_verbs("patch"),
    ),
}
# Cluster mode only (kopf's scanning, off in namespaced mode): the CRD coming and going.
# kopf watches namespaces only for --namespace patterns; with --all-namespaces (the
# chart's cluster mode) it never does, so that right is not granted. Group, resource, verbs.
CLUSTER_SCOPED_CALLS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("apiextensions.k8s.io", "customresourcedefinitions", _verbs("list", "watch")),
)


def resource_of(kind: str) -> Resource:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise ValueError(f"kind {kind!r} is not one the operator manages") from None


class UndeclaredCall(ValueError):
    """The operator called a verb its RBAC does not grant (not declared in RESOURCES)."""


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field in ``desired`` already has that value in ``actual``.

    Lists must match exactly (merge-patch replaces lists whole). Fields the server adds
    (defaults, status, uid) are ignored, so an unchanged object is never re-patched.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and is_subset(v, actual[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(desired) == len(actual)
            and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
        )
    return bool(desired == actual)


class Kube:
    """A thin JSON client. Every method raises :class:`KubeError` (or a subclass)."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        timeout: float = 10.0,
        *,
        declared_only: bool = False,
    ):
        # declared_only (the operator): refuse any call RESOURCES does not declare, since
        # the operator's RBAC grants nothing else. Tools and tests leave it off.
        self._declared_only = declared_only
        # Children are written concurrently (k8s_runtime); keep those connections pooled.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, 32)
        self._config = configuration
        self._api = kubernetes.client.ApiClient(configuration)
        self._pool = self._api.rest_client.pool_manager
        self._timeout = urllib3.Timeout(connect=min(timeout, 5.0), read=timeout)

    @classmethod
    def from_environment(cls, timeout: float = 10.0, *, declared_only: bool = False) -> Kube:
        """In-cluster service account if present, else the kubeconfig (``KUBECONFIG``)."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
        return cls(configuration, timeout, declared_only=declared_only)

    @classmethod
    def from_kubeconfig(
        cls, path: str | None = None, context: str | None = None, timeout: float = 10.0
    ) -> tuple[Kube, str]:
        """A client for a kubeconfig context (as kubectl picks it) and that context's namespace.

        Without ``path`` and ``context``, in-cluster credentials are used when present.
        """
        configuration = kubernetes.client.Configuration()
        if path is None and context is None:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
                ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
                try:
                    with open(ns_file) as fh:
                        return cls(configuration, timeout), fh.read().strip() or "default"
                except OSError:
                    return cls(configuration, timeout), "default"
            except kubernetes.config.ConfigException:
                pass
        kubernetes.config.load_kube_config(
            config_file=path, context=context, client_configuration=configuration
        )
        namespace = "default"
        try:
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=path)
            chosen = (
                next((c for c in contexts if c["name"] == context), active) if context else active
            )
            namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        except (kubernetes.config.ConfigException, KeyError, TypeError):
            pass
        return cls(configuration, timeout), namespace

    # --- raw ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self._config.host.rstrip("/") + path
        if method in ("POST", "PATCH", "PUT"):
            query = {**(query or {}), "fieldManager": FIELD_MANAGER}
        if query:
            url += "?" + urlencode(query)
        headers = {
            "Accept": "application/json",
            "Content-Type": content_type,
            "User-Agent": USER_AGENT,
        }
        token = self._config.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(RETRY_429 + 1):
            try:
                resp = self._pool.request(
                    method, url, body=data, headers=headers, timeout=self._timeout, retries=False
                )
            except urllib3.exceptions.HTTPError as exc:
                raise KubeError(0, "Unreachable", f"{method} {path}: {exc}") from exc
            if resp.status != 429 or attempt == RETRY_429:
                break
            time.sleep(_retry_after(resp.headers.get("Retry-After"), attempt))
        text = resp.data.decode("utf-8", "replace")
        if resp.status >= 400:
            raise _error(resp.status, method, path, text)
        try:
            return json.loads(text) if text else None
        except ValueError as exc:
            raise KubeError(resp.status, "BadResponse", f"{method} {path}: not JSON") from exc

    # --- typed ----------------------------------------------------------------------------

    def _resource(self, kind: str, verb: str, sub: str | None = None) -> Resource:
        res = resource_of(kind)
        if self._declared_only:
            declared = res.status_verbs if sub == "status" else res.verbs
            if sub not in (None, "status") or verb not in declared:
                what = f"{res.plural}/{sub}" if sub else res.plural
                raise UndeclaredCall(
                    f"{verb} {what}: not declared in kube.RESOURCES, so not granted by the "
                    "chart's RBAC (declare it and run `make crds`)"
                )
        return res

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            obj = self.request("GET", self._resource(kind, "get").path(namespace, name))
        except NotFound:
            return None
        return dict(obj)

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[Obj]:
        query = (
            {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}
            if (labels)
            else None
        )
        out = self.request("GET", self._resource(kind, "list").path(namespace), query=query)
        items = list((out or {}).get("items") or [])
        if labels:  # do not trust the server to have filtered (some test servers do not)
            items = [i for i in items if _has_labels(i, labels)]
        return items

    def create(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj["metadata"]
        res = self._resource(obj["kind"], "create")
        out = self.request("POST", res.path(meta.get("namespace")), body=obj)
        # Some servers answer a create with an empty body; the object is then what we sent.
        return dict(out) if isinstance(out, Mapping) else dict(obj)

    def merge_patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        sub: str | None = None,
        resource_version: str | None = None,
    ) -> Obj:
        """Merge-patch; with ``resource_version`` the server refuses (409 ``Conflict``) if
        the object changed since that version was read."""
        if resource_version is not None:
            meta = {**(patch.get("metadata") or {}), "resourceVersion": resource_version}
            patch = {**patch, "metadata": meta}
        path = self._resource(kind, "patch", sub).path(namespace, name, sub)
        return dict(
            self.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
            or {}
        )

    def json_patch(
        self, kind: str, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]
    ) -> Obj:
        path = self._resource(kind, "patch").path(namespace, name)
        return dict(
            self.request("PATCH", path, body=list(ops), content_type="application/json-patch+json")
            or {}
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self.request("DELETE", self._resource(kind, "delete").path(namespace, name), body=body)
        except NotFound:
            return False
        return True

    def apply(
        self,
        obj: Mapping[str, Any],
        current: Mapping[str, Any] | None = None,
        *,
        guard: bool = False,
        create_first: bool = False,
    ) -> Obj:
        """Make ``obj`` exist as given: create it, or merge-patch what differs.

        ``current`` (from an earlier list) saves a GET; an object already matching is not
        written at all. A create racing another writer (409) falls back to a patch.

        ``guard=True``: ``current`` is what the caller read and decided from (None:
        absent). The write then fails with :class:`Conflict` instead of overwriting if
        the object changed since: created by someone else, or patched past that version.

        ``create_first=True``: the object is most likely absent (a new owner), so try the
        create without reading first; a 409 falls back to read and patch.
        """
        desired = _stamped(obj)
        kind, meta = desired["kind"], desired["metadata"]
        if guard:
            if current is None:
                return self.create(desired)
            if is_subset(desired, current):
                return dict(current)
            rv = (current.get("metadata") or {}).get("resourceVersion")
            return self.merge_patch(
                kind, meta["namespace"], meta["name"], desired, resource_version=rv
            )
        if current is None and not create_first:
            current = self.get(kind, meta["namespace"], meta["name"])
        for _ in range(WRITE_ATTEMPTS):
            if current is not None:
                break
            try:
                return self.create(desired)
            except Conflict:  # created by another writer since we looked: patch theirs
                current = self.get(kind, meta["namespace"], meta["name"])
        if current is None:
            raise Conflict(409, "Conflict", f"{kind} {meta['name']}: created and deleted under us")
        if is_subset(desired, current):
            return dict(current)
        return self.merge_patch(kind, meta["namespace"], meta["name"], desired)

    def update(
        self,
        kind: str,
        namespace: str,
        name: str,
        change: Callable[[Obj | None], Mapping[str, Any] | None],
        attempts: int = WRITE_ATTEMPTS,
    ) -> Obj | None:
        """Read-modify-write that never loses another writer's change.

        ``change(current)`` returns a merge patch for the object read (or, when it is
        absent, the whole object to create), or None to write nothing. The patch carries
        the ``resourceVersion`` read, so a concurrent write makes the server answer 409;
        then the object is read again and ``change`` recomputed, ``attempts`` times at most.
        """
        last: Conflict | None = None
        for _ in range(max(1, attempts)):
            current = self.get(kind, namespace, name)
            wanted = change(current)
            if wanted is None:
                return current
            try:
                if current is None:
                    return self.create(wanted)
                rv = current.get("metadata", {}).get("resourceVersion")
                return self.merge_patch(kind, namespace, name, wanted, resource_version=rv)
            except Conflict as exc:
                log.info(
                    "%s %s/%s changed while we wrote it; reading it again", kind, namespace, name
                )
                last = exc
        assert last is not None
        raise last


def _stamped(obj: Mapping[str, Any]) -> Obj:
    """``obj`` without status, annotated with a digest of itself.

    ``is_subset`` ignores fields the server added, so on its own it also ignores a field
    we stopped sending (a removed resource limit inside a container). The digest changes
    then, so the object is patched and merge-patch replaces the lists it holds.
    """
    body = {k: v for k, v in obj.items() if k != "status"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    meta = dict(body["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: digest}
    return {**body, "metadata": meta}


def _retry_after(header: str | None, attempt: int) -> float:
    """Seconds to wait before sending a 429'd request again (the server's, capped)."""
    try:
        wanted = float(header) if header else 0.1 * 2**attempt
    except ValueError:
        wanted = 0.1 * 2**attempt
    return max(0.05, min(wanted, RETRY_429_MAX_SECONDS))


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _error(status: int, method: str, path: str, text: str) -> KubeError:
    reason, message = "", text[:300]
    try:
        body = json.loads(text)
        reason, message = str(body.get("reason", "")), str(body.get("message", message))
    except (ValueError, AttributeError):
        pass
    cls = NotFound if status == 404 else Conflict if status == 409 else KubeError
    return cls(status, reason or "Error", f"{method} {path}: {message}")
