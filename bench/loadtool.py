"""Load generation and cost accounting shared by every benchmark.

Load comes from Debian's ``hey`` in its own process (pinned to another core where the
machine has one). Server cost is CPU seconds read from ``/proc/PID/stat`` (utime +
stime) for the server process and all its descendants, before and after a run: on a
shared 2-core machine that is far steadier than wall-clock throughput.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
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
    mean_ms: float  # hey's times come in 0.1 ms steps: means resolve small differences, p50s do not
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


@dataclass(frozen=True)
class HeyRun:
    """One hey run: latencies of the 2xx answers, throughput, and what failed."""

    times_ms: list[float]
    rps: float
    errors: int  # sent but not answered 2xx

    def quantile(self, q: float) -> float:
        if not self.times_ms:
            raise RuntimeError("no request was answered 2xx")
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parse_hey_csv(output: str, sent: int, wall_seconds: float) -> HeyRun:
    """Read hey's ``-o csv`` output (one row per request, times in 0.1 ms steps)."""
    rows = list(csv.DictReader(io.StringIO(output)))
    if rows and "response-time" not in rows[0]:
        raise RuntimeError(f"unexpected hey output:\n{output[:500]}")
    times = [
        float(r["response-time"]) * 1000 for r in rows if r.get("status-code", "").startswith("2")
    ]
    return HeyRun(
        times_ms=times,
        rps=sent / wall_seconds if wall_seconds > 0 else 0.0,
        errors=sent - len(times),
    )


def run_hey(
    url: str, body: Path, requests: int, concurrency: int, core: str | None = None
) -> HeyRun:
    """POST ``body`` to ``url``; hey sends ``requests // concurrency * concurrency`` requests."""
    cmd = [hey_path(), "-n", str(requests), "-c", str(concurrency), "-m", "POST"]
    cmd += ["-T", "application/json", "-D", str(body), "-o", "csv", url]
    start = time.perf_counter()
    done = subprocess.run(
        pinned(cmd, core), check=True, capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - start
    return parse_hey_csv(done.stdout, requests // concurrency * concurrency, wall)


def measure(
    url: str, pid: int, body: Path, requests: int, concurrency: int, core: str | None = None
) -> LoadResult:
    """Send ``requests`` POSTs of ``body`` to ``url`` and charge the server tree's CPU to them."""
    before = tree_cpu_seconds(pid)
    run = run_hey(url, body, requests, concurrency, core)
    used = tree_cpu_seconds(pid) - before
    return LoadResult(
        requests=len(run.times_ms),
        errors=run.errors,
        rps=run.rps,
        p50_ms=run.quantile(0.5),
        p99_ms=run.quantile(0.99),
        mean_ms=sum(run.times_ms) / max(1, len(run.times_ms)),
        cpu_us_per_request=used / max(1, len(run.times_ms)) * 1e6,
        rss_mb=tree_rss_mb(pid),
    )
