"""kopf handler registration only: ``kopf run -m mlrollout.operator.main [--all-namespaces]``.

Bodies live in ``handlers.py``; Kubernetes plug-ins in ``k8s_runtime.py`` and ``k8s_routers.py``.
Settings come from ``MLROLLOUT_*`` variables (``settings.py``), read once at import.

No kopf timer: change handlers (create, spec update, resume) reconcile at once, and the
engine's ``requeue_after`` schedules the next reconcile of that object on the pacer
(``pacer.py``, one task for all objects), which writes the status it decides itself.
So an object costs nothing between its due times, and there is no kopf finalizer:
deleting a ModelDeployment never waits for the operator (children go by owner references).

Every write is the operator's: kube.py sends ``fieldManager=mlrollout-operator``, and
kopf's own session (status patches of change handlers, its annotations) gets the same
name as User-Agent, from which the API server names the field manager.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from mlrollout.operator import handlers, notify, opmetrics
from mlrollout.operator import k8s_runtime as kr
from mlrollout.operator.builders import Owner
from mlrollout.operator.handlers import Deps, Emit
from mlrollout.operator.interfaces import Event, Runtime, TrafficRouter
from mlrollout.operator.k8s_routers import make_router
from mlrollout.operator.kube import USER_AGENT, Kube, NotFound
from mlrollout.operator.model import GROUP, PLURAL, VERSION, Traffic
from mlrollout.operator.pacer import Pacer
from mlrollout.operator.prometheus import PrometheusProvider
from mlrollout.operator.settings import OperatorSettings, SettingsError
from mlrollout.operator.webhook import WebhookSender

try:
    SETTINGS = OperatorSettings.from_env()
except SettingsError as exc:
    print(f"mlrollout operator: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

RESOURCE = (GROUP, VERSION, PLURAL)
# kopf's threads for sync change handlers: a burst of new objects is worked on this many
# at a time (each also sends its own writes concurrently, k8s_runtime.together).
HANDLER_THREADS = 16
DUE_THREADS = 4
_deps: Deps | None = None
_pacer: Pacer | None = None
_notifier = WebhookSender()  # notifications, sent from its own thread
_pacer_task: asyncio.Task[None] | None = None


class KubePlugins:
    def __init__(self, kube: Kube, router_image: str | None) -> None:
        self.kube = kube
        self.router_image = router_image
        self.shared_seen: kr.SharedSeen = {}

    def runtime(self, owner: Owner, traffic: Traffic, emit: Emit) -> Runtime:
        return kr.KubeRuntime(self.kube, owner, traffic, emit, self.router_image, self.shared_seen)

    def router(self, owner: Owner, traffic: Traffic) -> TrafficRouter:
        return make_router(self.kube, owner, traffic)


def _owner(body: Mapping[str, Any]) -> Owner:
    meta = body.get("metadata", {})
    return Owner(name=meta.get("name", ""), namespace=meta.get("namespace", ""), uid=meta["uid"])


def _emitter(body: Mapping[str, Any]) -> Emit:
    """Events go through kube.py (our field manager), from any thread."""
    owner = _owner(body)

    def emit(event: Event) -> None:
        current = deps().plugins
        if isinstance(current, KubePlugins):
            kr.post_event(current.kube, owner, event)

    return emit


def deps() -> Deps:
    if _deps is None:
        raise kopf.TemporaryError("operator is still starting", delay=1)
    return _deps


def configure_kopf(settings: kopf.OperatorSettings, ours: OperatorSettings) -> None:
    """kopf's own settings, from ours."""
    prefix = ours.annotations_prefix
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.posting.level = logging.getLevelName(ours.posting_level)
    settings.scanning.disabled = ours.namespace_mode == "namespaced"
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.api_timeout
    settings.networking.request_timeout = ours.api_timeout * 3
    settings.execution.max_workers = HANDLER_THREADS


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's usual kubeconfig / in-cluster login, with our name as User-Agent (so the
    API server records kopf's writes under the ``mlrollout-operator`` field manager)."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers={**info.as_http_headers(), "User-Agent": USER_AGENT},
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
    )


def _write_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    current = deps().plugins
    assert isinstance(current, KubePlugins)
    current.kube.merge_patch("ModelDeployment", namespace, name, {"status": status}, sub="status")


def _run_due(uid: str) -> None:
    current = deps()
    memory = current.known(uid)
    if memory is None or memory.body is None:
        return
    try:
        handlers.reconcile_due(current, uid, _emitter(memory.body), _write_status)
    except NotFound:  # deleted while we decided
        _forget(uid)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    global _deps, _pacer, _pacer_task
    configure_kopf(settings, SETTINGS)
    kube = Kube.from_environment(timeout=SETTINGS.api_timeout, declared_only=True)
    _pacer = Pacer(_run_due, workers=DUE_THREADS)
    _deps = Deps(
        settings=SETTINGS,
        plugins=KubePlugins(kube, SETTINGS.router_image),
        metrics=PrometheusProvider(SETTINGS.prometheus_url, timeout=SETTINGS.prometheus_timeout),
        on_due=_pacer.schedule,
        notify=lambda key, spec, events, now: _notifier.send(
            notify.messages(key, spec, events, now)
        ),
    )
    _pacer_task = asyncio.get_running_loop().create_task(_pacer.run(), name="mlrollout-pacer")
    opmetrics.serve(SETTINGS.metrics_port)
    logger.info(
        "mlrollout operator: prometheus=%s metrics port=%s",
        SETTINGS.prometheus_url,
        SETTINGS.metrics_port or "off",
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _pacer_task is not None:
        _pacer_task.cancel()


def _run(reason: str, body: kopf.Body, patch: kopf.Patch, force: bool = True) -> None:
    handlers.reconcile_object(
        deps(), body=body, patch=patch, emit=_emitter(body), reason=reason, force=force
    )


# backoff: kopf retries a failed change handler after 60 s by default; the API or
# Prometheus being briefly away should cost seconds.
@kopf.on.create(*RESOURCE, backoff=5)
def on_create(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("create", body, patch)


# field="spec": status writes (ours, on every due reconcile) must never look like a new rollout.
@kopf.on.update(*RESOURCE, field="spec", backoff=5)
def on_update(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("update", body, patch)


@kopf.on.resume(*RESOURCE, backoff=5)
def on_resume(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("resume", body, patch)


def _forget(uid: str) -> None:
    if _pacer is not None:
        _pacer.drop(uid)
    current = _deps
    if current is None:
        return
    memory = current.known(uid)
    body = None if memory is None else memory.body
    if body is not None:
        handlers.forget_object(current, body=body)
    current.forget(uid)
    if isinstance(current.plugins, KubePlugins):
        current.plugins.shared_seen.pop(uid, None)


# No finalizer: children are garbage-collected through owner references, so deletion must
# not wait for the operator to be up. The watch's DELETED event drops our memory of it.
# ``when``: only DELETED events reach the handler (kopf logs every call it makes).
@kopf.on.event(*RESOURCE, when=lambda event, **_: event.get("type") == "DELETED")
async def on_deleted(event: kopf.RawEvent, **_: Any) -> None:
    uid = (event.get("object") or {}).get("metadata", {}).get("uid")
    if uid:
        _forget(uid)
