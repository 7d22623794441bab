"""Side-by-side router overhead: the same load straight to a backend and through a proxy.

    python -m mlrollout.services.router.measure [--backend URL] [--requests 5000] [--concurrency 8]

Without ``--backend`` a fake backend (``router.testing``) is started; without ``--router``
``mlrollout router`` is started with a one-backend table. ``hey`` sends identical
keep-alive load alternately to the backend and to the proxy for ``--rounds`` rounds, so
drift in machine load hits both sides alike. CPU per request is the proxy process's
utime+stime delta from ``/proc/PID/stat`` divided by the requests sent; latencies come
from hey's per-request CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .testing import fake_backend, router, write_table

HEY = "/usr/bin/hey"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    target: str  # "direct" or "router"
    p50_ms: float
    p99_ms: float
    mean_ms: float
    rps: float
    router_cpu_ms_per_req: float
    errors: int


@dataclass
class Summary:
    requests: int
    concurrency: int
    rounds: int
    direct_p50_ms: float
    router_p50_ms: float
    added_p50_ms: float
    added_mean_ms: float
    router_cpu_ms_per_req: float
    runs: list[Run]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15, after the comm field)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def hey(url: str, requests: int, concurrency: int, body: Path) -> tuple[list[float], float, int]:
    """Run hey; return (latencies in ms of 2xx answers, requests/s, failed or non-2xx count).

    hey prints per-request times in 0.1 ms steps; the mean over thousands of requests
    resolves differences well below that, the p50 does not.
    """
    cmd = [HEY, "-n", str(requests), "-c", str(concurrency), "-m", "POST", "-D", str(body)]
    cmd += ["-T", "application/json", "-o", "csv", url]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    wall = time.perf_counter() - start
    times = [
        float(row["response-time"]) * 1000
        for row in csv.DictReader(io.StringIO(out))
        if row.get("status-code", "").startswith("2")
    ]
    return times, requests / wall, requests - len(times)


def measure(
    backend_url: str, router_url: str, router_pid: int, path: str, body: Path,
    requests: int, concurrency: int, rounds: int,
) -> Summary:  # fmt: skip
    """Alternate direct and routed runs; the proxy's CPU is read around every run."""
    runs: list[Run] = []
    targets = {"direct": backend_url.rstrip("/"), "router": router_url.rstrip("/")}
    hey(targets["router"] + path, min(requests, 500), concurrency, body)  # warm up pools
    for _ in range(rounds):
        for name, base in targets.items():
            before = cpu_seconds(router_pid)
            times, rps, errors = hey(base + path, requests, concurrency, body)
            cpu = (cpu_seconds(router_pid) - before) * 1000 / requests
            if len(times) < 2:
                raise RuntimeError(f"no successful requests to {base + path}")
            q = statistics.quantiles(times, n=100)
            runs.append(Run(name, q[49], q[98], statistics.fmean(times), rps, cpu, errors))

    def median(target: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs if r.target == target)

    direct, routed = median("direct", "p50_ms"), median("router", "p50_ms")
    added_mean = median("router", "mean_ms") - median("direct", "mean_ms")
    cpu = median("router", "router_cpu_ms_per_req")
    return Summary(
        requests, concurrency, rounds, direct, routed, routed - direct, added_mean, cpu, runs
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", help="backend base URL (default: start a fake backend)")
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", default='{"instances": [[5.1, 3.5, 1.4, 0.2]]}')
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--router", help="measure this running proxy instead of starting one")
    parser.add_argument("--router-pid", type=int, help="process id of --router (for CPU)")
    args = parser.parse_args(argv)
    if not Path(HEY).exists():
        print(f"{HEY} not found: install hey (apt-get install hey)", file=sys.stderr)
        return 2
    if args.router and args.router_pid is None:
        parser.error("--router needs --router-pid")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        body = tmp / "body.json"
        body.write_text(args.body)
        url = args.backend
        if url is None:
            port, _ = stack.enter_context(fake_backend("v1"))
            url = f"http://127.0.0.1:{port}"
        router_url, pid = args.router, args.router_pid
        if router_url is None:
            table = tmp / "table.json"
            backends = {"stable": {"url": url, "version": "v1"}}
            write_table(table, {"generation": 1, "backends": backends, "weights": {"stable": 100}})
            port, proc = stack.enter_context(router(table, "--log-level", "WARNING"))
            router_url, pid = f"http://127.0.0.1:{port}", proc.pid
        summary = measure(
            url, router_url, pid, args.path, body, args.requests, args.concurrency, args.rounds
        )
    if args.json:
        print(json.dumps(asdict(summary), indent=1))
        return 0
    for r in summary.runs:
        print(
            f"{r.target:7} p50 {r.p50_ms:6.3f} ms  p99 {r.p99_ms:6.3f} ms  mean {r.mean_ms:6.3f} ms"
            f"  {r.rps:7.0f} req/s  proxy CPU {r.router_cpu_ms_per_req:.3f} ms/req"
            f"  errors {r.errors}"
        )
    print(
        f"median p50: direct {summary.direct_p50_ms:.3f} ms, router {summary.router_p50_ms:.3f} ms,"
        f" added {summary.added_p50_ms:+.3f} ms (mean {summary.added_mean_ms:+.3f} ms);"
        f" proxy CPU {summary.router_cpu_ms_per_req:.3f} ms/req"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
