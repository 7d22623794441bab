"""A small pooled keep-alive HTTP/1.1 client for one backend, on asyncio protocols + httptools.

Written by hand instead of using aiohttp's client because the router pays this cost on
every request (see docs/routing.md, Performance). It does only what the router needs:
one request per connection at a time, ``Content-Length`` request bodies, complete
(buffered) responses, connection reuse, and an error type that says whether the backend
answered anything at all.

A backend cannot make the router hold more than it allows (``Limits``): the response head
is fed to the parser in slices no longer than what ``max_head_bytes`` has left (so neither
the parser nor this module ever holds more), its header count is capped, it must be
complete ``head_timeout`` s after its first byte, a body may be ``max_body_bytes`` long,
and all bodies being received from one backend share a ``ByteBudget``. A response over
any limit is an ``UpstreamError`` with ``bad_answer`` set.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import httptools


class UpstreamError(Exception):
    """The backend gave no complete, acceptable response.

    ``before_response`` is True when not a byte of a response arrived (connection
    refused or reset, timeout while waiting). Otherwise the backend answered, but badly
    (malformed, over a limit, too slow, cut off).
    """

    def __init__(self, message: str, before_response: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response
        self.timeout = timeout


@dataclass(frozen=True)
class Limits:
    """What one backend's answers may cost the router."""

    max_head_bytes: int = 64 << 10
    max_headers: int = 256
    head_timeout: float = 5.0  # from a response's first byte to the end of its headers
    max_body_bytes: int = 8 << 20
    # Bytes of bodies being received from this backend at once, over all its connections.
    max_buffered_bytes: int = 32 << 20


