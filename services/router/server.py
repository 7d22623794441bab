"""The router's HTTP/1.1 server: an asyncio protocol around the httptools parser.

It only frames requests and responses; a ``Handler`` (``proxy.Router``) decides what to answer.
Requests on one connection are answered in order (pipelining-safe); bodies are kept as
bytes (a retry on stable needs them) up to ``max_body_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Protocol

import httptools

from .proxy import Reply, Request, error_reply

log = logging.getLogger("mlrollout.router")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Pipelined requests waiting behind the one being answered. Beyond this the connection
# stops being read (TCP pushes back on the client) instead of holding bodies in memory.
MAX_PIPELINED = 32
_SWEEPERS: set[asyncio.Task[None]] = set()


class Handler(Protocol):
    """Answers parsed requests: the router, or the fake backend used by tests and benchmarks."""

    def handle(self, req: Request) -> Awaitable[Reply]: ...


class HttpServerProtocol(asyncio.Protocol):
    def __init__(
        self, handler: Handler, max_body: int, connections: set[HttpServerProtocol]
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.connections = connections
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[Request | Reply, bool]] = deque()
        self.busy = False
        self.discard = False
        self.paused = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self.last_active = self.loop.time()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        if self.discard:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "protocol upgrades are not supported by the router")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.clear()
        self.connections.discard(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = [], [], [], 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == b"content-length" and value.strip().isdigit():
                if int(value) > self.max_body:
                    self._refuse(413, f"request body larger than {self.max_body} bytes")
                    return
            elif name == b"expect" and value.lower() == b"100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.discard:
            return
        self._size += len(body)
        if self._size > self.max_body:
            self._refuse(413, f"request body larger than {self.max_body} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.discard:
            return
        req = Request(
            self.parser.get_method(), b"".join(self._url), self._headers, b"".join(self._body)
        )
        self.pending.append((req, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()
        elif len(self.pending) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    # answering
    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the requests before it, then close: the rest is unread."""

        self.discard = True
        self.pending.append((error_reply(status, message), False))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.pending:
            self.busy = False
            return
        self.busy = True
        item, keep_alive = self.pending.popleft()
        if self.paused and len(self.pending) < MAX_PIPELINED // 2:
            self.paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        if isinstance(item, Reply):
            self._write(item, keep_alive)
            return
        self.task = self.loop.create_task(self._run(item, keep_alive))

    async def _run(self, req: Request, keep_alive: bool) -> None:
        try:
            reply = await self.handler.handle(req)
        except Exception:
            log.exception("router failed on %s %r", req.method.decode(), req.target)

            reply = error_reply(500, "internal router error (logged)")
        self._write(reply, keep_alive)

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.busy = False
            return
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, b"Unknown")),
        ]
        for name, value in reply.headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(reply.body))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", reply.body)
        transport.write(b"".join(parts))
        self.last_active = self.loop.time()
        if keep_alive:
            self._next()
        else:
            self.pending.clear()
            transport.close()


async def start_server(
    handler: Handler, host: str, port: int, max_body: int = 16 << 20, idle_timeout: float = 75.0
) -> asyncio.Server:
    """Listen on ``host:port``; keep-alive connections idle for ``idle_timeout`` s are closed
    (clients that vanished without a FIN would otherwise hold file descriptors forever)."""
    loop = asyncio.get_running_loop()
    connections: set[HttpServerProtocol] = set()
    server = await loop.create_server(
        lambda: HttpServerProtocol(handler, max_body, connections),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
    sweeper = loop.create_task(_close_idle(server, connections, idle_timeout))
    _SWEEPERS.add(sweeper)  # the loop itself keeps only a weak reference to tasks
    sweeper.add_done_callback(_SWEEPERS.discard)
    return server


async def _close_idle(
    server: asyncio.Server, connections: set[HttpServerProtocol], idle_timeout: float
) -> None:
    while server.is_serving():
        await asyncio.sleep(min(idle_timeout / 4, 5.0))
        cutoff = asyncio.get_running_loop().time() - idle_timeout
        for conn in list(connections):
            if not conn.busy and conn.last_active < cutoff and conn.transport is not None:
                conn.transport.close()
