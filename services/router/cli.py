"""``mlrollout router``: run the weighted canary router.

mlrollout router --table routes.json --host 127.0.0.1 --port 8080
mlrollout router --configmap NAMESPACE/NAME --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

import prometheus_client

from .proxy import Router, RouterConfig
from .server import start_server
from .source import ConfigMapSource, FileSource, KubeAccess, TableSource, watch_source

log = logging.getLogger("mlrollout.router")


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--table", metavar="FILE", help="routing table JSON file, reloaded on change"
    )
    where.add_argument(
        "--configmap",
        metavar="NAMESPACE/NAME",
        help="watch this ConfigMap through the Kubernetes API",
    )
    parser.add_argument("--configmap-key", default="table.json", help="key holding the table")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default %(default)s)")
    parser.add_argument(
        "--timeout", type=_positive(float), default=30.0, help="seconds for a backend to answer"
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=1.0,
        help="seconds to connect to a backend",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive(int),
        default=16 << 20,
        help="largest request body accepted",
    )
    parser.add_argument(
        "--max-shadow-inflight",
        type=_positive(int),
        default=16,
        help="concurrent shadow requests; more are dropped (counted), never queued",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive(float),
        default=75.0,
        help="close client keep-alive connections idle this long (seconds)",
    )
    parser.add_argument(
        "--canary-timeout",
        type=_positive(float),
        default=10.0,
        help="seconds of --timeout a canary try may take before the request goes to stable",
    )
    parser.add_argument(
        "--response-header-timeout",
        type=_positive(float),
        default=5.0,
        help="seconds from a backend answer's first byte to the end of its headers",
    )
    parser.add_argument(
        "--max-response-bytes",
        type=_positive(int),
        default=8 << 20,
        help="largest backend response body passed on (a larger one is the backend's error)",
    )
    parser.add_argument(
        "--max-response-buffer-bytes",
        type=_positive(int),
        default=32 << 20,
        help="response bytes held at once per backend, over all its requests",
    )
    parser.add_argument(
        "--max-request-buffer-bytes",
        type=_positive(int),
        default=64 << 20,
        help="request body bytes held at once over all clients (503 beyond)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=_positive(int),
        default=64 << 10,
        help="largest request line + headers accepted (431 above)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=10.0,
        help="seconds a client may take to send a request's line and headers (408 after)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds a client may take to send a request body after its headers (408 after)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=_positive(float),
        default=10.0,
        help="seconds to let requests in flight finish after SIGTERM",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level",
    )


def run(args: argparse.Namespace) -> int:
    # One router per process: the *_created series would only add noise to every scrape.
    prometheus_client.disable_created_metrics()
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = RouterConfig(
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        max_body_bytes=args.max_body_bytes,
        max_shadow_inflight=args.max_shadow_inflight,
        idle_timeout=args.idle_timeout,
        max_header_bytes=args.max_header_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        canary_timeout=args.canary_timeout,
        response_header_timeout=args.response_header_timeout,
        max_response_bytes=args.max_response_bytes,
        max_response_buffer_bytes=args.max_response_buffer_bytes,
        max_request_buffer_bytes=args.max_request_buffer_bytes,
    )
    source: TableSource
    if args.table:
        source = FileSource(args.table)
    else:
        namespace, _, name = args.configmap.partition("/")
        if not namespace or not name:
            log.error("--configmap must be NAMESPACE/NAME, got %r", args.configmap)
            return 2
        try:
            access = KubeAccess.from_environment()
        except Exception as exc:
            log.error("cannot find Kubernetes credentials (in-cluster or kubeconfig): %s", exc)
            return 2
        source = ConfigMapSource(namespace, name, access, key=args.configmap_key)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(serve(Router(config), source, args.host, args.port, args.shutdown_grace))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1


async def serve(
    router: Router, source: TableSource, host: str, port: int, grace: float = 10.0
) -> int:
    if isinstance(source, FileSource):
        # Ready with the table before the first request.
        source.poll(router.offer, reject=lambda message: router.reject(message, source.describe()))
    cfg = router.config
    server = await start_server(
        router, host, port, cfg.max_body_bytes, cfg.idle_timeout,
        max_header_bytes=cfg.max_header_bytes, header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout, max_buffered_bytes=cfg.max_request_buffer_bytes,
    )  # fmt: skip
    watcher = asyncio.create_task(watch_source(router, source))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if isinstance(source, ConfigMapSource):
        router.on_trip = _report_trips(source)
        source.on_guard = router.adopt_trip  # other replicas' trips, and ours after a restart
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("router listening on http://%s:%d, table from %s", host, port, source.describe())
    await stop.wait()
    log.info("router stopping: no new connections, finishing %d requests", router.inflight)
    server.close()
    deadline = loop.time() + grace
    while router.inflight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await router.aclose()
    return 0


_REPORTS: set[asyncio.Task[bool]] = set()


def _report_trips(source: ConfigMapSource) -> Callable[[dict[str, Any]], None]:
    """Write each guard trip into the ConfigMap, off the request path."""

    def report(doc: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(source.write_guard(doc))
        _REPORTS.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(_REPORTS.discard)

    return report
