"""The HTTP adapter: a raw ASGI app that turns requests into Dataplane calls.

It is mounted into the BentoML service (``service.py``) and owns every model route.
It is a plain ASGI callable rather than a Starlette app because the hot routes are
matched by one dict lookup and the body is read at most once, with the size limit
enforced while reading: the per-request CPU budget is a few tens of microseconds.

Nothing here knows about models, metrics or drift; the Dataplane does. What this
layer adds is the HTTP side of bad input (size limit, content type, method, unknown
path) and the request id.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT_S = 15.0
# Echoed ids are client-controlled: keep them short and free of header-breaking bytes.
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_JSON_TYPES = (b"application/json", b"text/json", b"application/octet-stream")


class Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> dict[str, str]: ...

    def body(self) -> bytes: ...


class Dataplane(Protocol):
    """What the adapter needs from ``mlrollout.services.model.dataplane.Dataplane``."""

    name: str

    @property
    def ready(self) -> bool: ...

    def predict(
        self, body: bytes, request_id: str | None = None, feedback_id: str | None = None
    ) -> Reply: ...

    def infer_v2(
        self,
        model_name: str,
        body: bytes,
        *,
        header_length: int | None = None,
        request_id: str | None = None,
        feedback_id: str | None = None,
    ) -> Reply: ...

    def model_metadata_v2(self) -> dict[str, Any]: ...

    def feedback(self, body: bytes) -> Reply: ...

    def render_metrics(self) -> tuple[bytes, str]: ...


# (endpoint, reason, seconds spent): counts input refused before the dataplane saw it.
Rejecter = Callable[[str, str, float], None]


class Holder:
    """The dataplane once it is loaded and warm; ``None`` until then.

    The service loads in a background thread so that liveness answers while a large
    artifact is still loading, and readiness says why it is not ready yet.
    """

    def __init__(self) -> None:
        self.dataplane: Dataplane | None = None
        self.model_name: str = ""
        self.model_version: str = ""
        self.error: str | None = None
        self.reject: Rejecter = _no_reject
        # Counts a request the HTTP guard refused before any endpoint (by reason).
        self.count_refusal: Callable[[str], None] = _no_count

    @property
    def ready(self) -> bool:
        return self.dataplane is not None and bool(self.dataplane.ready)


def _no_reject(endpoint: str, reason: str, seconds: float) -> None:
    del endpoint, reason, seconds


def _no_count(reason: str) -> None:
    del reason


class BodyError(Exception):
    """Refused at the HTTP layer; ``reason`` is a value of the violations metric's label
    ("" for no input rule). ``counted``: the answer goes into the request counters (all
    but a client that went away, which gets no answer)."""

    def __init__(self, status: int, reason: str, message: str, counted: bool = True) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.counted = counted


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


async def send_reply(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def read_body(
    scope: Scope, receive: Receive, limit: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S
) -> bytes:
    """Read the request body, refusing before reading when Content-Length says too much,
    and with a 408 when the whole body has not arrived ``timeout_s`` after the headers."""
    ctype = _header(scope, b"content-type")
    if (
        ctype is not None
        and ctype != b"application/json"
        and ctype.split(b";", 1)[0].strip().lower() not in _JSON_TYPES
    ):
        raise BodyError(
            415,
            "unsupported_content_type",
            f"content-type must be application/json, got {ctype.decode('latin-1')!r}",
        )
    declared = _header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyError(400, "bad_structure", "content-length is not an integer") from None
        if size > limit:
            raise BodyError(
                413, "body_too_large", f"body of {size} bytes is over the {limit}-byte limit"
            )
    # The common case (the whole body arrived with the headers) arms no timer: the first
    # message is awaited plainly. If the body is incomplete, the rest must come by the
    # deadline. A client that sends no body byte at all is woken by the HTTP guard at the
    # deadline (guard.py), and then finds no time left.
    started = time.monotonic()
    chunks: list[bytes] = []
    total = 0

    def take(message: Message) -> bool:
        nonlocal total
        if message["type"] == "http.disconnect":
            raise BodyError(400, "", "client disconnected before sending the body", counted=False)
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise BodyError(413, "body_too_large", f"body is over the {limit}-byte limit")
        chunks.append(chunk)
        return bool(message.get("more_body", False))

    if take(await receive()):
        try:
            async with asyncio.timeout_at(
                asyncio.get_running_loop().time() + _left(started, timeout_s)
            ):
                while take(await receive()):
                    pass
        except TimeoutError:
            raise BodyError(
                408, "", f"request body not received within {timeout_s:g}s ({total} bytes came)"
            ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _left(started: float, timeout_s: float) -> float:
    return max(0.0, started + timeout_s - time.monotonic())


def request_id_for(scope: Scope) -> str:
    """The client's ``x-request-id`` when it is safe to echo, else a fresh one."""
    given = _header(scope, b"x-request-id")
    if given is not None and _REQUEST_ID_RE.match(given):
        return given.decode()
    return uuid.uuid4().hex


