"""The router's request path: choose a backend, forward, fall back, mirror, record.

``Router`` holds the table in force and the upstream pools; ``HttpServerProtocol``
(server.py) hands it parsed requests. The decision itself is ``table.choose`` (pure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .compare import compare_bodies, compare_rows
from .guard import Guard
from .metrics import RouterMetrics, outcome_of
from .table import (
    RoutingTable,
    TableError,
    Track,
    check_successor,
    choose,
    forced_track,
    parse_table,
    should_shadow,
)
from .upstream import Limits as UpstreamLimits
from .upstream import Response, Upstream, UpstreamError

log = logging.getLogger("mlrollout.router")

FORCE_HEADER = b"x-mlrollout-track"
REQUEST_ID_HEADER = b"x-request-id"
# The model server's rule for keeping a client's id (else it makes its own, and the id the
# router answered with would match no stored prediction).
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the router sets itself.
# The model server's feedback id: issued by the server; only the router proposes one (to a
# shadow, the stable's), so a client's is dropped (docs/serving.md, "Feedback").
FEEDBACK_ID_HEADER = b"x-mlrollout-feedback-id"
_DROP_REQUEST = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
     b"trailer", b"upgrade", b"host", b"content-length", b"expect", REQUEST_ID_HEADER,
     FEEDBACK_ID_HEADER}
)  # fmt: skip
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"trailer",
     b"upgrade", b"content-length", b"x-mlrollout-track", b"x-mlrollout-version",
     REQUEST_ID_HEADER}
)  # fmt: skip


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class RouterConfig:
    timeout: float = 30.0
    connect_timeout: float = 1.0
    max_body_bytes: int = 16 << 20
    max_shadow_inflight: int = 16
    # Shadow requests must not hold resources long: a shorter timeout than the client path.
    shadow_timeout: float = 5.0
    idle_timeout: float = 75.0
    # Client side: request line + headers (431 above), and the time a client may take to
    # send them and then its body (408 after).
    max_header_bytes: int = 64 << 10
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Backend side: a canary try gets this much of ``timeout`` before stable is asked.
    canary_timeout: float = 10.0
    max_response_header_bytes: int = 64 << 10
    max_response_headers: int = 256
    response_header_timeout: float = 5.0
    max_response_bytes: int = 8 << 20
    # All response bodies being received from one backend at once (two backends: twice).
    max_response_buffer_bytes: int = 32 << 20
    # All request bodies held at once (each until its request is answered).
    max_request_buffer_bytes: int = 64 << 20


# Stable's share when a canary try used up the client's budget.
MIN_RETRY_SECONDS = 1.0
# A mirrored request keeps the served answer until the other track answers; larger
# answers are not mirrored (predictions are small; this bounds what mirrors hold).
MAX_MIRRORED_BODY = 1 << 20


class Router:
    def __init__(self, config: RouterConfig, metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        self.table: RoutingTable | None = None  # as received
        # As served: the table with the canary at weight 0 once the guard has tripped.
        self.effective: RoutingTable | None = None
        self.guard = Guard()
        # Called with the guard's report when it trips (Kubernetes: written to the ConfigMap).
        self.on_trip: Callable[[dict[str, Any]], None] | None = None
        self.source = ""
        self.last_error: dict[str, object] | None = None
        self.source_error: str | None = None  # why the table source is stopped, if it is
        self._pools: dict[tuple[str, int], Upstream] = {}
        self._shadow_inflight = 0
        self.inflight = 0  # client requests waiting on a backend (for a graceful stop)
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = 0
        self.metrics.no_table_yet()

    # ---- the table -------------------------------------------------------------------
    def offer(self, data: bytes, origin: str) -> bool:
        """Apply a table from a source; on any problem log it, count it, keep the old one.

        Never raises: a source calls this in its watch loop, and an exception escaping here
        would stop the loop (and with it every later table, a rollback included).
        """
        try:
            table = parse_table(data)
            if not check_successor(self.table, table):
                return False
            self._apply(table, origin)
        except TableError as exc:
            self.reject(str(exc), origin)
            return False
        except Exception as exc:  # a defect here must not cost the watcher its life
            log.exception("unexpected error while applying a routing table from %s", origin)
            self.reject(f"unexpected error while applying the table: {exc!r}", origin)
            return False
        return True

    def reject(self, message: str, origin: str) -> None:
        """Count and log a table that was refused (by a source or by :meth:`offer`)."""
        self.metrics.table_rejected()
        self.last_error = {"error": message, "source": origin, "at": time.time()}
        kept = self.table.generation if self.table else "none"
        log.error("rejected routing table from %s: %s (generation %s stays)", origin, message, kept)

    def source_state(self, up: bool, error: str | None = None) -> None:
        """The table source is running (``up``) or stopped; a stopped source means unready."""
        self.source_error = None if up else (error or "stopped")
        self.metrics.source_state(up)

    def _apply(self, table: RoutingTable, origin: str) -> None:
        wanted = {(b.host, b.port) for b in table.backends.values()}
        added: dict[tuple[str, int], Upstream] = {}
        try:
            for key in wanted:
                if key not in self._pools:
                    added[key] = self._upstream(*key)
        except BaseException:
            for pool in added.values():
                pool.close()
            raise
        for key in list(self._pools):
            if key not in wanted:
                self._pools.pop(key).close()
        self._pools.update(added)
        self.table, self.source = table, origin
        self.guard.table_applied(table)
        self.effective = self.guard.effective(table)
        self.metrics.table_applied(self.effective)
        self.metrics.guard_state(self.guard)
        weights = ", ".join(f"{t}={w}" for t, w in table.weights.items())
        log.info(
            "routing table generation %d in force (%s) from %s", table.generation, weights, origin
        )

    # ---- requests --------------------------------------------------------------------
    async def handle(self, req: Request) -> Reply:
        if req.target.startswith(b"/-/") or req.target in _LOCAL_PATHS:
            local = self._local(req)
            if local is not None:
                return local
        table = self.effective
        if table is None:
            return error_reply(503, "no routing table is in force yet")
        force = sticky = request_id = None
        sticky_name = table.sticky_header.encode() if table.sticky_header else None
        out: list[bytes] = []
        for name, value in req.headers:
            if name in _DROP_REQUEST:
                if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.fullmatch(value):
                    request_id = value
                continue
            if name == FORCE_HEADER:
                force = value.decode("latin-1")
                continue
            if name == sticky_name:
                sticky = value.decode("latin-1")
            out += (name, b": ", value, b"\r\n")
        forced = None
        if force is not None:
            try:
                feedback = req.target.split(b"?", 1)[0] == FEEDBACK_PATH
                forced = forced_track(table, force, feedback)
            except TableError as exc:
                return error_reply(400, str(exc))
        track = forced or choose(table, sticky, None, random.random())
        if request_id is None:
            self._id_counter += 1
            request_id = b"%s-%x" % (self._id_prefix.encode(), self._id_counter)
        out += (b"x-request-id: ", request_id, b"\r\n")
        headers = b"".join(out)

        self.inflight += 1
        # Only the weight split's choices are evidence for the guard (not a forced track).
        judged = forced is None
        share = self.guard.share() if judged else None  # at routing time, for the guard
        try:
            response, track = await self._forward(table, track, req, headers, judged, share)
        finally:
            self.inflight -= 1
        if isinstance(response, UpstreamError):
            what = "unreachable" if response.before_response else "gave no usable answer"
            reply = error_reply(502, f"{track} backend {what}: {response}")
        else:
            reply = Reply(response.status, _response_headers(response.headers), response.body)
        reply.headers += (
            (b"x-mlrollout-track", track.encode()),
            (b"x-mlrollout-version", table.backends[track].version.encode()),
            (REQUEST_ID_HEADER, request_id),
        )
        # Only a stable answer to a POST (a prediction, or feedback) is worth mirroring: a
        # client's refused request or a metadata GET says nothing about the canary.
        if (
            not isinstance(response, UpstreamError)
            and 200 <= response.status < 300
            and len(response.body) <= MAX_MIRRORED_BODY
            and len(req.body) <= MAX_MIRRORED_BODY
            and req.method == b"POST"
            and should_shadow(table, track, random.random())
        ):
            self._start_shadow(table, req, headers, response, track)
        return reply

    async def _forward(
        self,
        table: RoutingTable,
        track: Track,
        req: Request,
        headers: bytes,
        judged: bool = False,
        share: float | None = None,
        deadline: float | None = None,
    ) -> tuple[Response | UpstreamError, Track]:
        """Send ``req`` to ``track``; a canary that gives no usable answer is retried on stable.

        Nothing of an answer reaches the client before it is complete, so a retry never
        doubles an answer. The canary gets ``canary_timeout`` of the client's ``timeout``;
        stable gets what is left (at least ``MIN_RETRY_SECONDS``).
        """
        backend = table.backends[track]
        pool = self._pools.get((backend.host, backend.port))
        if pool is None:
            # A newer table dropped this backend while the request waited (a fallback
            # during a promotion): finish it on a one-off connection.
            pool = self._upstream(backend.host, backend.port)
            pool.close()
        target = backend.prefix.encode() + req.target if backend.prefix else req.target
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.config.timeout
        budget = max(deadline - now, MIN_RETRY_SECONDS)
        retry = track == "canary" and "stable" in table.backends
        if retry:
            budget = min(budget, self.config.canary_timeout)
        start = time.perf_counter()
        try:
            response = await pool.request(req.method, target, headers, req.body, budget)
        except UpstreamError as exc:
            # No byte at all: unreachable. Something, but malformed, over a limit, too
            # slow or cut off: the backend's error (it answered, badly).
            outcome = "unreachable" if exc.before_response else "server_error"
            elapsed = time.perf_counter() - start
            self.metrics.request_done(track, backend.version, outcome, elapsed)
            if judged:
                self._judge(track, outcome, share)
            if retry:
                self.metrics.fallback(track, backend.version)
                log.warning("canary %s failed, retrying on stable: %s", backend.url, exc)
                return await self._forward(table, "stable", req, headers, deadline=deadline)
            log.warning("%s backend %s failed: %s", track, backend.url, exc)
            return exc, track
        elapsed = time.perf_counter() - start
        outcome = outcome_of(response.status)
        self.metrics.request_done(track, backend.version, outcome, elapsed)
        if judged:
            self._judge(track, outcome, share)
        if retry and response.status == 503:
            # "Not ready" (a canary starting or restarting): nothing was done, so the
            # request is stable's. Other 5xx answers go to the client (see docs).
            self.metrics.fallback(track, backend.version)
            log.info("canary %s answered 503, retrying on stable", backend.url)
            return await self._forward(table, "stable", req, headers, deadline=deadline)
        return response, track

    def _upstream(self, host: str, port: int) -> Upstream:
        cfg = self.config
        limits = UpstreamLimits(
            max_head_bytes=cfg.max_response_header_bytes,
            max_headers=cfg.max_response_headers,
            head_timeout=cfg.response_header_timeout,
            max_body_bytes=cfg.max_response_bytes,
            max_buffered_bytes=cfg.max_response_buffer_bytes,
        )
        return Upstream(host, port, connect_timeout=cfg.connect_timeout, limits=limits)

    # ---- the guard -------------------------------------------------------------------
    def _judge(self, track: Track, outcome: str, share: float | None) -> None:
        if self.guard.observe(track, outcome, time.time(), share):
            self._tripped()
        elif outcome in ("server_error", "unreachable"):
            self.metrics.guard_state(self.guard)

    def adopt_trip(self, data: bytes | str, origin: str) -> None:
        """A trip reported through the table source (the ConfigMap's ``guard.json``): by
        another replica, or by this router before it restarted. Same effect as our own."""
        try:
            report = json.loads(data)
        except (ValueError, RecursionError):
            log.warning("ignoring an unreadable guard report from %s", origin)
            return
        if self.guard.adopt(report):
            log.warning("adopting the guard trip reported in %s", origin)
            self._tripped(report_it=False)

    def _tripped(self, report_it: bool = True) -> None:
        """The guard crossed: serve the canary at weight 0 from the next request on."""
        if self.table is None:
            return
        self.effective = self.guard.effective(self.table)
        self.metrics.table_applied(self.effective)
        self.metrics.guard_state(self.guard)
        report = self.guard.report()
        log.warning("%s; canary taken to weight 0", report.get("trip", {}).get("message"))
        if self.on_trip is not None and report_it:
            try:
                self.on_trip(report)
            except Exception:
                log.exception("could not report the guard's trip")

    # ---- shadow traffic ---------------------------------------------------------------
    def _start_shadow(
        self, table: RoutingTable, req: Request, headers: bytes, served: Response, track: Track
    ) -> None:
        canary = table.backends["canary"]
        if self._shadow_inflight >= self.config.max_shadow_inflight:
            if _compared(req):
                self._mirror_result(canary.version, track, "dropped", None)
            return
        self._shadow_inflight += 1
        coro = self._shadow(table, req, headers, served, track)
        task = asyncio.get_running_loop().create_task(coro)
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self, table: RoutingTable, req: Request, headers: bytes, served: Response, track: Track
    ) -> None:
        """Send a copy of a request ``track`` answered to the other track and compare."""
        other: Track = "canary" if track == "stable" else "stable"
        backend = table.backends[other]
        pool = self._pools.get((backend.host, backend.port))
        result = "error"
        rows: tuple[int, int] | None = None
        agreement = table.agreement
        rel, absolute = (agreement.rel_tol, agreement.abs_tol) if agreement else (1e-3, 1e-6)
        try:
            if pool is not None and 200 <= served.status < 300:
                target = backend.prefix.encode() + req.target
                # Keep the served answer's feedback id, so mirrored feedback finds the
                # mirrored prediction on the other track.
                issued = next(
                    (v for n, v in served.headers if n.lower() == FEEDBACK_ID_HEADER), None
                )
                if issued is not None and _SAFE_REQUEST_ID.fullmatch(issued):
                    headers += b"x-mlrollout-feedback-id: " + issued + b"\r\n"
                got = await pool.request(
                    req.method, target, headers, req.body, self.config.shadow_timeout
                )
                if 200 <= got.status < 300:
                    stable_body, canary_body = (
                        (served.body, got.body) if track == "stable" else (got.body, served.body)
                    )
                    result = compare_bodies(stable_body, canary_body, rel, absolute)
                    rows = compare_rows(stable_body, canary_body, rel, absolute)
                    if rows is None:
                        result = "error"
        except UpstreamError as exc:
            log.debug("mirrored request to %s failed: %s", backend.url, exc)
        finally:
            self._shadow_inflight -= 1
            if _compared(req):
                self._mirror_result(table.backends["canary"].version, track, result, rows)

    def _mirror_result(
        self, version: str, source: Track, result: str, rows: tuple[int, int] | None
    ) -> None:
        if source == "stable":
            self.metrics.shadow_result(version, result)  # the shadow contract (per request)
        self.metrics.agreement(version, source, result, rows)
        if rows is not None and self.guard.observe_agreement(rows[0], rows[1], time.time()):
            self._tripped()

    async def aclose(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        for pool in self._pools.values():
            pool.close()

    # ---- the router's own endpoints ----------------------------------------------------
    def _local(self, req: Request) -> Reply | None:
        path = req.target.split(b"?", 1)[0]
        if path == b"/healthz":
            return Reply(200, [(b"content-type", b"text/plain")], b"ok\n")
        if path == b"/readyz":
            if self.table is None:
                return error_reply(503, "no routing table is in force yet")
            if self.source_error is not None:
                # Serving on, but a table change (a rollback) would not reach this router.
                return error_reply(503, f"routing table source stopped: {self.source_error}")
            return Reply(200, [(b"content-type", b"text/plain")], b"ready\n")
        if path == b"/metrics":
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
            return Reply(200, [(b"content-type", ctype)], self.metrics.exposition())
        if path == b"/-/table":
            if self.table is None:
                return error_reply(404, "no routing table is in force yet")
            doc = dict(self.table.raw)
            doc["routerState"] = self.state()
            return _json(200, doc)
        if path == b"/-/status":
            generation = self.table.generation if self.table else None
            doc = {
                "generation": generation,
                "source": self.source,
                "lastRejected": self.last_error,
                "sourceError": self.source_error,
                "inflight": self.inflight,
                "guard": self.guard.report(),
            }
            return _json(200, doc)
        return None

    def state(self) -> dict[str, Any]:
        """What the router really serves: effective weights and the guard's report."""
        weights = dict(self.effective.weights) if self.effective else {}
        return {"weights": weights, "guard": self.guard.report()}


_LOCAL_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})
FEEDBACK_PATH = b"/feedback"


def _compared(req: Request) -> bool:
    # Mirrored feedback lets a shadow canary judge its own mirrored predictions (same
    # request ids), but the two answers are counts, not predictions: not an agreement.
    return req.target.split(b"?", 1)[0] != FEEDBACK_PATH


def _response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n.lower() not in _DROP_RESPONSE]


def _json(status: int, doc: object) -> Reply:
    body = json.dumps(doc, indent=1).encode() + b"\n"
    return Reply(status, [(b"content-type", b"application/json")], body)


def error_reply(status: int, message: str) -> Reply:
    return _json(status, {"error": message, "source": "mlrollout-router"})
