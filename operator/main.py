"""kopf handler registration only: ``kopf run -m mlrollout.operator.main [--all-namespaces]``.

Bodies live in ``handlers.py``; Kubernetes plug-ins in ``k8s_runtime.py``.
Settings come from ``MLROLLOUT_*`` variables (``settings.py``), read once at import because
the timer interval is a decorator argument.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import kopf
from mlrollout.operator import handlers, opmetrics
from mlrollout.operator import k8s_runtime as kr
from mlrollout.operator.builders import Owner
from mlrollout.operator.handlers import Deps, Emit
from mlrollout.operator.interfaces import Event, Runtime, TrafficRouter
from mlrollout.operator.kube import Kube
from mlrollout.operator.model import GROUP, PLURAL, VERSION, Traffic
from mlrollout.operator.prometheus import PrometheusProvider
from mlrollout.operator.settings import OperatorSettings, SettingsError

try:
    SETTINGS = OperatorSettings.from_env()
except SettingsError as exc:
    print(f"mlrollout operator: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

RESOURCE = (GROUP, VERSION, PLURAL)
_deps: Deps | None = None


class KubePlugins:
    def __init__(self, kube: Kube, router_image: str | None) -> None:
        self.kube = kube
        self.router_image = router_image
        self.shared_seen: kr.SharedSeen = {}

    def runtime(self, owner: Owner, traffic: Traffic, emit: Emit) -> Runtime:
        return kr.KubeRuntime(self.kube, owner, traffic, emit, self.router_image, self.shared_seen)

    def router(self, owner: Owner, traffic: Traffic) -> TrafficRouter:
        return kr.make_router(self.kube, owner, traffic)


def _emitter(body: kopf.Body) -> Emit:
    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)

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


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    global _deps
    configure_kopf(settings, SETTINGS)
    kube = Kube.from_environment(timeout=SETTINGS.api_timeout)
    _deps = Deps(
        settings=SETTINGS,
        plugins=KubePlugins(kube, SETTINGS.router_image),
        metrics=PrometheusProvider(SETTINGS.prometheus_url, timeout=SETTINGS.prometheus_timeout),
    )
    opmetrics.serve(SETTINGS.metrics_port)
    logger.info(
        "mlrollout operator: prometheus=%s tick=%.1fs metrics port=%s",
        SETTINGS.prometheus_url,
        SETTINGS.tick_seconds,
        SETTINGS.metrics_port or "off",
    )


def _run(reason: str, body: kopf.Body, patch: kopf.Patch, force: bool = True) -> None:
    handlers.reconcile_object(
        deps(), body=body, patch=patch, emit=_emitter(body), reason=reason, force=force
    )


# backoff: kopf retries a failed change handler after 60 s by default; the API or
# Prometheus being briefly away should cost seconds.
@kopf.on.create(*RESOURCE, backoff=5)
def on_create(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("create", body, patch)


# field="spec": status writes (ours, every tick) must never look like a new rollout.
@kopf.on.update(*RESOURCE, field="spec", backoff=5)
def on_update(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("update", body, patch)


@kopf.on.resume(*RESOURCE, backoff=5)
def on_resume(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("resume", body, patch)


@kopf.timer(*RESOURCE, interval=SETTINGS.tick_seconds, initial_delay=SETTINGS.tick_seconds)
def on_tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _run("timer", body, patch, force=False)


# optional=True: no finalizer. Children are garbage-collected through owner references,
# so deletion must not wait for the operator to be up.
@kopf.on.delete(*RESOURCE, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    current = deps()
    handlers.forget_object(current, body=body)
    if isinstance(current.plugins, KubePlugins):
        current.plugins.shared_seen.pop(body.get("metadata", {}).get("uid", ""), None)
