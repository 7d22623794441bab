"""Load generation and cost accounting shared by every benchmark.

Load comes from Debian's ``hey`` in its own process (pinned to another core where the
machine has one). Server cost is CPU seconds read from ``/proc/PID/stat`` (utime +
stime) for the server process and all its descendants, before and after a run: on a
shared 2-core machine that is far steadier than wall-clock throughput.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class LoadResult:
    """One ``hey`` run against one URL, with the server tree's CPU charged to it."""

    requests: int  # answered 2xx
    errors: int  # non-2xx or failed
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    rss_mb: float


def _proc_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (ppid, CPU seconds, RSS bytes) for every live process."""
    table: dict[int, tuple[int, float, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ')'.
        fields = raw[raw.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        table[int(entry)] = (int(fields[1]), cpu, int(fields[21]) * PAGE)
    return table


def _tree(root: int, table: dict[int, tuple[int, float, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every live descendant."""
    table = _proc_table()
    return sum(table[p][1] for p in _tree(root, table))


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and its descendants, in MB (shared pages counted per process)."""
    table = _proc_table()
    return sum(table[p][2] for p in _tree(root, table)) / 1e6


def cores() -> tuple[str | None, str | None]:
    """taskset core lists for (server, load generator): separate cores when there are two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return None, None
    return str(available[0]), ",".join(str(c) for c in available[1:])


def pinned(cmd: list[str], core: str | None) -> list[str]:
    return ["taskset", "-c", core, *cmd] if core else cmd


def hey_path() -> str:
    path = shutil.which("hey")
    if path is None:
        raise RuntimeError("hey is not installed: run `make install` (apt-get install hey)")
    return path


def run_hey(url: str, body: Path, requests: int, concurrency: int, core: str | None = None) -> str:
    cmd = [hey_path(), "-n", str(requests), "-c", str(concurrency), "-m", "POST"]
    cmd += ["-T", "application/json", "-D", str(body), url]
    done = subprocess.run(
        pinned(cmd, core), check=True, capture_output=True, text=True, timeout=900
    )
    return done.stdout


@dataclass(frozen=True)
class HeyStats:
    ok: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def parse_hey(output: str, sent: int) -> HeyStats:
    """Read hey's summary: 2xx count, requests/s and the 50th/99th latency percentiles.

    ``sent`` is what hey was asked for; hey sends ``requests // concurrency * concurrency``.
    On runs too short for a 99th percentile, hey prints none: the slowest request stands in.
    """

    def number(pattern: str) -> float:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"unexpected hey output (no {pattern!r}):\n{output[-1500:]}")
        return float(match.group(1))

    ok = sum(int(n) for n in re.findall(r"\[2\d\d\]\s+(\d+) responses", output))
    return HeyStats(
        ok=ok,
        errors=sent - ok,
        rps=number(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=number(r"^\s*50%+ in ([\d.]+) secs") * 1000,
        p99_ms=_p99(output, number) * 1000,
    )


def _p99(output: str, number: Callable[[str], float]) -> float:
    if re.search(r"^\s*99% in [\d.]+ secs", output, re.MULTILINE):
        return number(r"^\s*99% in ([\d.]+) secs")
    return number(r"Slowest:\s+([\d.]+) secs")


def measure(
    url: str, pid: int, body: Path, requests: int, concurrency: int, core: str | None = None
) -> LoadResult:
    """Send ``requests`` POSTs of ``body`` to ``url`` and charge the server tree's CPU to them."""
    before = tree_cpu_seconds(pid)
    sent = requests // concurrency * concurrency
    stats = parse_hey(run_hey(url, body, requests, concurrency, core), sent)
    used = tree_cpu_seconds(pid) - before
    return LoadResult(
        requests=stats.ok,
        errors=stats.errors,
        rps=stats.rps,
        p50_ms=stats.p50_ms,
        p99_ms=stats.p99_ms,
        cpu_us_per_request=used / max(1, stats.ok) * 1e6,
        rss_mb=tree_rss_mb(pid),
    )
