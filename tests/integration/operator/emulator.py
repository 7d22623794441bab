"""A stricter kmock KubernetesEmulator for the operator's integration tests.

Stock kmock 0.8 stores objects as plain JSON and serves them back. The operator (kopf and
our kube.py) needs more of an API server than that, so this subclass serves object
requests itself, keeping kmock's ``objects`` store (so ``emu.objects[...]`` assertions
keep working) and kmock's discovery:

- metadata filled in on create: uid, resourceVersion (one global counter),
  generation, creationTimestamp; ``generateName``; 201 on create, 409 on conflicts;
- ``generation`` bumped only when something other than metadata/status changes;
- the status subresource separated (for resources declaring ``status``);
- merge-patch and JSON-patch only; strategic-merge, apply-patch and PUT are refused
  (415/405) so code relying on them fails here instead of silently half-working;
- list and watch honour ``labelSelector`` (equality, inequality, existence);
- watch honours ``resourceVersion`` (replays later events from a bounded log, 410 when
  too old) and ``timeoutSeconds``;
- finalizers block deletion; removing the last one completes it; deleting an owner
  deletes its dependents (synchronous stand-in for the garbage collector);
- the request log is trimmed, because kmock scans it on every request.

What it still does not check is listed in docs/kmock.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import apps, dicts, enums, k8s, references, rendering

T = TypeVar("T")
Key = tuple[references.resource, str | None, str]
KEEP_REQUESTS = 64
EVENT_LOG = 20_000


class Gone(k8s.KubernetesError):
    pass


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """``a=b,c!=d,e,!f`` -> [(key, op, value)]; set-based (``in``/``notin``) is not supported."""
    out: list[tuple[str, str, str | None]] = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        if " in " in raw or " notin " in raw:
            raise k8s.KubernetesError(400, "BadRequest", f"set-based selector unsupported: {raw}")
        if "!=" in raw:
            k, v = raw.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in raw or "=" in raw:
            k, v = raw.replace("==", "=").split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif raw.startswith("!"):
            out.append((raw[1:], "!", None))
        else:
            out.append((raw, "exists", None))
    return out


def matches(labels: Mapping[str, str], selector: list[tuple[str, str, str | None]]) -> bool:
    for key, op, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


class Emulator(k8s.KubernetesEmulator):
    """See the module docstring. Declare resources with :meth:`declare` before use."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv = 0
        self.log: dict[references.resource, collections.deque[tuple[int, dict[str, Any]]]] = (
            collections.defaultdict(lambda: collections.deque(maxlen=EVENT_LOG))
        )
        self.changed = asyncio.Condition()
        # "create deployments ns" -> how many; the tests' check for duplicate writes.
        self.counts: collections.Counter[str] = collections.Counter()
        # Stand-in for the Deployment controller and kubelet: Deployments report all their
        # replicas ready as soon as they are written, unless their name is listed here.
        self.unready: set[str] = set()
        self.namespaces: set[str] = set()

    def declare(
        self, key: str, kind: str, *, namespaced: bool = True, status: bool = False
    ) -> None:
        self.resources[key] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            verbs={"get", "list", "watch", "create", "patch", "delete"},
            subresources={"status"} if status else set(),
        )

    def _has_status(self, resource: references.resource) -> bool:
        for res in self.resources:
            if res == resource:
                return "status" in self.resources[res].subresources
        return False

    def _kind(self, resource: references.resource) -> str:
        for res in self.resources:
            if res == resource and self.resources[res].kind:
                return str(self.resources[res].kind)
        raise k8s.KubernetesResourceNotFoundError()

    # --- dispatch ---------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser fails on the cluster-wide namespace list (it reads
        # "namespaces" as the start of a namespaced path), which kopf requests at start-up.
        if raw.path == "/api/v1/namespaces":
            return await self._namespaces(raw)
        return await super().__call__(raw)

    async def _namespaces(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        names = sorted({ns for (_, ns, _) in self._objects if ns} | self.namespaces)
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "uid": n}}
            for n in names
        ]
        if raw.query.get("watch") != "true":
            body = {"kind": "NamespaceList", "apiVersion": "v1", "items": items}
            body["metadata"] = {"resourceVersion": str(self.rv)}
            return aiohttp.web.json_response(body)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        timeout = float(raw.query.get("timeoutSeconds") or 3600)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            if not raw.query.get("resourceVersion"):
                for item in items:
                    await response.write(
                        json.dumps({"type": "ADDED", "object": item}).encode() + b"\n"
                    )
            await asyncio.sleep(timeout)  # namespaces never change in these tests
        return response

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        del self._requests[:-KEEP_REQUESTS]
        if request.resource is None or request.resource.plural is None:
            return await apps.RawHandler._handle(self, request)
        if request.resource.plural == "" or request.resource.version is None:
            return await apps.RawHandler._handle(self, request)
        try:
            self._kind(request.resource)
            if request.action == enums.action.WATCH:
                return await self._watch(request)
            async with self.changed:
                status, body = self._serve_object(request)
                if status < 300 and request.action != enums.action.FETCH:
                    self.changed.notify_all()
            return aiohttp.web.json_response(body, status=status)
        except k8s.KubernetesError as exc:
            return await self._render_error(exc)

    def _serve_object(self, request: rendering.Request) -> tuple[int, Any]:
        action, sub = request.action, request.subresource
        if sub not in (None, "status") or (
            sub == "status" and not self._has_status(request.resource)
        ):
            raise k8s.KubernetesNotFoundError(message=f"no subresource {sub!r}")
        if request.method == enums.method.PUT:
            raise k8s.KubernetesError(405, "MethodNotAllowed", "PUT is not emulated; use PATCH")
        if action == enums.action.LIST:
            return 200, self._list(request)
        if action == enums.action.FETCH:
            return 200, self._get(self._key(request)).raw
        if action == enums.action.CREATE:
            return 201, self._create(request)
        if action == enums.action.UPDATE:
            return 200, self._patch(request)
        if action == enums.action.DELETE:
            return 200, self._delete(self._key(request))
        raise k8s.KubernetesError(405, "MethodNotAllowed", f"{request.method} not emulated")

    # --- helpers ----------------------------------------------------------------------

    def _key(self, request: rendering.Request) -> Key:
        assert request.resource is not None and request.name is not None
        return (request.resource, request.namespace, request.name)

    def _get(self, key: Key) -> kmock.Object:
        if key not in self._objects or self._objects[key].deleted:
            raise k8s.KubernetesObjectNotFoundError(message=f"{key[0].plural} {key[2]!r} not found")
        return self._objects[key]

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _record(self, resource: references.resource, kind: str, raw: dict[str, Any]) -> None:
        self.log[resource].append((self.rv, {"type": kind, "object": copy.deepcopy(raw)}))

    def _list(self, request: rendering.Request) -> dict[str, Any]:
        selector = parse_selector(request.params.get("labelSelector", ""))
        items = [
            obj.raw
            for (res, ns, _), obj in self._objects.items()
            if res == request.resource and not obj.deleted
            if request.namespace is None or ns == request.namespace
            if matches(obj.raw.get("metadata", {}).get("labels") or {}, selector)
        ]
        assert request.resource is not None
        return {
            "apiVersion": request.resource.group + "/" + request.resource.version
            if request.resource.group
            else request.resource.version,
            "kind": self._kind(request.resource) + "List",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    def _create(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if body is None:
            raise k8s.KubernetesError(400, "BadRequest", "create needs a JSON object body")
        meta = body.setdefault("metadata", {})
        if request.namespace and meta.get("namespace", request.namespace) != request.namespace:
            raise k8s.KubernetesError(400, "BadRequest", "namespace in body and URL differ")
        if request.namespace:
            meta["namespace"] = request.namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise k8s.KubernetesError(422, "Invalid", "metadata.name or generateName required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key: Key = (request.resource, request.namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise k8s.KubernetesError(409, "AlreadyExists", f"{meta['name']!r} already exists")
        if self._has_status(request.resource):
            body.pop("status", None)
        group, version = request.resource.group, request.resource.version
        body.setdefault("apiVersion", f"{group}/{version}" if group else version)
        body.setdefault("kind", self._kind(request.resource))
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            generation=1,
            creationTimestamp=_now(),
        )
        self.counts[f"create {request.resource.plural} {request.namespace}"] += 1
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        self._record(request.resource, "ADDED", body)
        return self._controller(key) or body

    def _patch(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None
        key = self._key(request)
        obj = self._get(key)
        old = copy.deepcopy(obj.raw)
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if ctype == "application/merge-patch+json" and isinstance(request.data, dict):
                new = dict(dicts.merge_patch_dict(copy.deepcopy(old), request.data))
            elif ctype == "application/json-patch+json" and isinstance(request.data, list):
                new = jsonpatch.apply_patch(copy.deepcopy(old), request.data)
            else:
                raise k8s.KubernetesError(415, "UnsupportedMediaType", f"patch type {ctype!r}")
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise k8s.KubernetesError(422, "Invalid", f"JSON patch failed: {exc}") from exc
        new = self._guard(request, old, new)
        if new == old:
            return old  # a no-op patch changes nothing, not even resourceVersion
        meta = new["metadata"]
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        self.counts[f"patch {request.resource.plural} {request.namespace}"] += 1
        obj.create(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._finish_delete(key)
        self._record(request.resource, "MODIFIED", new)
        if request.subresource != "status":
            return self._controller(key) or new
        return new

    def _controller(self, key: Key) -> dict[str, Any] | None:
        """Report a Deployment's replicas ready (a MODIFIED event, like the real controller)."""
        if key[0].plural != "deployments" or key[2] in self.unready:
            return None
        obj = self._objects[key]
        new = copy.deepcopy(obj.raw)
        replicas = int(new.get("spec", {}).get("replicas", 1))
        new["status"] = {
            "observedGeneration": new["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        new["metadata"]["resourceVersion"] = self._next_rv()
        obj.create(new)
        self._record(key[0], "MODIFIED", new)
        return new

    def _guard(self, request: rendering.Request, old: dict[str, Any], new: Any) -> dict[str, Any]:
        """Keep immutable metadata and split main/status like the API server does."""
        if not isinstance(new, dict):
            raise k8s.KubernetesError(422, "Invalid", "patched object is not an object")
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        meta["deletionTimestamp"] = old["metadata"].get("deletionTimestamp")
        if meta["deletionTimestamp"] is None:
            del meta["deletionTimestamp"]
        assert request.resource is not None
        if self._has_status(request.resource):
            if request.subresource == "status":
                keep = {k: v for k, v in old.items() if k != "status"}
                return {**keep, **({"status": new["status"]} if "status" in new else {})}
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        return new

    def _delete(self, key: Key) -> dict[str, Any]:
        obj = self._get(key)
        meta = obj.raw.get("metadata", {})
        if meta.get("deletionTimestamp"):
            return obj.raw
        if meta.get("finalizers"):
            new = copy.deepcopy(obj.raw)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = self._next_rv()
            obj.create(new)
            self._record(key[0], "MODIFIED", new)
            return new
        return self._finish_delete(key)

    def _finish_delete(self, key: Key) -> dict[str, Any]:
        obj = self._objects[key]
        raw = copy.deepcopy(obj.raw)
        raw["metadata"]["resourceVersion"] = self._next_rv()
        obj.delete()
        self.counts[f"delete {key[0].plural} {key[1]}"] += 1
        self._record(key[0], "DELETED", raw)
        uid = raw["metadata"].get("uid")
        dependents = [
            k
            for k, o in self._objects.items()
            if not o.deleted
            and any(
                r.get("uid") == uid for r in o.raw.get("metadata", {}).get("ownerReferences", [])
            )
        ]
        for dep in dependents:
            with contextlib.suppress(k8s.KubernetesError):
                self._delete(dep)
        return raw

    # --- watch ------------------------------------------------------------------------

    async def _watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request._raw_request is not None
        resource = request.resource
        selector = parse_selector(request.params.get("labelSelector", ""))
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        since_text = request.params.get("resourceVersion") or ""

        def wanted(event: Mapping[str, Any]) -> bool:
            meta = event["object"].get("metadata", {})
            if request.namespace is not None and meta.get("namespace") != request.namespace:
                return False
            if request.name is not None and meta.get("name") != request.name:
                return False
            return matches(meta.get("labels") or {}, selector)

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        async with self.changed:
            if since_text in ("", "0"):
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o.raw)}
                    for (res, _, _), o in self._objects.items()
                    if res == resource and not o.deleted
                ]
                since = self.rv
            else:
                since = int(since_text)
                log = self.log[resource]
                if log and log[0][0] > since + 1 and len(log) == log.maxlen:
                    initial, since = [], -1
                else:
                    initial = [e for rv, e in log if rv > since]
                    since = self.rv
        if since < 0:
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        deadline = asyncio.get_running_loop().time() + timeout
        with contextlib.suppress(ConnectionError, asyncio.CancelledError, TimeoutError):
            for event in initial:
                if wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")
            while True:
                async with asyncio.timeout_at(deadline), self.changed:
                    await self.changed.wait_for(lambda s=since: self.rv > s)  # type: ignore[misc]
                    fresh = [e for rv, e in self.log[resource] if rv > since]
                    since = self.rv
                for event in fresh:
                    if wanted(event):
                        await response.write(json.dumps(event).encode() + b"\n")
        return response

    # --- test helpers (call through EmulatorThread.call from other threads) ------------

    def live(self, key: str, namespace: str | None = None) -> list[dict[str, Any]]:
        res = kmock.resource(key)
        return [
            copy.deepcopy(o.raw)
            for (r, ns, _), o in self._objects.items()
            if r == res and not o.deleted and (namespace is None or ns == namespace)
        ]


CORE_RESOURCES: list[tuple[str, str, bool]] = [
    ("v1/configmaps", "ConfigMap", False),
    ("v1/services", "Service", False),
    ("v1/serviceaccounts", "ServiceAccount", False),
    ("v1/events", "Event", False),
    ("v1/namespaces", "Namespace", False),
    ("apps/v1/deployments", "Deployment", True),
    ("rbac.authorization.k8s.io/v1/roles", "Role", False),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", False),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True),
    ("autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    ("gateway.networking.k8s.io/v1/httproutes", "HTTPRoute", True),
    ("mlrollout.io/v1alpha1/modeldeployments", "ModelDeployment", True),
]


class EmulatorThread:
    """Runs an :class:`Emulator` on 127.0.0.1 in its own thread and event loop.

    The operator under test is another process, so the tests stay synchronous; they
    read the emulator's state through :meth:`call`, which runs on the emulator's loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.emu: Emulator | None = None
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"emulator did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to __enter__
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        emu = Emulator()
        for key, kind, status in CORE_RESOURCES:
            emu.declare(key, kind, namespaced=key != "v1/namespaces", status=status)
        async with emu, kmock.Server(emu) as server:
            self.emu = emu
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[Emulator], T]) -> T:
        async def run() -> T:
            assert self.emu is not None
            return fn(self.emu)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def live(self, key: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda e: e.live(key, namespace))

    def names(self, key: str, namespace: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.live(key, namespace)}


def iter_kinds(objs: list[dict[str, Any]]) -> Iterator[str]:
    for o in objs:
        yield f"{o['kind']}/{o['metadata']['name']}"
