"""What happened during a local run: a JSON log of every decision and a PNG plot of it.

Entries are plain data (time, phase, weights, each check's value versus threshold, the
decision's event and reason), built by the dev loop from the engine's output. Writing
JSON is pure apart from the file; the plot uses matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlrollout.operator.interfaces import Event
from mlrollout.operator.model import ModelDeploymentStatus
from mlrollout.services.osutil import write_atomic

FORMAT_VERSION = 1

# Events that get a vertical marker on the plot, with their colour.
MARKED_EVENTS = {
    "promoted": "tab:green",
    "rolled_back": "tab:red",
    "aborted": "tab:red",
    "rollout_started": "tab:blue",
}


@dataclass(frozen=True)
class CheckPoint:
    """One analysis check at one time: its value against its threshold and the verdict."""

    name: str
    value: float | None
    threshold: float | None = None
    verdict: str = ""  # e.g. pass, fail, inconclusive, error
    comparison: str = ""  # how value relates to threshold, e.g. "<=" or ">="


@dataclass(frozen=True)
class TimelineEntry:
    t: float  # unix seconds
    phase: str
    weights: Mapping[str, int]
    step: int | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    checks: Sequence[CheckPoint] = ()
    event: str | None = None  # rollout_started, step_advanced, promoted, rolled_back, ...
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["weights"] = dict(self.weights)
        doc["checks"] = [asdict(c) for c in self.checks]
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TimelineEntry:
        checks = tuple(CheckPoint(**c) for c in doc.get("checks", ()))
        fields = {k: v for k, v in doc.items() if k != "checks"}
        return cls(**fields, checks=checks)


@dataclass
class Timeline:
    deployment: str
    entries: list[TimelineEntry] = field(default_factory=list)

    def append(self, entry: TimelineEntry) -> None:
        self.entries.append(entry)

    def events(self) -> list[TimelineEntry]:
        return [e for e in self.entries if e.event]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "deployment": self.deployment,
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Timeline:
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown timeline format {doc.get('format')!r}")
        return cls(doc["deployment"], [TimelineEntry.from_json(e) for e in doc["entries"]])

    def write_json(self, path: Path) -> None:
        _atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def read_json(cls, path: Path) -> Timeline:
        return cls.from_json(json.loads(path.read_text()))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


PANELS = ("canary weight (%)", "error rate", "drift score", "latency (s)")


def panel_for(check_name: str) -> str:
    """Which plot panel a check belongs on, from its name."""
    name = check_name.lower()
    if "error" in name:
        return "error rate"
    if "drift" in name or "psi" in name:
        return "drift score"
    if "latency" in name or "duration" in name or name.startswith("p9"):
        return "latency (s)"
    return "other"


def series(entries: Iterable[TimelineEntry], t0: float) -> dict[str, dict[str, list[Any]]]:
    """Per panel, per line: x (seconds since ``t0``) and y values, ready to plot."""
    out: dict[str, dict[str, list[Any]]] = {}

    def point(panel: str, line: str, x: float, y: float | None) -> None:
        xs_ys = out.setdefault(panel, {}).setdefault(line, [[], []])
        xs_ys[0].append(x)
        xs_ys[1].append(float("nan") if y is None else y)

    seen: dict[tuple[str, str], None] = {}  # (panel, line) drawn so far, in order
    for e in entries:
        x = e.t - t0
        point(PANELS[0], "canary", x, e.weights.get("canary", 0))
        here: set[tuple[str, str]] = set()
        for c in e.checks:
            panel = panel_for(c.name)
            point(panel, c.name, x, c.value)
            here.add((panel, c.name))
            if c.threshold is not None and not is_relative(c.name):
                point(panel, f"{c.name} threshold", x, c.threshold)
                here.add((panel, f"{c.name} threshold"))
        for key in seen:
            if key not in here:
                point(*key, x, None)  # a gap: the line breaks instead of bridging it
        seen.update(dict.fromkeys(here))
    return out


# Checks judged relative to stable: their threshold (an allowed increase or decrease) is
# not on the scale of the value plotted, so no threshold line is drawn for them.
def is_relative(check_name: str) -> bool:
    return check_name.endswith("VsStable") or check_name == "feedbackAccuracy"


def _all_positive(lines: dict[str, list[Any]]) -> bool:
    values = [y for _xs, ys in lines.values() for y in ys if y == y]  # y == y drops NaN
    return bool(values) and min(values) > 0


def plot(timeline: Timeline, path: Path) -> None:
    """Write the PNG: one panel per quantity, shared time axis, events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = timeline.entries
    t0 = entries[0].t if entries else 0.0
    data = series(entries, t0)
    panels = list(PANELS) + (["other"] if "other" in data else [])
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(10, 2.2 * len(panels)))
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_ylabel(panel, fontsize=8)
        ax.grid(alpha=0.3)
        for line, (xs, ys) in sorted(data.get(panel, {}).items()):
            is_threshold = line.endswith(" threshold")
            ax.plot(
                xs,
                ys,
                linestyle="--" if is_threshold else "-",
                drawstyle="steps-post" if panel == PANELS[0] else "default",
                linewidth=1 if is_threshold else 1.6,
                marker=None if is_threshold or panel == PANELS[0] else ".",
                markersize=3,
                label=line,
            )
        if data.get(panel):
            ax.legend(fontsize=7, loc="upper left")
            if panel == "latency (s)" and _all_positive(data[panel]):
                ax.set_yscale("log")  # milliseconds next to a threshold of seconds
        for e in timeline.events():
            colour = MARKED_EVENTS.get(e.event or "")
            if colour:
                ax.axvline(e.t - t0, color=colour, alpha=0.7, linewidth=1.2)
    for e in timeline.events():
        colour = MARKED_EVENTS.get(e.event or "")
        if colour:
            label = e.event if not e.canary_version else f"{e.event} {e.canary_version}"
            axes[0].annotate(
                label,
                (e.t - t0, 100),
                fontsize=7,
                color=colour,
                rotation=90,
                va="top",
                ha="right",
            )
    axes[0].set_ylim(-5, 105)
    axes[-1].set_xlabel("seconds since start")
    fig.suptitle(f"mlrollout local run: {timeline.deployment}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- entries


def snake(reason: str) -> str:
    """``RolledBack`` -> ``rolled_back``: event reasons as timeline event names."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", reason).lower()


# When one decision has several events, the timeline marks the one that matters most.
EVENT_PRIORITY = ("rolled_back", "aborted", "promoted", "rollout_started", "superseded", "deployed")


def _event_rank(name: str) -> int:
    return EVENT_PRIORITY.index(name) if name in EVENT_PRIORITY else len(EVENT_PRIORITY)


def entry_from_status(
    status: ModelDeploymentStatus, events: tuple[Event, ...], t: float
) -> TimelineEntry:
    """A timeline entry from the reconciled status and the decision's events (pure)."""
    checks = tuple(
        CheckPoint(name=v.check, value=v.value, threshold=v.threshold, verdict=str(v.outcome))
        for v in status.analysis.verdicts
    )
    names = [snake(e.reason) for e in events]
    event = min(names, key=_event_rank) if names else None
    canary = status.canary
    return TimelineEntry(
        t=t,
        phase=str(status.phase),
        weights={"stable": status.weights.stable, "canary": status.weights.canary},
        step=status.current_step if canary else None,
        stable_version=status.stable.version if status.stable else None,
        canary_version=canary.version if canary else None,
        checks=checks if canary else (),
        event=event,
        reason="; ".join(e.message for e in events) or status.message,
    )
