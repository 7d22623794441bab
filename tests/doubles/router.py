"""Test and benchmark helpers: a tiny fake model backend and process management.

    python -m tests.doubles.router --port 8001 --version v1 [--status 500] [--shift 1]

The fake answers every request with ``{"predictions": [label], "version": V}`` where
``label`` is derived from the request body, so two fakes with the same ``--shift``
agree on every input and fakes with different shifts never do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlrollout.services.netutil import free_port, wait_http
from mlrollout.services.router.proxy import Reply, Request

ROUTER_CMD = [sys.executable, "-m", "mlrollout.services.cli", "router"]
FAKE_CMD = [sys.executable, "-m", "tests.doubles.router"]
# The fake runs from the source checkout (tests/ is not installed): its root goes on the path.
ROOT = Path(__file__).resolve().parents[2]


class FakeBackend:
    def __init__(self, version: str, status: int = 200, shift: int = 0, delay: float = 0.0):
        self.version, self.status, self.shift, self.delay = version, status, shift, delay

    async def handle(self, req: Request) -> Reply:
        if req.target == b"/healthz":
            return Reply(200, [(b"content-type", b"text/plain")], b"ok\n")
        if self.delay:
            await asyncio.sleep(self.delay)
        label = (sum(req.body) + self.shift) % 3
        doc = {"predictions": [label], "version": self.version}
        headers = [
            (b"content-type", b"application/json"),
            (b"x-fake-version", self.version.encode()),
        ]
        rid = next((v for n, v in req.headers if n == b"x-request-id"), None)
        if rid is not None:
            headers.append((b"x-seen-request-id", rid))
        return Reply(self.status, headers, json.dumps(doc).encode())


def write_table(path: Path, doc: dict[str, Any] | str) -> None:
    """Write atomically (temporary file + rename), as the docs ask of table writers."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".table-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def table_doc(
    generation: int,
    stable_port: int,
    canary_port: int | None,
    canary_weight: int,
    **extra: Any,
) -> dict[str, Any]:
    backends = {"stable": {"url": f"http://127.0.0.1:{stable_port}", "version": "v1"}}
    weights = {"stable": 100 - canary_weight}
    if canary_port is not None:
        backends["canary"] = {"url": f"http://127.0.0.1:{canary_port}", "version": "v2"}
        weights["canary"] = canary_weight
    doc = {"generation": generation, "deployment": "demo", "backends": backends, "weights": weights}
    doc.update(extra)
    return doc


@contextlib.contextmanager
def process(
    cmd: list[str], health_url: str, timeout: float = 20.0, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd``, wait until ``health_url`` answers 200, always stop it afterwards."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        try:
            wait_http(health_url, timeout=timeout)
        except TimeoutError:
            proc.kill()
            err = proc.communicate(timeout=5)[1].decode(errors="replace")[-2000:]
            raise RuntimeError(f"{cmd} did not become healthy: {err}") from None
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stderr is not None:
        proc.stderr.close()


def source_env() -> dict[str, str]:
    """The environment with the checkout's root first on PYTHONPATH (for ``-m tests...``)."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


@contextlib.contextmanager
def fake_backend(version: str, *options: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = [*FAKE_CMD, "--port", str(port), "--version", version, *options]
    with process(cmd, f"http://127.0.0.1:{port}/healthz", env=source_env()) as proc:
        yield port, proc


@contextlib.contextmanager
def router(table: Path, *options: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = [*ROUTER_CMD, "--table", str(table), "--port", str(port), *options]
    with process(cmd, f"http://127.0.0.1:{port}/healthz") as proc:
        yield port, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fake model backend for router tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--shift", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    backend = FakeBackend(args.version, args.status, args.shift, args.delay)

    async def serve() -> None:
        from mlrollout.services.router.server import start_server

        server = await start_server(backend, args.host, args.port)
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_event.set)
        await stop_event.wait()
        server.close()

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
