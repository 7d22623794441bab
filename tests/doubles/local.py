"""Helpers for local-mode end-to-end tests and experiments: specs, variants, driving a session.

Used by ``tests/e2e/local`` and the rollback benchmark (``bench/rollback.py``); a module
rather than a conftest so both import it by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlrollout.operator.local.manifest import Manifest, load_manifest, manifest_document
from mlrollout.operator.local.procs import ManagedProcess, descendants
from mlrollout.operator.local.session import LocalSession, outcome_of


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants at once: a crash of the whole server."""
    for child, _start in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class DriveTimeout(AssertionError):
    """The session did not reach the awaited state in time (an assertion for tests)."""


# Shortened intervals: a good single-step canary is promoted in about 15 s.
FAST_ANALYSIS: dict[str, Any] = {
    "interval": "2s",
    "window": "10s",
    "minSamples": 20,
    "failureLimit": 2,
    "maxStaleness": "10s",
    "onProviderError": {"action": "hold", "maxHold": "5m"},
    "metrics": {
        # Promotion needs a bound of the error-rate increase within maxIncrease: 0.05 is
        # shown by ~200 clean canary requests (the default 0.01 needs ~1000).
        "errorRate": {"max": 0.05, "maxIncrease": 0.05},
        # 2 shared cores: the p95 of two processes differ by noise, only a gross ratio counts
        # (null would mean the default, 1.5).
        "latency": {"maxSeconds": 2.0, "maxRatio": 5.0},
        # Servers close a drift window every 1000 rows; batched traffic fills one in seconds.
        "inputDrift": {"maxPsiIncrease": 0.2},
        "predictionDrift": {"maxPsi": 0.25},
    },
}
RATE = 40.0  # requests per second of steady traffic
BATCH = 8  # rows per request: drift windows (1000 rows) fill in seconds


def variant(examples: Path, source: str, version: str) -> Path:
    """A copy of an example artifact under another version (a distinct revision)."""
    target = examples / version
    if not target.exists():
        shutil.copytree(examples / source, target)
        card = json.loads((target / "model.json").read_text())
        card["version"] = version
        (target / "model.json").write_text(json.dumps(card))
    return target


def manifest_doc(
    version: str,
    uri: Path,
    *,
    steps: list[dict[str, Any]] | None = None,
    analysis: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    progress_deadline: str = "90s",
    traffic: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "fraud", "version": version, "uri": str(uri)},
        "rollout": {
            "steps": steps or [{"weight": 50}],
            "progressDeadline": progress_deadline,
            "analysis": analysis or FAST_ANALYSIS,
        },
    }
    if traffic:
        spec["traffic"] = traffic
    return manifest_document("fraud", spec, env)


def write_manifest(path: Path, doc: dict[str, Any]) -> Manifest:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_manifest(path)


def drive(
    session: LocalSession,
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Run engine rounds until ``done(status)``; fail with the last status after ``timeout``."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = session.tick()
        status = result.status
        if done(status):
            return status
        time.sleep(session.sleep_for(result))
    raise DriveTimeout(
        f"{what}: not reached within {timeout:.0f}s; last status: {json.dumps(status)[:2000]}"
    )


def healthy(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: (
        st.get("phase") == "Healthy"
        and (st.get("stable") or {}).get("version") == version
        and not st.get("canary")
    )


def finished(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: outcome_of(st, version) is not None


def start_loadgen(
    session: LocalSession, examples: Path, name: str, rate: float = RATE, batch: int = BATCH
) -> tuple[ManagedProcess, Path]:
    report = session.run_dir / f"{name}.json"
    report.unlink(missing_ok=True)
    proc = session.supervisor.start(
        name,
        [
            sys.executable,
            "-m",
            "mlrollout.services.cli",
            "loadgen",
            session.router_url,
            "--records",
            str(examples / "traffic.jsonl"),
            "--rate",
            str(rate),
            "--duration",
            "600",
            "--batch",
            str(batch),
            "--report",
            str(report),
        ],
    )
    return proc, report


def stop_loadgen(session: LocalSession, proc: ManagedProcess, report: Path) -> dict[str, Any]:
    proc.popen.send_signal(signal.SIGTERM)
    proc.popen.wait(timeout=20)
    session.supervisor.stop(proc.name)
    return json.loads(report.read_text())


@dataclass
class Stack:
    session: LocalSession
    examples: Path
    yaml_path: Path

    def rollout(self, version: str, uri: Path, **kwargs: Any) -> None:
        self.session.apply(write_manifest(self.yaml_path, manifest_doc(version, uri, **kwargs)))

    def drive(
        self, done: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        return drive(self.session, done, timeout, what)
