"""What ``mlrollout get|list|status|history`` show (pure); what each control will do is
``controls.py``.

Everything here takes plain data (the ModelDeployment's spec and status as stored, its
events, the time) and returns text, rows or exit codes. Reading the cluster or a
local run dir and writing patches is the job of ``stores.py``; ``cli.py`` wires the two.
Check results are read generically from ``status.analysis.verdicts`` (name, outcome,
value, threshold, samples, message, and whatever else a newer engine adds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlrollout.operator.ctl.limits import format_value, limits_from_spec
from mlrollout.operator.model import ModelRef, revision_id
from pydantic import ValidationError

# Exit codes of `mlrollout status` and `mlrollout dev --until-decided` (documented in
# docs/cli.md): scripts tell the outcomes apart without parsing text.
EXIT_OK = 0  # promoted / healthy
EXIT_ROLLED_BACK = 1  # rolled back or aborted
EXIT_USAGE = 2  # bad arguments, not found, refused action
EXIT_DEGRADED = 3  # Degraded or InvalidSpec
EXIT_TIMEOUT = 4  # not decided within --timeout
EXIT_UNREACHABLE = 5  # the API server refused or could not be reached, or the run dir unreadable

_ICONS = {
    "Healthy": "✔",
    "Progressing": "◌",
    "Paused": "॥",
    "RolledBack": "✖",
    "Degraded": "✖",
    "InvalidSpec": "✖",
    "Initializing": "◌",
}
_VERDICT_ICONS = {"pass": "✔", "fail": "✖", "noData": "…", "providerError": "⚠"}


@dataclass(frozen=True)
class EventRecord:
    type: str
    reason: str
    message: str
    time: datetime | None = None
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "reason": self.reason,
            "message": self.message,
            "time": self.time.isoformat() if self.time else None,
            "count": self.count,
        }


@dataclass(frozen=True)
class Snapshot:
    """One ModelDeployment as read at one moment."""

    name: str
    namespace: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    generation: int | None = None
    events: Sequence[EventRecord] = field(default_factory=tuple)
    source: str = "cluster"  # or "local <run dir>"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "source": self.source,
            "generation": self.generation,
            "spec": dict(self.spec),
            "status": dict(self.status),
            "events": [e.to_json() for e in self.events],
        }


# --------------------------------------------------------------------------- helpers


def parse_time(text: object) -> datetime | None:
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def age(then: datetime | None, now: datetime) -> str:
    """``3m12s`` style age, as kubectl prints."""
    if then is None:
        return "-"
    s = max(0, int((now - then).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def steps_of(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    steps = ((spec.get("rollout") or {}).get("steps")) or [{"weight": 10}, {"weight": 50}]
    return [dict(s) for s in steps if isinstance(s, Mapping)]


def step_text(snap: Snapshot) -> str:
    """``2/3`` while a canary runs, ``-`` otherwise."""
    if not snap.status.get("canary"):
        return "-"
    steps = steps_of(snap.spec)
    return f"{int(snap.status.get('currentStep', 0)) + 1}/{len(steps)}"


def wanted_revision(spec: Mapping[str, Any]) -> str | None:
    try:
        return revision_id(ModelRef.model_validate(spec.get("model") or {}))
    except (ValidationError, TypeError):
        return None


def _rev_line(rev: Mapping[str, Any] | None, now: datetime) -> str:
    if not rev:
        return "-"
    text = f"{rev.get('version', '?')}  (revision {rev.get('id', '?')})"
    since = parse_time(rev.get("servingSince"))
    if since is not None:
        text += f"  serving {age(since, now)}"
    return text


def weights_of(status: Mapping[str, Any]) -> tuple[int, int]:
    w = status.get("weights") or {}
    return int(w.get("stable", 100)), int(w.get("canary", 0))


# --------------------------------------------------------------------------- get


def verdict_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """One row per check of the last analysis run, with the limit as the spec wrote it."""
    limits = limits_from_spec(snap.spec)
    rows = []
    for v in (snap.status.get("analysis") or {}).get("verdicts") or []:
        if not isinstance(v, Mapping):
            continue
        name = str(v.get("check", "?"))
        threshold = v.get("threshold")
        rows.append(
            {
                "check": name,
                "value": format_value(name, v.get("value")),
                "threshold": "-" if threshold is None else format_value(name, threshold),
                "limit": limits.get(name, ""),
                "samples": "-" if v.get("samples") is None else str(v.get("samples")),
                "verdict": str(v.get("outcome", "?")),
                "message": str(v.get("message", "")),
            }
        )
    return rows


def render_get(snap: Snapshot, now: datetime, events: int = 5, width: int = 120) -> list[str]:
    """The tree ``mlrollout get NAME`` prints (one screen, like argo rollouts get)."""
    st = snap.status
    phase = str(st.get("phase") or "Unknown")
    stable_w, canary_w = weights_of(st)
    steps = steps_of(snap.spec)
    lines = [
        f"Name:        {snap.name}",
        f"Namespace:   {snap.namespace}"
        + (f"   ({snap.source})" if snap.source != "cluster" else ""),
        f"Phase:       {_ICONS.get(phase, '?')} {phase}",
        f"Message:     {_cut(str(st.get('message') or ''), width - 13)}",
    ]
    observed, gen = st.get("observedGeneration"), snap.generation
    if gen is not None and observed is not None and int(observed) < gen:
        lines.append(f"             (spec generation {gen} not yet observed; shown: {observed})")
    weights = " ".join(f"{s.get('weight')}%" for s in steps)
    lines += [
        f"Step:        {step_text(snap)}   (steps: {weights})",
        f"Weights:     stable {stable_w}%   canary {canary_w}%",
        f"Stable:      {_rev_line(st.get('stable'), now)}",
        f"Canary:      {_rev_line(st.get('canary'), now)}",
    ]
    ctl = snap.spec.get("controls") or {}
    if ctl.get("paused"):
        lines.append("Paused:      yes (spec.controls.paused; `mlrollout resume` continues)")
    a = st.get("analysis") or {}
    rows = verdict_rows(snap)
    last = parse_time(a.get("lastRunAt"))
    head = "Analysis:    "
    if last is not None:
        head += f"last run {age(last, now)} ago"
        fails = a.get("consecutiveFailures")
        if fails:
            head += f", {fails} failed run(s) in a row"
    elif rows:
        head += "last run (kept from the rollout that ended)"
    else:
        head += "no run yet"
    lines.append(head)
    if rows:
        lines.append(
            _table(
                ["CHECK", "VALUE", "LIMIT", "SAMPLES", "VERDICT"],
                [
                    [
                        r["check"],
                        r["value"],
                        r["limit"] or f"vs {r['threshold']}",
                        r["samples"],
                        f"{_VERDICT_ICONS.get(r['verdict'], '')} {r['verdict']}",
                    ]
                    for r in rows
                ],
                indent="  ",
            )
        )
        for r in rows:
            if r["verdict"] != "pass" and r["message"]:
                lines.append(f"  {r['check']}: {_cut(r['message'], width - 4 - len(r['check']))}")
    if snap.events and events > 0:
        lines.append("Events:")
        for e in list(snap.events)[-events:]:
            when = age(e.time, now) if e.time else "-"
            lines.append(f"  {when:>6}  {e.type:<7} {e.reason:<22} {_cut(e.message, width - 40)}")
    return lines


def _cut(text: str, width: int) -> str:
    width = max(width, 20)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    out = []
    for r in cols:
        out.append(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(line.rstrip() for line in out)


def render_list(snaps: Sequence[Snapshot], now: datetime) -> str:
    rows = []
    for s in snaps:
        st = s.status
        canary_w = weights_of(st)[1]
        rows.append(
            [
                s.name,
                str(st.get("phase") or "Unknown"),
                step_text(s),
                str((st.get("stable") or {}).get("version", "-")),
                str((st.get("canary") or {}).get("version", "-")),
                f"{canary_w}%",
                _cut(str(st.get("message") or ""), 60),
            ]
        )
    return _table(["NAME", "PHASE", "STEP", "STABLE", "CANARY", "WEIGHT", "MESSAGE"], rows)


# --------------------------------------------------------------------------- history


def history_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """Every recorded outcome, oldest first, each revision numbered in order of appearance."""
    numbers: dict[str, int] = {}
    uris = _known_uris(snap.status)
    out = []
    for h in snap.status.get("history") or []:
        if not isinstance(h, Mapping):
            continue
        rev = str(h.get("revision", ""))
        numbers.setdefault(rev, len(numbers) + 1)
        out.append(
            {
                "number": numbers[rev],
                "revision": rev,
                "version": h.get("version"),
                "uri": h.get("uri") or uris.get(rev, ""),
                "outcome": h.get("outcome"),
                "at": h.get("at"),
                "reason": h.get("reason", ""),
            }
        )
    return out


def _known_uris(status: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key in ("stable", "canary"):
        rev = status.get(key) or {}
        if rev.get("id") and rev.get("uri"):
            out[str(rev["id"])] = str(rev["uri"])
    return out


def render_history(snap: Snapshot, now: datetime) -> str:
    rows = [
        [
            str(r["number"]),
            r["revision"],
            str(r["version"]),
            str(r["outcome"]),
            age(parse_time(r["at"]), now) + " ago",
            _cut(str(r["uri"]), 40),
            _cut(str(r["reason"]), 70),
        ]
        for r in history_rows(snap)
    ]
    if not rows:
        return "no history yet"
    return _table(["#", "REVISION", "VERSION", "OUTCOME", "WHEN", "URI", "REASON"], rows)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Outcome:
    done: bool
    code: int
    message: str


def rollout_outcome(snap: Snapshot) -> Outcome:
    """Has the rollout the spec asks for finished, and how (for ``mlrollout status``)?"""
    st = snap.status
    phase = str(st.get("phase") or "")
    observed = st.get("observedGeneration")
    if not st or not phase:
        return Outcome(False, EXIT_TIMEOUT, "waiting for the operator to write status")
    if snap.generation is not None and (observed is None or int(observed) < snap.generation):
        return Outcome(
            False, EXIT_TIMEOUT, f"waiting for the operator to observe generation {snap.generation}"
        )
    message = str(st.get("message") or "")
    if phase == "InvalidSpec":
        return Outcome(True, EXIT_DEGRADED, f"invalid spec: {message}")
    wanted = wanted_revision(snap.spec)
    stable = st.get("stable") or {}
    rejected = {str(r.get("revision")) for r in st.get("rejectedRevisions") or []}
    if phase == "RolledBack" and not st.get("canary") and wanted in rejected:
        return Outcome(True, EXIT_ROLLED_BACK, f"rolled back: {message}")
    if phase == "Degraded":
        return Outcome(True, EXIT_DEGRADED, f"degraded: {message}")
    if (
        phase == "Healthy"
        and not st.get("canary")
        and st.get("stableReady", True)
        and (wanted is None or stable.get("id") == wanted)
    ):
        return Outcome(True, EXIT_OK, f"healthy: {stable.get('version', '?')} serves all traffic")
    return Outcome(False, EXIT_TIMEOUT, f"{phase}: {message}")
