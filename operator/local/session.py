"""One local run of a ModelDeployment: Prometheus, the router, model servers, the engine.

``LocalSession`` wires the local implementations (``LocalRuntime``, ``FileRouter``, the
Prometheus provider against ``LocalPrometheus``) into the same ``reconcile`` the operator
calls, persists status to ``<run dir>/state.json`` so a restart resumes, and keeps the
timeline. It owns every process it starts: ``close()`` stops them all and writes the
timeline (JSON + PNG).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlrollout.operator import notify
from mlrollout.operator.ctl.limits import check_limits
from mlrollout.operator.interfaces import DeploymentKey, Event
from mlrollout.operator.local.display import LiveDisplay, render
from mlrollout.operator.local.manifest import Manifest
from mlrollout.operator.local.procs import ProcessError, Supervisor, wait_ready
from mlrollout.operator.local.prom import LocalPrometheus, ScrapeTarget
from mlrollout.operator.local.router import FileRouter
from mlrollout.operator.local.runtime import LocalRuntime
from mlrollout.operator.local.timeline import Timeline, entry_from_status, plot
from mlrollout.operator.prometheus import PrometheusProvider
from mlrollout.operator.reconcile import ReconcileResult, reconcile
from mlrollout.operator.rundir import (
    ANALYSIS_FILE,
    EVENTS_FILE,
    RUN_FILE,
    STATE_FILE,
    analysis_record,
    append_jsonl,
    write_json,
)
from mlrollout.operator.webhook import WebhookSender
from mlrollout.services.netutil import free_port

STATE_FORMAT = 1
QUIET_EVENTS = frozenset({"AnalysisPassed", "AnalysisNoData", "AnalysisInconclusive"})


@dataclass(frozen=True)
class SessionOptions:
    run_dir: Path
    prometheus_bin: str | None = None
    scrape_interval_s: float = 1.0
    poll_s: float = 1.0  # longest sleep between reconciles; also how often the file is checked
    router_port: int | None = None


def outcome_of(status: Mapping[str, Any] | None, version: str) -> str | None:
    """The last final outcome (promoted, rolledBack, aborted, superseded) of ``version``."""
    final = {"promoted", "rolledBack", "aborted", "superseded"}
    history = (status or {}).get("history") or []
    for entry in reversed(history):
        if entry.get("version") == version and entry.get("outcome") in final:
            return str(entry["outcome"])
    return None


class LocalSession:
    def __init__(
        self,
        manifest: Manifest,
        options: SessionOptions,
        display: LiveDisplay | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manifest = manifest
        self.options = options
        self.display = display
        self.clock = clock
        self.key = DeploymentKey(manifest.namespace, manifest.name)
        self.run_dir = options.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.run_dir / STATE_FILE
        self.supervisor = Supervisor(self.run_dir / "logs")
        self.runtime = LocalRuntime(self.supervisor, manifest.base_dir, on_event=self._on_event)
        self.router_port = options.router_port or free_port()
        self.router = FileRouter(
            self.run_dir / "table.json", confirm_url=f"http://127.0.0.1:{self.router_port}/-/table"
        )
        self.prometheus: LocalPrometheus | None = None
        self.metrics: PrometheusProvider | None = None
        self.status: dict[str, Any] | None = None
        self.generation = 1
        self.timeline = Timeline(manifest.name)
        self.last: ReconcileResult | None = None
        self._reported_exits: set[str] = set()
        self._run_doc: dict[str, Any] = {}
        self.notifier = WebhookSender()
        self._resume()

    # ------------------------------------------------------------------ lifecycle

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    def start(self) -> None:
        """Start Prometheus and the router; servers start on the first reconcile."""
        self.prometheus = LocalPrometheus(
            self.supervisor,
            binary=self.options.prometheus_bin,
            interval_s=self.options.scrape_interval_s,
        )
        self.prometheus.start(self._targets())
        self.metrics = PrometheusProvider(self.prometheus.url)
        # A table left by an earlier run points at ports that other processes may own by
        # now; the router starts empty and gets a fresh table once a server is ready.
        self.router.path.unlink(missing_ok=True)
        proc = self.supervisor.start(
            "router",
            [
                sys.executable,
                "-m",
                "mlrollout.services.cli",
                "router",
                "--table",
                str(self.router.path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.router_port),
                "--log-level",
                "WARNING",
            ],
        )
        wait_ready(proc, f"{self.router_url}/healthz", timeout=30)
        self.note(
            f"Prometheus {self.prometheus.url}  router {self.router_url}  run dir {self.run_dir}"
        )
        self.write_run_file()
        self._warm_up()

    def close(self) -> None:
        """Stop every process and write the timeline. Safe to call twice."""
        try:
            self.runtime.stop_all()
            if self.prometheus is not None:
                self.prometheus.stop()
        finally:
            self.supervisor.close()
            self.write_timeline()
            self.notifier.close(timeout=2.0)
            if self._run_doc:
                self.write_run_file(running=False)

    def run_document(self, running: bool = True) -> dict[str, Any]:
        """What ``run.json`` holds: ports, URLs and pids of this run (for scripts)."""

        def pid(name: str) -> int | None:
            proc = self.supervisor.get(name)
            return proc.pid if proc is not None and proc.alive() else None

        servers = {}
        for revision, server in self.runtime.servers().items():
            servers[revision] = {
                "version": server.spec.model.version,
                "url": server.url,
                "port": server.port,
                "pid": server.proc.pid if server.proc.alive() else None,
            }
        return {
            "deployment": self.manifest.name,
            "namespace": self.manifest.namespace,
            "file": str(self.manifest.path.resolve()),
            "runDir": str(self.run_dir.resolve()),
            "running": running,
            "pid": os.getpid() if running else None,
            "router": {"url": self.router_url, "port": self.router_port, "pid": pid("router")},
            "prometheus": {
                "url": self.prometheus.url if self.prometheus is not None else None,
                "pid": pid("prometheus"),
            },
            "servers": servers,
            "files": {
                "state": str(self.state_path),
                "events": str(self.run_dir / EVENTS_FILE),
                "analysis": str(self.run_dir / ANALYSIS_FILE),
                "timeline": str(self.timeline_paths[0]),
                "logs": str(self.supervisor.log_dir),
            },
        }

    def write_run_file(self, running: bool = True) -> None:
        doc = self.run_document(running)
        if doc != self._run_doc:
            self._run_doc = doc
            write_json(self.run_dir / RUN_FILE, doc)

    def _warm_up(self, timeout: float = 60.0) -> None:
        """On resume, start the saved revisions and wait for them before the first decision.

        The processes of the last run are gone; judging at once would see the stable not
        ready and report it (StableNotReady) although it is only starting.
        """
        if not (self.status or {}).get("stable"):
            return
        from mlrollout.operator.decide import wanted_revisions
        from mlrollout.operator.reconcile import load_status

        now = datetime.fromtimestamp(self.clock(), tz=UTC)
        wanted = wanted_revisions(self.manifest.spec, load_status(self.status), now)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.runtime.ensure_revisions(self.key, wanted)
            if all(s.ready for s in states.values()) or any(
                "exited" in s.message for s in states.values()
            ):
                return
            time.sleep(0.2)

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def timeline_paths(self) -> tuple[Path, Path]:
        return self.run_dir / "timeline.json", self.run_dir / "timeline.png"

    def write_timeline(self) -> None:
        json_path, png_path = self.timeline_paths
        self.timeline.write_json(json_path)
        plot(self.timeline, png_path)

    # ------------------------------------------------------------------ state

    def _resume(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError) as exc:
            self.note(f"ignoring unreadable {self.state_path}: {exc}")
            return
        if state.get("format") != STATE_FORMAT or state.get("deployment") != self.manifest.name:
            self.note(f"ignoring {self.state_path}: it belongs to another deployment or format")
            return
        self.status = state.get("status")
        self.generation = int(state.get("generation", 1))
        if state.get("spec") != self.manifest.raw_spec:
            self.generation += 1
        timeline_json = self.timeline_paths[0]
        if timeline_json.exists():
            # A damaged log starts afresh; the status is what matters for resuming.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.timeline = Timeline.read_json(timeline_json)
        self.note(f"resuming from {self.state_path} (phase {(self.status or {}).get('phase')})")

    def _save(self) -> None:
        write_json(
            self.state_path,
            {
                "format": STATE_FORMAT,
                "deployment": self.manifest.name,
                "namespace": self.manifest.namespace,
                "generation": self.generation,
                "spec": self.manifest.raw_spec,
                "status": self.status,
            },
        )

    # ------------------------------------------------------------------ the loop

    def apply(self, manifest: Manifest) -> bool:
        """Take a new version of the file; return whether the spec changed."""
        if manifest.name != self.manifest.name:
            self.note(
                f"ignoring the change of metadata.name to {manifest.name!r}: "
                "restart mlrollout dev for another deployment"
            )
            return False
        changed = manifest.raw_spec != self.manifest.raw_spec
        self.manifest = manifest
        if changed:
            self.generation += 1
        return changed

    def tick(self) -> ReconcileResult:
        """One observe-decide-apply round, then persist, record and show."""
        if self.metrics is None:
            raise RuntimeError("LocalSession.start() must be called before tick()")
        t = self.clock()
        now = datetime.fromtimestamp(t, tz=UTC)
        result = reconcile(
            self.key,
            self.manifest.raw_spec,
            self.status,
            now,
            runtime=self.runtime,
            router=self.router,
            metrics=self.metrics,
            generation=self.generation,
        )
        self._check_infra()
        record = analysis_record(
            self.status,
            result.status,
            result.events,
            t,
            len(self.manifest.spec.rollout.steps),
            check_limits(self.manifest.spec.rollout.analysis),
        )
        if record is not None:
            append_jsonl(self.run_dir / ANALYSIS_FILE, {"deployment": self.manifest.name, **record})
        self.status = result.status
        self.last = result
        self._save()
        if self._run_doc:
            self.write_run_file()
        if self.prometheus is not None:
            self._update_targets()
        if result.events:
            self.notifier.send(
                notify.messages(self.key, self.manifest.raw_spec, result.events, now)
            )
        entry = entry_from_status(result.state, result.events, t)
        self.timeline.append(entry)
        if entry.event:
            # Keep the log on disk as it grows, so even a SIGKILL loses little of it.
            self.timeline.write_json(self.timeline_paths[0])
        if self.display is not None:
            steps = len(self.manifest.spec.rollout.steps)
            limits = check_limits(self.manifest.spec.rollout.analysis)
            self.display.show(
                entry, render(entry, self.manifest.name, steps, self.display.tty, limits=limits)
            )
        return result

    def _check_infra(self) -> None:
        """Say once when Prometheus or the router has exited: the engine cannot tell why."""
        for name, consequence in (
            ("prometheus", "analysis reports providerError; the rollout holds"),
            ("router", "requests to the router fail; restart mlrollout dev"),
        ):
            proc = self.supervisor.get(name)
            if proc is None or proc.alive() or name in self._reported_exits:
                continue
            self._reported_exits.add(name)
            self.note(
                f"Warning: {name} exited with code {proc.returncode} ({consequence}); "
                f"log: {proc.log_path}"
            )

    def _targets(self) -> list[ScrapeTarget]:
        labels = {"namespace": self.key.namespace, "deployment": self.key.name}
        return [
            *self.runtime.targets(self.key),
            ScrapeTarget(f"127.0.0.1:{self.router_port}", labels, job="router"),
        ]

    def _update_targets(self) -> None:
        assert self.prometheus is not None
        proc = self.prometheus.process
        if proc is None or not proc.alive():
            return  # Prometheus is down: the engine sees the provider offline and holds
        try:
            self.prometheus.set_targets(self._targets())
        except ProcessError as exc:
            self.note(str(exc))

    def sleep_for(self, result: ReconcileResult) -> float:
        return max(0.05, min(result.requeue_after, self.options.poll_s))

    # ------------------------------------------------------------------ output

    def phase(self) -> str:
        return str((self.status or {}).get("phase", ""))

    def _on_event(self, deployment: DeploymentKey, event: Event) -> None:
        # Routine analysis results are in the live block already; keep the scrollback for
        # what changed (steps, promotions, rollbacks, failures, processes).
        append_jsonl(
            self.run_dir / EVENTS_FILE,
            {
                "time": datetime.fromtimestamp(self.clock(), tz=UTC).isoformat(),
                "type": event.type,
                "reason": event.reason,
                "message": event.message,
            },
        )
        if not (event.reason in QUIET_EVENTS and event.type == "Normal"):
            self.note(f"{event.type}: {event.reason}: {event.message}")

    def note(self, text: str) -> None:
        if self.display is not None:
            self.display.note(text)
