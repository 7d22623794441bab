"""The BentoML service: one model artifact behind the HTTP adapter in ``app.py``.

This module is what BentoML imports, in the supervisor and in every worker, both
for ``mlrollout serve`` and in the Kubernetes image (``bentoml serve
mlrollout.services.server.service:ModelServer``). Per-instance settings come from
environment variables (see ``settings.py``) because BentoML starts workers as fresh
interpreters that only inherit the environment.

Choices that keep the per-request cost low (measured in docs/serving.md):
- the model routes live in a mounted raw ASGI app, not in ``@bentoml.api`` methods,
  and a service middleware hands them to it before BentoML's context middleware and
  Starlette router;
- BentoML's own HTTP metrics are off: they label series by raw path, so every unknown
  path would create new series, and ``/metrics`` serves our registry instead;
- OpenTelemetry skips the model routes (it records spans even at sample rate 0)
  unless ``MLROLLOUT_TRACING=1``;
- the access log is off (the request metrics carry the same information).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, cast

import bentoml

from .app import FastPath, Holder, ModelApp, Rejecter
from .guard import install as install_http_guard
from .settings import HOT_ROUTES, Settings

if TYPE_CHECKING:
    from mlrollout.services.model.dataplane import Dataplane

logger = logging.getLogger("mlrollout.server")

settings = Settings.from_env()
holder = Holder()
app = ModelApp(
    holder, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s
)


def count_refusal(reason: str) -> None:
    holder.count_refusal(reason)


# Header size/time limits and upgrade refusals for the uvicorn BentoML starts in this
# worker (guard.py says why this is a patch of uvicorn's protocol table).
install_http_guard(settings.http_limits, on_refusal=count_refusal)


def load_into(target: Holder, current: Settings) -> None:
    """Load (download, verify) the artifact, warm it up and publish it.

    A failure is recorded on the holder (``/readyz`` then says why) rather than
    raised: a dead worker would only be restarted by BentoML to fail again.
    """
    from mlrollout.services.model.dataplane import Dataplane

    started = time.monotonic()
    try:
        plane = Dataplane.from_artifact(
            current.artifact,
            sha256=current.sha256 or None,
            deployment=current.deployment,
            track=current.track,
            max_body_bytes=current.max_body_bytes,
            drift_window=current.drift_window,
            feedback_bytes=current.feedback_bytes,
        )
    except Exception as exc:
        target.error = f"cannot load {current.artifact}: {exc}"
        logger.error("%s", target.error)
        return
    target.model_name = plane.name
    target.model_version = plane.version
    target.reject = rejecter(plane)
    target.count_refusal = plane.metrics.count_http_refusal
    target.dataplane = plane
    logger.info("model %s %s ready in %.2fs", plane.name, plane.version, time.monotonic() - started)


def rejecter(plane: Dataplane) -> Rejecter:
    """Count input refused by the HTTP layer the same way the dataplane counts its own."""

    def reject(endpoint: str, reason: str, seconds: float) -> None:
        if reason:  # "" answers a request that broke no input rule (a body too slow)
            plane.metrics.count_violation(reason)
        plane.metrics.observe_request(endpoint, "client_error", seconds)

    return reject


_tracing = {} if settings.tracing else {"excluded_urls": list(HOT_ROUTES)}


@bentoml.asgi_app(app, path="/", name="model")
@bentoml.service(
    name="mlrollout-model",
    workers=settings.workers,
    metrics={"enabled": False},
    logging={"access": {"enabled": settings.access_log}},
    tracing=_tracing,  # type: ignore[typeddict-item]
)
class ModelServer:
    """Starts loading on construction; ``/readyz`` turns 200 once the model is warm."""

    def __init__(self) -> None:
        _die_with_supervisor()
        self._loader = threading.Thread(
            target=load_into, args=(holder, settings), name="model-loader", daemon=True
        )
        self._loader.start()

    async def __is_ready__(self) -> bool:
        return holder.ready


def _die_with_supervisor() -> None:
    """Have the kernel SIGTERM this worker when its supervisor dies, even by SIGKILL.

    BentoML starts workers in sessions of their own, so a killed ``mlrollout serve``
    would leave a worker answering on the port with the old model (Linux only; in
    Kubernetes the container's end takes every process with it anyway).
    """
    if not sys.platform.startswith("linux"):
        return
    supervisor = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: keep serving, as before
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1

service = cast("bentoml.Service[ModelServer]", ModelServer)
service.add_asgi_middleware(FastPath, model_app=app)  # type: ignore[arg-type]
