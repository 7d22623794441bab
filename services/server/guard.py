"""HTTP/1.1 limits the model server enforces before a request reaches any app code.

uvicorn (which BentoML runs) bounds neither the size nor the arrival time of a request
head, and answers an ``Upgrade``/``CONNECT`` it cannot serve by leaving the request to
hang until BentoML's 60 s traffic timeout. ``GuardedHttpToolsProtocol`` is uvicorn's
httptools protocol with three refusals, each answered at once with a JSON body and
``connection: close``:

- a request head (request line + headers) over ``max_header_bytes`` -> 431;
- a request head not complete ``header_timeout_s`` after its first byte (or after the
  connection opened) -> 408;
- ``Upgrade: websocket`` (or any upgrade) -> 400, ``CONNECT`` -> 501.

Head bytes are counted as they arrive, before the parser buffers them, so a 64 MB header
costs at most the limit plus one socket read (256 KiB) and never stalls other requests.
The body's time limit is enforced by the app (``app.read_body``), where the answer is
counted in ``mlrollout_model_requests_total``; these refusals are counted in
``mlrollout_model_http_refusals_total`` through ``on_refusal``.

BentoML 1.4 does not expose uvicorn's ``http`` option, so ``install`` points uvicorn's
protocol table at this class in the worker process (``service.py`` calls it at import,
before BentoML builds its uvicorn config).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_MAX_HEADER_BYTES = 64 << 10
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    def problems(self) -> list[str]:
        out = []
        if not 1024 <= self.max_header_bytes <= 16 << 20:
            out.append(
                f"max header size must be between 1024 and 16777216 bytes, got {self.max_header_bytes}"
            )
        for name, value in (
            ("header timeout", self.header_timeout_s),
            ("body timeout", self.body_timeout_s),
        ):
            if not 0.1 <= value <= 3600:
                out.append(f"{name} must be between 0.1 and 3600 seconds, got {value}")
        return out


Refusal = Callable[[str], None]


def _no_count(reason: str) -> None:
    del reason


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused connection."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: HttpLimits = HttpLimits()
    on_refusal: Refusal = staticmethod(_no_count)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refused = False
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # A connection that never sends a byte must not stay open either.
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._refused:  # upgrades are refused in on_headers_complete
                self._refuse(400, "upgrade", "protocol upgrades are not supported")
            return
        except httptools.HttpParserError:
            if not self._refused:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        cycle = self.cycle
        if (
            not self._in_head
            and cycle is not None
            and cycle.more_body
            and not cycle.body
            and self._body_timer is None
        ):
            # Headers came, no body byte yet: the app waits for its first message without a
            # timer, so wake it at the body deadline (it then answers 408, counted).
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_deadline, cycle
            )
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(
                431,
                "header_too_large",
                f"request line and headers are over the {self.limits.max_header_bytes}-byte limit",
            )

    # Parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._refused:
            raise _Refused
        self._in_head = True
        if self._head_timer is None:
            self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            raise _Refused
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if self.parser.should_upgrade():
            if self.parser.get_method() == b"CONNECT":
                self._refuse(501, "connect", "CONNECT is not supported: this is not a proxy")
            else:
                wanted = (self._get_upgrade() or b"?").decode("latin-1")[:64]
                self._refuse(
                    400,
                    "upgrade",
                    f"protocol upgrade to {wanted!r} is not supported; send plain HTTP/1.1",
                )
            raise _Refused
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            raise _Refused
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            raise _Refused
        self._cancel_body_timer()
        super().on_message_complete()
        # Bytes after this belong to the next request's head.
        self._in_head = True
        self._head_bytes = 0

    # Refusals ---------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_deadline(self, cycle: Any) -> None:
        self._body_timer = None
        if cycle is self.cycle and cycle.more_body and not cycle.response_complete:
            cycle.message_event.set()  # receive() returns an empty chunk; the app sees the time

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being answered while the next one's head arrives (pipelining):
            # judge that head once the answer is out.
            self._arm_head_timer()
            return
        if self._head_bytes == 0 and self.cycle is not None:
            return  # between requests on a kept-alive connection: uvicorn's keep-alive timeout
        self._refuse(
            408,
            "header_timeout",
            f"request headers not received within {self.limits.header_timeout_s:g}s",
        )

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        body = json.dumps({"error": message, "reason": reason}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ",
            str(len(body)).encode(),
            b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        if not self.transport.is_closing():
            self.transport.write(b"".join(head) + body)
            self.transport.close()
        try:
            self.on_refusal(reason)
        except Exception:  # counting must never break the connection handling
            self.logger.exception("counting an HTTP refusal failed")


def limits_from_env(env: Mapping[str, str] | None = None) -> HttpLimits:
    env = os.environ if env is None else env

    def number(name: str, default: float) -> float:
        raw = env.get(name, "")
        if raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    return HttpLimits(
        max_header_bytes=int(number("MLROLLOUT_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES)),
        header_timeout_s=number("MLROLLOUT_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S),
        body_timeout_s=number("MLROLLOUT_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S),
    )


def install(limits: HttpLimits, on_refusal: Refusal | None = None) -> None:
    """Make uvicorn (in this process) serve HTTP/1.1 with ``GuardedHttpToolsProtocol``."""
    from uvicorn import config

    GuardedHttpToolsProtocol.limits = limits
    if on_refusal is not None:
        GuardedHttpToolsProtocol.on_refusal = staticmethod(on_refusal)  # type: ignore[assignment]
    path = f"{__name__}:GuardedHttpToolsProtocol"
    config.HTTP_PROTOCOLS["auto"] = path
    config.HTTP_PROTOCOLS["httptools"] = path
