"""A local run's directory: who holds it (``RunLock``) and the files readers tail.

``run.json`` says where everything is, ``events.jsonl`` and ``analysis.jsonl`` grow one
line per event or analysis run (a single ``O_APPEND`` write, so a reader never sees half a
record), ``state.json`` is the status a restart resumes from (``session.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlrollout.operator.interfaces import Event
from mlrollout.services.osutil import write_atomic

STATE_FILE = "state.json"
RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
ANALYSIS_FILE = "analysis.jsonl"
LOCK_FILE = "lock"

# Events the engine emits once per analysis run of a canary (see decide/engine.py _judge).
ANALYSIS_EVENTS = frozenset(
    {
        "AnalysisPassed",
        "AnalysisFailed",
        "AnalysisNoData",
        "AnalysisInconclusive",
        "AnalysisProviderError",
    }
)


class RunDirBusy(RuntimeError):
    """Another ``mlrollout dev`` holds the run dir."""


class RunLock:
    """An exclusive lock on a run dir, held for the whole life of one ``mlrollout dev``.

    ``flock`` is released by the kernel when the process dies, so a crash or SIGKILL
    never leaves a stale lock behind; the file only records who holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"another mlrollout dev (pid {holder}) is running on {self.path.parent}; "
                "stop it first (Ctrl-C there), or use --run-dir for a separate run"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def analysis_record(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    events: tuple[Event, ...],
    t: float,
    total_steps: int,
    limits: Mapping[str, str],
) -> dict[str, Any] | None:
    """One JSON-lines record when this decision included an analysis run, else None (pure).

    Step and weight are those in force while the run's window was measured (before this
    decision advanced, promoted or rolled back); the verdicts survive promotion/rollback.
    """
    reasons = [e.reason for e in events if e.reason in ANALYSIS_EVENTS]
    a_before = (before or {}).get("analysis") or {}
    a_after = after.get("analysis") or {}
    new_run = a_after.get("lastRunAt") is not None and a_after.get("lastRunAt") != a_before.get(
        "lastRunAt"
    )
    # AnalysisInconclusive also reports a step deadline (no run): it counts with a new run.
    ran = any(r != "AnalysisInconclusive" for r in reasons) or new_run
    if not ran:
        return None
    ref = before if (before or {}).get("canary") else after
    canary = (ref or {}).get("canary") or {}
    stable = (ref or {}).get("stable") or {}
    weights = (ref or {}).get("weights") or {}
    step = (ref or {}).get("currentStep", 0)
    outcome = (
        {
            "AnalysisPassed": "pass",
            "AnalysisFailed": "fail",
            "AnalysisNoData": "noData",
            "AnalysisInconclusive": "inconclusive",
            "AnalysisProviderError": "providerError",
        }.get(reasons[0], "")
        if reasons
        else ""
    )
    checks = []
    for v in a_after.get("verdicts") or []:
        name = str(v.get("check", ""))
        checks.append(
            {
                "check": name,
                "value": v.get("value"),
                "threshold": v.get("threshold"),
                "limit": limits.get(name, ""),
                "samples": v.get("samples"),
                "verdict": v.get("outcome"),
                "message": v.get("message", ""),
            }
        )
    return {
        "time": datetime.fromtimestamp(t, tz=UTC).isoformat(),
        "stable": stable.get("version"),
        "canary": canary.get("version"),
        "step": f"{int(step) + 1}/{total_steps}" if canary else None,
        "weight": int(weights.get("canary", 0)) if canary else 0,
        "outcome": outcome or None,
        "phaseAfter": after.get("phase"),
        "checks": checks,
    }


def append_jsonl(path: Path, doc: Mapping[str, Any]) -> None:
    # One write of one line on an O_APPEND file: readers never see half a record.
    with path.open("a") as fh:
        fh.write(json.dumps(doc, sort_keys=True, default=str) + "\n")


def write_json(path: Path, doc: Any) -> None:
    """Replace ``path`` with ``doc`` atomically (readers see the old or the new file)."""
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True))
