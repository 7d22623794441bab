"""A throw-away Prometheus for local mode: free port, temp data dir, generated scrape config.

``scrape_config`` is pure (targets in, config dict out); ``LocalPrometheus`` runs Debian's
``prometheus`` binary under a ``Supervisor`` and reloads the config through ``/-/reload``
(``--web.enable-lifecycle``) when the set of model servers changes.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlrollout.operator.local.procs import ManagedProcess, ProcessError, Supervisor, wait_ready
from mlrollout.services.netutil import free_port

INSTALL_HINT = (
    "Prometheus is needed for local mode but the `prometheus` binary was not found.\n"
    "Install it with `sudo apt-get install prometheus` (Debian/Ubuntu), or run `make install`,\n"
    "or pass its path with --prometheus-bin."
)


class PrometheusMissingError(RuntimeError):
    """The ``prometheus`` binary is not installed."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One endpoint to scrape, with the target labels Prometheus attaches to its series."""

    address: str  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)
    job: str = "mlrollout"
    metrics_path: str = "/metrics"


def prom_duration(seconds: float) -> str:
    """Format seconds the way Prometheus config expects (``1s``, ``500ms``)."""
    if seconds <= 0:
        raise ValueError(f"a Prometheus duration must be positive, got {seconds}")
    ms = round(seconds * 1000)
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{max(ms, 1)}ms"


def scrape_config(targets: Sequence[ScrapeTarget], interval_s: float = 1.0) -> dict[str, Any]:
    """The Prometheus config scraping ``targets`` every ``interval_s`` seconds.

    One scrape job per (job, metrics path); one static group per target so each keeps its
    own labels. ``honor_labels`` keeps a server's own ``deployment`` label as it is, and
    target labels (``namespace``) only fill in what the server does not set itself.
    """
    every = prom_duration(interval_s)
    jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for target in sorted(targets, key=lambda t: (t.job, t.metrics_path, t.address)):
        group = {"targets": [target.address], "labels": dict(sorted(target.labels.items()))}
        jobs.setdefault((target.job, target.metrics_path), []).append(group)
    scrape_configs = [
        {
            "job_name": job if path == "/metrics" else f"{job}{path.replace('/', '_')}",
            "metrics_path": path,
            "honor_labels": True,
            "static_configs": groups,
        }
        for (job, path), groups in jobs.items()
    ]
    return {
        "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
        "scrape_configs": scrape_configs,
    }


def find_prometheus(explicit: str | None = None) -> str:
    """The path of the ``prometheus`` binary, or a ``PrometheusMissingError`` saying how to get it."""
    if explicit:
        path = shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
        if path is None:
            raise PrometheusMissingError(f"{explicit!r} is not an executable.\n{INSTALL_HINT}")
        return path
    for candidate in ("prometheus", "/usr/bin/prometheus"):
        path = shutil.which(candidate)
        if path:
            return path
    raise PrometheusMissingError(INSTALL_HINT)


class LocalPrometheus:
    """Prometheus on a free 127.0.0.1 port, storing into a temp dir removed on ``stop()``."""

    PROCESS_NAME = "prometheus"

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        binary: str | None = None,
        interval_s: float = 1.0,
        port: int | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.binary = find_prometheus(binary)
        self.supervisor = supervisor
        self.interval_s = interval_s
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mlrollout-prom-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self._targets: tuple[ScrapeTarget, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess | None:
        return self.supervisor.get(self.PROCESS_NAME)

    def _write_config(self, targets: Sequence[ScrapeTarget]) -> None:
        text = yaml.safe_dump(scrape_config(targets, self.interval_s), sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def start(self, targets: Sequence[ScrapeTarget] = (), timeout: float = 30.0) -> None:
        self._targets = tuple(targets)
        self._write_config(self._targets)
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        proc = self.supervisor.start(
            self.PROCESS_NAME,
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
        )
        try:
            wait_ready(proc, f"{self.url}/-/ready", timeout=timeout)
        except ProcessError:
            self.supervisor.stop(self.PROCESS_NAME)
            raise

    def set_targets(self, targets: Sequence[ScrapeTarget]) -> bool:
        """Scrape exactly ``targets`` from now on; return whether anything changed."""
        wanted = tuple(sorted(targets, key=lambda t: (t.job, t.address)))
        if wanted == self._targets:
            return False
        self._write_config(wanted)
        self._targets = wanted
        self.reload()
        return True

    def reload(self) -> None:
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            # Not fatal: the config is on disk and is read when Prometheus next starts;
            # the engine sees the provider offline meanwhile and holds.
            raise ProcessError(f"Prometheus reload failed: {exc}") from exc

    def stop(self) -> None:
        self.supervisor.stop(self.PROCESS_NAME)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