def _id_header(scope: Scope) -> dict[str, str]:
    return {"x-request-id": request_id_for(scope)}


def _client_request_id(scope: Scope) -> str | None:
    # The dataplane checks the id and makes a fresh one if needed; no need to do it twice.
    given = _header(scope, b"x-request-id")
    return given.decode("latin-1") if given is not None else None


def _proposed_feedback_id(scope: Scope) -> str | None:
    # Set by the router on a mirrored request so the shadow keeps the stable's feedback id;
    # the dataplane uses it only if it is well-formed and not in use.
    given = _header(scope, b"x-mlrollout-feedback-id")
    return given.decode("latin-1") if given is not None else None


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class ModelApp:
    """ASGI app serving /predict, /feedback, /metrics and the OIP v2 REST routes."""

    def __init__(
        self,
        holder: Holder,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    ) -> None:
        self.holder = holder
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.routes: dict[str, tuple[str, Handler]] = {
            "/predict": ("POST", self._predict),
            "/feedback": ("POST", self._feedback),
            "/metrics": ("GET", self._metrics),
            "/v2": ("GET", self._server_metadata),
            "/v2/health/live": ("GET", self._live),
            "/v2/health/ready": ("GET", self._ready),
        }

    def owns(self, path: str) -> bool:
        return path in self.routes or path.startswith("/v2/models/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        route = self.routes.get(path)
        if route is None and path.startswith("/v2/models/"):
            route = self._model_route(scope, path[len("/v2/models/") :])
        if route is None:
            await _error(send, 404, f"no route {path!r}")
            return
        method, handler = route
        if scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
            await _error(send, 405, f"{path} accepts {method} only", {"allow": method})
            return
        await handler(scope, receive, send)

    def _model_route(self, scope: Scope, rest: str) -> tuple[str, Handler] | None:
        parts = rest.split("/")
        # /v2/models/{name}[/versions/{v}][/ready|/infer]
        if len(parts) >= 3 and parts[1] == "versions":
            scope["model_version"] = parts[2]
            parts = [parts[0], *parts[3:]]
        if not parts[0] or len(parts) > 2:
            return None
        scope["model_name"] = parts[0]
        action = parts[1] if len(parts) == 2 else ""
        return {
            "": ("GET", self._model_metadata),
            "ready": ("GET", self._model_ready),
            "infer": ("POST", self._infer),
        }.get(action)

    def _plane(self) -> Dataplane | None:
        return self.holder.dataplane if self.holder.ready else None

    async def _body(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str
    ) -> bytes | None:
        started = time.perf_counter()
        try:
            return await read_body(scope, receive, self.max_body_bytes, self.body_timeout_s)
        except BodyError as exc:
            if exc.counted:
                self.holder.reject(endpoint, exc.reason, time.perf_counter() - started)
            headers = _id_header(scope)
            reason = exc.reason or None
            if exc.status == 408:  # the rest of the body may still come: end the connection
                headers["connection"] = "close"
                reason = "body_timeout"
            await _error(send, exc.status, exc.message, headers, reason)
            return None

    async def _not_ready(self, send: Send) -> None:
        reason = self.holder.error or "model is loading"
        await _error(send, 503, f"not ready: {reason}", {"retry-after": "1"})

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        plane = self._plane()
        if plane is None:
            await self._not_ready(send)
            return
        body = await self._body(scope, receive, send, "predict")
        if body is None:
            return
        reply = plane.predict(body, _client_request_id(scope), _proposed_feedback_id(scope))
        await send_reply(send, reply.status, reply.body(), reply.headers)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        plane = self._plane()
        if plane is None:
            await self._not_ready(send)
            return
        body = await self._body(scope, receive, send, "infer")
        if body is None:
            return
        if not self._version_known(scope):
            self.holder.reject("infer", "unknown_model", 0.0)
            message = f"version {scope['model_version']!r} is not served here"
            await _error(send, 404, message, _id_header(scope), reason="unknown_model")
            return
        raw_length = _header(scope, b"inference-header-content-length")
        header_length = None
        if raw_length is not None:
            if not raw_length.isdigit():
                self.holder.reject("infer", "bad_structure", 0.0)
                message = "inference-header-content-length must be an integer"
                await _error(send, 400, message, _id_header(scope), reason="bad_structure")
                return
            header_length = int(raw_length)
        reply = plane.infer_v2(
            scope["model_name"],
            body,
            header_length=header_length,
            request_id=_client_request_id(scope),
            feedback_id=_proposed_feedback_id(scope),
        )
        await send_reply(send, reply.status, reply.body(), reply.headers)

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        plane = self._plane()
        if plane is None:
            await self._not_ready(send)
            return
        body = await self._body(scope, receive, send, "feedback")
        if body is None:
            return
        reply = plane.feedback(body)
        await send_reply(send, reply.status, reply.body(), reply.headers)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        plane = self.holder.dataplane
        # Before the model is loaded there are no labelled series yet: an empty scrape.
        body, content_type = plane.render_metrics() if plane is not None else (b"", "text/plain")
        await send_reply(send, 200, body, content_type=content_type.encode())

    async def _server_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        meta = {"name": "mlrollout", "version": "v2", "extensions": []}
        await send_reply(send, 200, _json(meta))

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_reply(send, 200, b'{"live":true}')

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.holder.ready:
            await send_reply(send, 200, b'{"ready":true}')
        else:
            reason = self.holder.error or "model is loading"
            await send_reply(send, 503, _json({"ready": False, "reason": reason}))

    async def _model_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        plane = self._plane()
        if not self._known(scope):
            await _error(send, 404, f"unknown model {scope['model_name']!r}")
        elif plane is None:
            await self._not_ready(send)
        else:
            await send_reply(send, 200, _json(plane.model_metadata_v2()))

    async def _model_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._known(scope):
            await _error(send, 404, f"unknown model {scope['model_name']!r}")
            return
        ready = self.holder.ready
        body = {"name": scope["model_name"], "ready": ready}
        await send_reply(send, 200 if ready else 503, _json(body))

    def _known(self, scope: Scope) -> bool:
        # Before the model is loaded its name is unknown; say "not ready", not "no such model".
        name_ok = not self.holder.model_name or scope["model_name"] == self.holder.model_name
        return name_ok and self._version_known(scope)

    def _version_known(self, scope: Scope) -> bool:
        # One server is one version: another version in the path must not get this one's answer.
        wanted = scope.get("model_version")
        return (
            wanted is None or not self.holder.model_version or wanted == self.holder.model_version
        )


async def _error(
    send: Send,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> None:
    # Refused input has the dataplane's body shape; 404/405/503 name no input rule.
    doc = (
        {"error": message}
        if reason is None
        else {"error": message, "reason": reason, "field": None}
    )
    await send_reply(send, status, _json(doc), headers)


async def _lifespan(receive: Receive, send: Send) -> None:
    # Only used when the app runs on its own (benchmarks); BentoML runs its own lifespan.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class FastPath:
    """BentoML service middleware that hands the model routes straight to ``ModelApp``.

    Registered with ``add_asgi_middleware``, it sits inside BentoML's OpenTelemetry and
    timeout middlewares but outside its per-request context middleware and Starlette
    router, which together cost about as much as the whole model call (docs/serving.md).
    Every other path (health, schema, unknown) goes through BentoML unchanged.
    """

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], model_app: ModelApp
    ) -> None:
        self.app = app
        self.model_app = model_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.model_app.owns(scope["path"]):
            await self.model_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)