class ByteBudget:
    """Bytes held at once by the responses of one backend (``peak`` is the high-water)."""

    __slots__ = ("limit", "peak", "used")

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.peak = limit, 0, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        if self.used > self.peak:
            self.peak = self.used
        return True

    def give(self, n: int) -> None:
        self.used -= n


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One upstream connection; ``pool`` gets it back when a response completes."""

    def __init__(self, pool: Upstream) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.got_bytes = False
        self.headers_done = False
        self.head = False
        self.closed = False
        self.used = False
        self.timer: asyncio.TimerHandle | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.limits = pool.limits
        self.head_bytes = 0
        self.length: bytes | None = None  # the response's Content-Length
        self.body_size = 0  # bytes of this response's body taken from the pool's budget

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Nothing asked (an idle pooled connection, or a response already refused):
            # a backend talking out of turn cannot be trusted with the next request.
            self.close()
            return
        try:
            if not self.headers_done:
                first = not self.got_bytes
                self.got_bytes = True
                limit = self.limits.max_head_bytes
                while data and not self.headers_done and self.waiter is not None:
                    room = limit - self.head_bytes
                    if room <= 0:
                        self._fail(
                            UpstreamError(f"response headers larger than {limit} bytes", False)
                        )
                        return
                    piece, data = data[:room], data[room:]
                    self.head_bytes += len(piece)
                    self.parser.feed_data(piece)
                if first and not self.headers_done and self.waiter is not None:
                    # The head did not come in one piece: it gets head_timeout to finish
                    # (a timer only on this slow path).
                    self.head_timer = self.pool.loop.call_later(
                        self.limits.head_timeout, self._head_timed_out
                    )
            if data and self.waiter is not None:
                self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response from backend: {exc}", False))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.headers_done and self._close_delimited():
                # No Content-Length and not chunked: the body ends when the connection does.
                self.on_message_complete()
                return
            why = f": {exc}" if exc else ""
            msg = f"backend closed the connection before a complete response{why}"
            self._fail(UpstreamError(msg, not self.got_bytes))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        # The count is checked when the head is complete (the head size limit bounds it).
        if len(name) == 14 and name.lower() == b"content-length":
            self.length = value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.waiter is None:
            return
        if len(self.headers) > self.limits.max_headers:
            limit = self.limits.max_headers
            self._fail(UpstreamError(f"response has more than {limit} headers", False))
            return
        length, limit = self.length, self.limits.max_body_bytes
        if length is not None and length.strip().isdigit() and int(length) > limit:
            self._fail(UpstreamError(f"response body larger than {limit} bytes", False))
            return
        if self.head:
            # A HEAD response announces a body it does not send; the parser would wait
            # for it, so finish here and do not reuse the connection.
            self.closed = True
            self.on_message_complete()

    def _close_delimited(self) -> bool:
        names = {n.lower() for n, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            return
        n = len(body)
        if self.body_size + n > self.limits.max_body_bytes:
            limit = self.limits.max_body_bytes
            self._fail(UpstreamError(f"response body larger than {limit} bytes", False))
            return
        if not self.pool.buffer.take(n):
            limit = self.pool.buffer.limit
            msg = f"response buffer for this backend ({limit} bytes) is full"
            self._fail(UpstreamError(msg, False))
            return
        self.body_size += n
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        self._stop_timer()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        response = Response(self.parser.get_status_code(), self.headers, body)
        self._release()
        self.waiter = None
        keep = self.parser.should_keep_alive() and not self.closed
        waiter.set_result(response)
        if keep:
            self.pool._release(self)
        else:
            self.close()

    # used by Upstream
    def send(
        self, data: tuple[bytes, ...], timeout: float, head: bool = False
    ) -> asyncio.Future[Response]:
        loop = self.pool.loop
        self.waiter = waiter = loop.create_future()
        self.headers, self.body, self.body_size, self.got_bytes = [], [], 0, False
        self.headers_done, self.head, self.head_bytes = False, head, 0
        self.length = None
        self.used = True
        self.timer = loop.call_later(timeout, self._on_timeout, timeout)
        assert self.transport is not None
        for part in data:
            self.transport.write(part)
        return waiter

    def close(self) -> None:
        self._stop_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _on_timeout(self, timeout: float) -> None:
        self.timer = None
        msg = f"backend gave no complete response within {timeout:g}s"
        self._fail(UpstreamError(msg, not self.got_bytes, timeout=True))

    def _head_timed_out(self) -> None:
        self.head_timer = None
        msg = f"response headers not complete within {self.limits.head_timeout:g}s"
        self._fail(UpstreamError(msg, False, timeout=True))

    def _fail(self, exc: UpstreamError) -> None:
        waiter, self.waiter = self.waiter, None
        self._release()
        self.close()  # a half-read connection can never be reused
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _release(self) -> None:
        if self.body_size:
            self.pool.buffer.give(self.body_size)
            self.body_size = 0
        self.body = []

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None


class Upstream:
    """A pool of keep-alive connections to one ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 1.0,
        max_idle: int = 64,
        limits: Limits | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.limits = limits or Limits()
        self.buffer = ByteBudget(self.limits.max_buffered_bytes)
        self.loop = loop or asyncio.get_running_loop()
        self.host_header = (host if port == 80 else f"{host}:{port}").encode("idna")
        self._idle: deque[_Connection] = deque()
        self._retired = False

    async def request(
        self, method: bytes, target: bytes, headers: bytes, body: bytes, timeout: float
    ) -> Response:
        """Send one request; ``headers`` are complete ``name: value\\r\\n`` lines (no Host or
        Content-Length: added here). Raises :class:`UpstreamError`."""
        head_bytes = b"".join(
            (
                method, b" ", target, b" HTTP/1.1\r\nhost: ", self.host_header,
                b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n", headers, b"\r\n",
            )
        )  # fmt: skip
        # A large body is written on its own: no copy of it per try.
        data: tuple[bytes, ...] = (head_bytes + body,) if len(body) < 65536 else (head_bytes, body)
        head = method == b"HEAD"
        conn = self._take_idle()
        if conn is not None:
            try:
                return await conn.send(data, timeout, head)
            except asyncio.CancelledError:
                conn._fail(UpstreamError("request cancelled", False))
                raise
            except UpstreamError as exc:
                # The backend may have closed an idle connection just as we reused it:
                # nothing was processed, so one retry on a fresh connection is safe.
                if not exc.before_response or exc.timeout:
                    raise
        loop = self.loop
        start = loop.time()
        conn = await self._connect()
        try:
            return await conn.send(data, max(0.001, timeout - (loop.time() - start)), head)
        except asyncio.CancelledError:
            conn._fail(UpstreamError("request cancelled", False))
            raise

    def close(self) -> None:
        """Close idle connections now and busy ones when they finish."""
        self._retired = True
        while self._idle:
            self._idle.popleft().close()

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if self._retired or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    async def _connect(self) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError(
                f"connect to {self.host}:{self.port} timed out after {self.connect_timeout:g}s",
                before_response=True,
                timeout=True,
            ) from None
        except OSError as exc:
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}",
                before_response=True,
            ) from None
        return conn
