"""The router's HTTP/1.1 server: an asyncio protocol around the httptools parser.

It only frames requests and responses; a ``Handler`` (``proxy.Router``) decides what to answer.
Requests on one connection are answered in order (pipelining-safe); bodies are kept as
bytes (a retry on stable needs them) up to ``max_body_bytes``.

What a client can cost is bounded (``Limits``): request head bytes (431 above), the time
from a head's first byte to its end and from there to the body's end (408), pipelined
requests waiting (reading pauses), unread answers (the next answer waits for the client
to read). A connection the router closes while the client may still be sending is
closed gracefully: FIN first, then input is drained for a moment, so the client's kernel
does not drop answers it already has (which an RST would make it do).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import httptools

from .proxy import Reply, Request, error_reply
from .upstream import ByteBudget

log = logging.getLogger("mlrollout.router")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Pipelined requests waiting behind the one being answered. Beyond this the connection
# stops being read (TCP pushes back on the client) instead of holding bodies in memory.
MAX_PIPELINED = 32
# After the router's last answer on a connection: how long input is drained before close.
LINGER_SECONDS = 2.0
_SWEEPERS: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Limits:
    """What one client connection may cost the server."""

    max_body: int = 16 << 20
    # Request line plus headers (nginx's large_client_header_buffers default is 32 KiB).
    max_header_bytes: int = 64 << 10
    # Envoy's default is 100; each field costs ~150 bytes of Python objects here.
    max_headers: int = 256
    # From the first byte of a request to the end of its headers, and from there to the
    # end of its body. Totals, not idle gaps: a byte every few seconds does not extend them.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    # Request bodies held at once over all connections (a body is kept until its request
    # is answered: a retry on stable needs it). Beyond it: 503, retry later.
    max_buffered_bytes: int = 64 << 20


class Handler(Protocol):
    """Answers parsed requests: the router, or the fake backend used by tests and benchmarks."""

    def handle(self, req: Request) -> Awaitable[Reply]: ...


class HttpServerProtocol(asyncio.Protocol):
    def __init__(
        self,
        handler: Handler,
        max_body: int,
        connections: set[HttpServerProtocol],
        limits: Limits | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or Limits(max_body=max_body)
        self.budget = budget or ByteBudget(self.limits.max_buffered_bytes)
        self.max_header_bytes = self.limits.max_header_bytes
        self.max_headers = self.limits.max_headers
        self.max_body = max_body
        self.connections = connections
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[Request | Reply, bool]] = deque()
        self.busy = False
        self.discard = False  # no more requests are read on this connection
        self.paused = False
        self.write_paused = False
        self.next_after_drain = False
        self.lingering = False
        self.eof = False  # the client half-closed
        self.in_head = True  # between messages, or inside a request line / headers
        self.head_bytes = 0
        self.timer: asyncio.TimerHandle | None = None  # the linger after the last answer
        # When the head or body being received must be complete (checked by the sweeper:
        # no timer per request on the fast path), and which one it is.
        self.deadline: float | None = None
        self.deadline_what = ""
        self.refusal: tuple[int, str] | None = None  # for the message being parsed
        self.close_after = False  # an upgrade offer was ignored: close after answering it
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
        now = self.last_active = self.loop.time()
        if self.discard:
            return
        try:
            if self.in_head:
                if self.head_bytes == 0 and self.deadline is None:
                    self.deadline = now + self.limits.header_timeout
                    self.deadline_what = "headers"
                if self.head_bytes + len(data) > self.max_header_bytes:
                    self._feed_head(data)  # the slow path: near or over the limit
                    return
                self.head_bytes += len(data)
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserError as exc:
            if not self.discard:
                self._refuse(400, f"malformed HTTP request: {exc}")

    def _feed_head(self, data: bytes) -> None:
        """Feed head bytes in slices no longer than what the limit has left, so that neither
        the parser nor this protocol ever holds more than the limit of a head; a slice that
        ends the head may carry body bytes (not counted after it)."""
        limit = self.max_header_bytes
        while data and self.in_head and not self.discard:
            room = limit - self.head_bytes
            if room <= 0:
                self._refuse(431, f"request line and headers larger than {limit} bytes")
                return
            piece, data = data[:room], data[room:]
            self.head_bytes += len(piece)
            self.parser.feed_data(piece)
        if data and not self.discard:
            self.parser.feed_data(data)
        if self.in_head and self.head_bytes >= limit and not self.discard:
            self._refuse(431, f"request line and headers larger than {limit} bytes")

    def eof_received(self) -> bool:
        # The client will send nothing more (a half-close); it still reads: answer what was
        # asked, then close. A request cut short by the EOF is not answered.
        self._stop_timer()
        self.eof = True
        if self.lingering:
            return False  # drained: close now
        self.discard = True
        return self.busy or bool(self.pending)  # True: keep the transport open to answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        for item, _ in self.pending:
            if isinstance(item, Request):
                self.budget.give(len(item.body))
        self._drop_partial()
        self.pending.clear()
        self.connections.discard(self)

    def pause_writing(self) -> None:
        # The client is not reading its answers: answer nothing more until it does.
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.next_after_drain:
            self.next_after_drain = False
            self._next()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = [], [], [], 0
        self.refusal = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The field count is checked once the head is complete: the 64 KiB head limit
        # already bounds what a head can hold meanwhile.
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self._set_deadline(self.limits.body_timeout, "body")
        if len(self._headers) > self.max_headers:
            self._headers = []
            self._refuse(431, f"more than {self.max_headers} header fields")
            return
        upgrade = connection_upgrade = False
        for name, value in self._headers:
            if name == b"content-length" and value.strip().isdigit():
                if int(value) > self.max_body:
                    self._refuse(413, f"request body larger than {self.max_body} bytes")
                    return
            elif name == b"expect" and value.lower() == b"100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif name == b"upgrade":
                upgrade = True
                if b"websocket" in value.lower():
                    self.refusal = (501, "WebSocket upgrades are not supported by the router")
            elif name == b"connection" and b"upgrade" in value.lower():
                connection_upgrade = True
        if self.parser.get_method() == b"CONNECT":
            self.refusal = (501, "CONNECT is not supported by the router")
        elif not (upgrade and connection_upgrade):
            self.refusal = None  # an Upgrade header alone is no upgrade offer

    def on_body(self, body: bytes) -> None:
        if self.discard:
            return
        n = len(body)
        if self._size + n > self.max_body:
            self._refuse(413, f"request body larger than {self.max_body} bytes")
            return
        if not self.budget.take(n):
            limit = self.budget.limit
            self._refuse(503, f"router is holding {limit} bytes of request bodies; retry later")
            return
        self._size += n
        self._body.append(body)

    def _drop_partial(self) -> None:
        """Give back the budget of a body being received that will not be a request."""
        self.budget.give(self._size)
        self._size, self._body = 0, []

    def on_message_complete(self) -> None:
        self.deadline = None
        self.in_head = True
        self.head_bytes = 0
        if self.discard:
            return
        if self.refusal is not None:
            self._refuse(*self.refusal)
            return
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        req = Request(self.parser.get_method(), b"".join(self._url), self._headers, body)
        self._size = 0  # the request owns the body (and its budget) now
        self.pending.append((req, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()
        elif len(self.pending) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def _upgraded(self) -> None:
        """The parser stopped at an upgrade offer (its request is already queued, or
        refused). The router speaks only HTTP/1.1: answer that request over HTTP/1.1 and
        close, reading nothing more (the bytes after it are in the other protocol)."""
        if self.discard:
            return
        if self.refusal is not None:  # the parser stopped before the message completed
            self._refuse(*self.refusal)
            return
        self.discard = True
        self.close_after = True
        if not self.busy and not self.pending and self.transport is not None:
            self._close()

    # timers
    def _set_deadline(self, seconds: float, what: str) -> None:
        self.deadline = self.last_active + seconds
        self.deadline_what = what

    def _stop_timer(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check_deadline(self, now: float) -> None:
        """Called by the sweeper: refuse with 408 a head or body not complete in time."""
        if self.deadline is None or now < self.deadline or self.discard:
            return
        if self.paused:  # the router stopped reading, not the client's fault: wait on
            return
        what = self.deadline_what
        limit = self.limits.header_timeout if what == "headers" else self.limits.body_timeout
        self._refuse(408, f"request {what} not received within {limit:g}s")

    # answering
    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the requests before it, then close: the rest is unread."""
        self._stop_timer()
        self._drop_partial()
        self.discard = True
        self.pending.append((error_reply(status, message), False))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.pending:
            self.busy = False
            if self.discard and self.transport is not None:
                self._close()  # nothing more will be read: all answered
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
        finally:
            self.budget.give(len(req.body))
        self._write(reply, keep_alive)

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.busy = False
            return
        last = not keep_alive or (self.close_after and not self.pending)
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, b"Unknown")),
        ]
        for name, value in reply.headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(reply.body))
        if last:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if len(reply.body) < 65536:
            parts.append(reply.body)
            transport.write(b"".join(parts))
        else:  # no copy of a large body
            transport.write(b"".join(parts))
            transport.write(reply.body)
        self.last_active = self.loop.time()
        if last:
            self.pending.clear()
            self.discard = True
            self._close()
        elif self.write_paused:
            self.next_after_drain = True  # resume_writing goes on
        else:
            self._next()

    def _close(self) -> None:
        """Close after the last answer: FIN, drain the client's input for a moment, close."""
        transport = self.transport
        self.busy = False
        self._stop_timer()
        if transport is None or transport.is_closing() or self.lingering:
            return
        self.lingering = True
        try:
            if self.eof or not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        if self.paused:
            transport.resume_reading()
        self.timer = self.loop.call_later(LINGER_SECONDS, transport.close)


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    max_body: int = 16 << 20,
    idle_timeout: float = 75.0,
    *,
    max_header_bytes: int = Limits.max_header_bytes,
    header_timeout: float = Limits.header_timeout,
    body_timeout: float = Limits.body_timeout,
    max_buffered_bytes: int = Limits.max_buffered_bytes,
) -> asyncio.Server:
    """Listen on ``host:port``; keep-alive connections idle for ``idle_timeout`` s are closed
    (clients that vanished without a FIN would otherwise hold file descriptors forever)."""
    loop = asyncio.get_running_loop()
    connections: set[HttpServerProtocol] = set()
    limits = Limits(
        max_buffered_bytes=max_buffered_bytes,
        max_body=max_body,
        max_header_bytes=max_header_bytes,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        idle_timeout=idle_timeout,
    )
    budget = ByteBudget(limits.max_buffered_bytes)  # shared by all connections
    server = await loop.create_server(
        lambda: HttpServerProtocol(handler, max_body, connections, limits, budget),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
    sweeper = loop.create_task(_sweep(server, connections, limits))
    _SWEEPERS.add(sweeper)  # the loop itself keeps only a weak reference to tasks
    sweeper.add_done_callback(_SWEEPERS.discard)
    return server


async def _sweep(
    server: asyncio.Server, connections: set[HttpServerProtocol], limits: Limits
) -> None:
    """Close idle keep-alive connections; refuse heads and bodies not complete in time.

    Deadlines are checked here, a few times per timeout, instead of by a timer per request.
    """
    period = min(limits.idle_timeout / 4, limits.header_timeout / 4, limits.body_timeout / 4, 1.0)
    while server.is_serving():
        await asyncio.sleep(period)
        now = asyncio.get_running_loop().time()
        cutoff = now - limits.idle_timeout
        for conn in list(connections):
            conn.check_deadline(now)
            if not conn.busy and conn.last_active < cutoff and conn.transport is not None:
                conn.transport.close()
