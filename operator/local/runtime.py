"""The local ``Runtime``: one ``mlrollout serve`` process per live revision.

The engine says which revisions should run; this starts the missing ones on free ports,
stops retired ones, and reports readiness from each server's ``/readyz``. A server that
exits is not restarted: like a crash-looping pod it stays not ready, the router falls back
to the other track, and the engine decides (it reports the revision ``gone``, so a canary
that exited is rolled back at once).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlrollout.operator.interfaces import DeploymentKey, Event, RevisionSpec, RevisionState
from mlrollout.operator.local.procs import ManagedProcess, ProcessError, Supervisor
from mlrollout.operator.local.prom import ScrapeTarget
from mlrollout.services.netutil import free_port

READY_TIMEOUT_S = 0.5


def serve_argv(spec: RevisionSpec, deployment: str, port: int, base_dir: Path) -> list[str]:
    """The command line that serves one revision (pure)."""
    argv = [
        sys.executable,
        "-m",
        "mlrollout.services.cli",
        "serve",
        resolve_uri(spec.model.uri, base_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--deployment",
        deployment,
        "--track",
        spec.track,
    ]
    if spec.model.sha256:
        argv += ["--sha256", spec.model.sha256]
    return argv


def resolve_uri(uri: str, base_dir: Path) -> str:
    """A relative local path is relative to the YAML file's folder; URLs pass through."""
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def process_name(revision: str) -> str:
    return f"serve-{revision}"


@dataclass
class _Server:
    spec: RevisionSpec
    port: int
    proc: ManagedProcess
    ready: bool = False
    reported_exit: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def probe_ready(url: str, timeout: float = READY_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class LocalRuntime:
    def __init__(
        self,
        supervisor: Supervisor,
        base_dir: Path,
        *,
        on_event: Callable[[DeploymentKey, Event], None] | None = None,
        probe: Callable[[str], bool] = probe_ready,
        command: Callable[[RevisionSpec, str, int, Path], list[str]] = serve_argv,
    ) -> None:
        self.supervisor = supervisor
        self.base_dir = base_dir
        self.on_event = on_event
        self.probe = probe
        self.command = command  # swapped for a stub server in tests
        self._servers: dict[str, _Server] = {}
        self.events: list[tuple[DeploymentKey, Event]] = []

    def ensure_revisions(
        self, deployment: DeploymentKey, wanted: Mapping[str, RevisionSpec]
    ) -> dict[str, RevisionState]:
        for revision in [r for r in self._servers if r not in wanted]:
            retired = self._servers.pop(revision)
            self.supervisor.stop(process_name(revision))
            self.record(
                deployment,
                Event("Normal", "Stopped", f"stopped {retired.spec.model.version} ({revision})"),
            )
        states: dict[str, RevisionState] = {}
        for revision, spec in wanted.items():
            server = self._servers.get(revision)
            if server is None:
                try:
                    server = self._start(deployment, spec)
                except ProcessError as exc:
                    states[revision] = RevisionState(revision, ready=False, message=str(exc))
                    continue
            states[revision] = self._state(deployment, server)
        return states

    def _start(self, deployment: DeploymentKey, spec: RevisionSpec) -> _Server:
        port = free_port()
        env = {var.name: var.value for var in spec.serving.env}
        proc = self.supervisor.start(
            process_name(spec.revision),
            self.command(spec, deployment.name, port, self.base_dir),
            env=env,
        )
        server = _Server(spec, port, proc)
        self._servers[spec.revision] = server
        self.record(
            deployment,
            Event(
                "Normal",
                "Started",
                f"serving {spec.model.version} ({spec.revision}) on {server.url}",
            ),
        )
        return server

    def _state(self, deployment: DeploymentKey, server: _Server) -> RevisionState:
        revision = server.spec.revision
        code = server.proc.returncode
        if code is not None:
            if not server.reported_exit:
                server.reported_exit = True
                self.record(
                    deployment,
                    Event(
                        "Warning",
                        "ServerExited",
                        f"{server.spec.model.version} ({revision}) exited with code {code}; "
                        f"log: {server.proc.log_path}",
                    ),
                )
            tail = server.proc.log_tail(3).replace("\n", " | ")
            return RevisionState(
                revision, False, server.url, f"exited with code {code}: {tail}", gone=True
            )
        server.proc.remember_descendants()  # so a crash cannot orphan workers for good
        server.ready = self.probe(server.url)
        message = "" if server.ready else "starting (waiting for /readyz)"
        return RevisionState(revision, server.ready, server.url, message)

    def record(self, deployment: DeploymentKey, event: Event) -> None:
        self.events.append((deployment, event))
        if self.on_event is not None:
            self.on_event(deployment, event)

    def servers(self) -> dict[str, _Server]:
        """The running servers by revision (for run.json)."""
        return dict(self._servers)

    def targets(self, deployment: DeploymentKey) -> list[ScrapeTarget]:
        """Scrape targets for every server still running."""
        return [
            ScrapeTarget(
                f"127.0.0.1:{s.port}",
                {"namespace": deployment.namespace, "deployment": deployment.name},
            )
            for s in self._servers.values()
            if s.proc.alive()
        ]

    def process(self, revision: str) -> ManagedProcess | None:
        server = self._servers.get(revision)
        return server.proc if server else None

    def stop_all(self) -> None:
        for revision in list(self._servers):
            self._servers.pop(revision)
            self.supervisor.stop(process_name(revision))
