"""Run ``mlrollout serve`` as a child process for tests and benchmarks.

The server runs in its own session; stopping it signals the supervisor and then
kills any of its processes (BentoML's workers included) that are still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlrollout.services.netutil import free_port


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message ends with its log."""


@dataclass
class RunningServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the server, then SIGKILL whatever is left of it; return the exit code."""
        # BentoML's supervisor starts workers in their own sessions, so a process-group
        # kill would miss them if the supervisor died first: note them all up front.
        family = [self.proc.pid, *descendants(self.proc.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return self.proc.returncode


def descendants(root: int) -> list[int]:
    """Process ids below ``root`` (Linux /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status code of a GET, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_ready(server: RunningServer, timeout: float = 90.0, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerFailed(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        if http_status(server.url + path) == 200:
            return
        time.sleep(0.1)
    raise ServerFailed(f"server not ready within {timeout:.0f}s:\n{server.log_tail()}")


def spawn(
    command: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
) -> RunningServer:
    """Start ``command`` (which must listen on 127.0.0.1:``port``) in its own session."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="mlrollout-server-log-"))
    log = log_dir / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return RunningServer(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log=log)


def serve_command(artifact: str, port: int, args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "mlrollout.services.cli", "serve", artifact,
        "--host", "127.0.0.1", "--port", str(port), *args,
    ]  # fmt: skip


@contextlib.contextmanager
def running_server(
    artifact: str,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    ready_timeout: float = 90.0,
) -> Iterator[RunningServer]:
    """``mlrollout serve ARTIFACT`` on a free port, ready on entry, stopped on exit."""
    port = free_port()
    server = spawn(serve_command(artifact, port, args), port=port, env=env, log_dir=log_dir)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        server.stop()


class _Files(SimpleHTTPRequestHandler):
    gate: threading.Event

    def do_GET(self) -> None:
        # Paths under /gated/ wait until the test opens the gate: a slow download.
        if self.path.startswith("/gated/"):
            self.gate.wait(timeout=60)
            self.path = self.path[len("/gated") :]
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FileServer:
    """A static HTTP server on 127.0.0.1 over ``root``; paths under ``/gated/`` wait for ``gate``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gate = threading.Event()
        handler = type("Handler", (_Files,), {"gate": self.gate})
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root))
        )
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
