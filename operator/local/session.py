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
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlrollout.operator.interfaces import DeploymentKey, Event
from mlrollout.operator.local.display import LiveDisplay, render
from mlrollout.operator.local.manifest import Manifest
from mlrollout.operator.local.procs import ProcessError, Supervisor, wait_ready
from mlrollout.operator.local.prom import LocalPrometheus, ScrapeTarget
from mlrollout.operator.local.router import FileRouter
from mlrollout.operator.local.runtime import LocalRuntime
from mlrollout.operator.local.timeline import CheckPoint, Timeline, TimelineEntry, plot
from mlrollout.operator.prometheus import PrometheusProvider
from mlrollout.operator.reconcile import ReconcileResult, reconcile
from mlrollout.services.netutil import free_port

STATE_FORMAT = 1
QUIET_EVENTS = frozenset({"AnalysisPassed", "AnalysisNoData"})


@dataclass(frozen=True)
class SessionOptions:
    run_dir: Path
    prometheus_bin: str | None = None
    scrape_interval_s: float = 1.0
    poll_s: float = 1.0  # longest sleep between reconciles; also how often the file is checked
    router_port: int | None = None


def snake(reason: str) -> str:
    """``RolledBack`` -> ``rolled_back``: event reasons as timeline event names."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", reason).lower()


# When one decision has several events, the timeline marks the one that matters most.
EVENT_PRIORITY = ("rolled_back", "aborted", "promoted", "rollout_started", "superseded", "deployed")


def _event_rank(name: str) -> int:
    return EVENT_PRIORITY.index(name) if name in EVENT_PRIORITY else len(EVENT_PRIORITY)


def outcome_of(status: Mapping[str, Any] | None, version: str) -> str | None:
    """The last final outcome (promoted, rolledBack, aborted, superseded) of ``version``."""
    final = {"promoted", "rolledBack", "aborted", "superseded"}
    history = (status or {}).get("history") or []
    for entry in reversed(history):
        if entry.get("version") == version and entry.get("outcome") in final:
            return str(entry["outcome"])
    return None


def entry_from_status(
    status: Mapping[str, Any], events: tuple[Event, ...], t: float
) -> TimelineEntry:
    """A timeline entry from stored (camelCase) status and the decision's events (pure)."""
    weights = status.get("weights") or {}
    stable = status.get("stable") or {}
    canary = status.get("canary") or {}
    verdicts = (status.get("analysis") or {}).get("verdicts") or []
    checks = tuple(
        CheckPoint(
            name=str(v.get("check", "")),
            value=v.get("value"),
            threshold=v.get("threshold"),
            verdict=str(v.get("outcome", "")),
        )
        for v in verdicts
    )
    names = [snake(e.reason) for e in events]
    event = min(names, key=_event_rank) if names else None
    return TimelineEntry(
        t=t,
        phase=str(status.get("phase", "")),
        weights={
            "stable": int(weights.get("stable", 100)),
            "canary": int(weights.get("canary", 0)),
        },
        step=status.get("currentStep") if canary else None,
        stable_version=stable.get("version"),
        canary_version=canary.get("version"),
        checks=checks if canary else (),
        event=event,
        reason="; ".join(e.message for e in events) or str(status.get("message", "")),
    )


def _atomic_json(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        self.state_path = self.run_dir / "state.json"
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

    def close(self) -> None:
        """Stop every process and write the timeline. Safe to call twice."""
        try:
            self.runtime.stop_all()
            if self.prometheus is not None:
                self.prometheus.stop()
        finally:
            self.supervisor.close()
            self.write_timeline()

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
        _atomic_json(
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
        self.status = result.status
        self.last = result
        self._save()
        if self.prometheus is not None:
            self._update_targets()
        entry = entry_from_status(result.status, result.events, t)
        self.timeline.append(entry)
        if entry.event:
            # Keep the log on disk as it grows, so even a SIGKILL loses little of it.
            self.timeline.write_json(self.timeline_paths[0])
        if self.display is not None:
            steps = len(self.manifest.spec.rollout.steps)
            self.display.show(entry, render(entry, self.manifest.name, steps, self.display.tty))
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
        if event.reason not in QUIET_EVENTS:
            self.note(f"{event.type}: {event.reason}: {event.message}")

    def note(self, text: str) -> None:
        if self.display is not None:
            self.display.note(text)
