"""Live terminal progress for local mode.

``render`` is pure: a timeline entry in, lines of text out. ``LiveDisplay`` redraws those
lines in place on a terminal, and on a pipe or log file prints a line only when something a
reader cares about changed (phase, step, weights, a verdict), so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from mlrollout.operator.ctl.limits import format_value
from mlrollout.operator.local.timeline import CheckPoint, TimelineEntry

_COLOURS = {"pass": "32", "fail": "31", "noData": "33", "providerError": "35"}


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) < 0.001 or abs(value) >= 10_000):
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def _paint(text: str, verdict: str, colour: bool) -> str:
    code = _COLOURS.get(verdict)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def render_check(check: CheckPoint, colour: bool = False, limit_text: str = "") -> str:
    """One check: value (with its unit), the limit as the spec wrote it, the verdict.

    Without the spec's wording, the verdict's threshold is shown as it is.
    """
    if limit_text:
        value = format_value(check.name, check.value)
        limit = f" {limit_text}"
    else:
        value = _num(check.value)
        limit = ""
        if check.threshold is not None:
            limit = f" {check.comparison or 'vs'} {_num(check.threshold)}"
    return (
        f"  {check.name:<18} {value:>10}{limit:<40} {_paint(check.verdict, check.verdict, colour)}"
    )


def render_weights(entry: TimelineEntry) -> str:
    stable = f"stable {entry.stable_version or '-'} {entry.weights.get('stable', 0)}%"
    if entry.canary_version is None:
        return stable
    return f"{stable} | canary {entry.canary_version} {entry.weights.get('canary', 0)}%"


def render(
    entry: TimelineEntry,
    deployment: str,
    total_steps: int | None = None,
    colour: bool = False,
    width: int = 160,
    limits: Mapping[str, str] | None = None,
) -> list[str]:
    """The progress block for one decision; ``limits``: check -> limits as the spec wrote."""
    step = ""
    if entry.canary_version is not None and entry.step is not None:
        step = f"  step {entry.step + 1}" + (f"/{total_steps}" if total_steps else "")
    lines = [f"{deployment}  {entry.phase}{step}  {render_weights(entry)}"]
    lines.extend(render_check(c, colour, (limits or {}).get(c.name, "")) for c in entry.checks)
    if entry.reason:
        reason = entry.reason if len(entry.reason) <= width else entry.reason[: width - 3] + "..."
        lines.append(f"  {reason}")
    return lines


def change_key(entry: TimelineEntry) -> tuple[object, ...]:
    """What must change for a non-terminal display to print again."""
    verdicts = tuple((c.name, c.verdict) for c in entry.checks)
    # Events are printed as notes; phase, step and weights change with every one that matters.
    return (entry.phase, entry.step, tuple(sorted(entry.weights.items())), verdicts)


class LiveDisplay:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._drawn = 0
        self._last_key: tuple[object, ...] | None = None

    def note(self, text: str) -> None:
        """A permanent line (an event, a warning), kept above the live block."""
        self._clear()
        self.stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            # Cursor up to the block's first line, then erase to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def show(self, entry: TimelineEntry, lines: Sequence[str]) -> None:
        if self.tty:
            self._clear()
            self.stream.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            key = change_key(entry)
            if key == self._last_key:
                return
            self._last_key = key
            stamp = time.strftime("%H:%M:%S")
            self.stream.write("".join(f"{stamp} {line}\n" for line in lines))
        self.stream.flush()
