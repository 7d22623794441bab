"""Side-by-side router overhead: the same load straight to a backend and through a proxy.

    python -m bench.measure_router [--backend URL] [--requests 5000] [--concurrency 8]

Without ``--backend`` a fake backend (``tests/doubles/router.py``) is started; without ``--router``
``mlrollout router`` is started with a one-backend table. ``hey`` sends identical
keep-alive load alternately to the backend and to the proxy for ``--rounds`` rounds, so
drift in machine load hits both sides alike. CPU per request is the proxy process's
utime+stime delta from ``/proc/PID/stat`` divided by the requests sent; latencies come
from hey's per-request CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.loadtool import run_hey, tree_cpu_seconds
from tests.doubles.router import fake_backend, router, write_table


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


def measure(
    backend_url: str, router_url: str, router_pid: int, path: str, body: Path,
    requests: int, concurrency: int, rounds: int,
) -> Summary:  # fmt: skip
    """Alternate direct and routed runs; the proxy's CPU is read around every run."""
    runs: list[Run] = []
    targets = {"direct": backend_url.rstrip("/"), "router": router_url.rstrip("/")}
    run_hey(targets["router"] + path, body, min(requests, 500), concurrency)  # warm up pools
    for _ in range(rounds):
        for name, base in targets.items():
            before = tree_cpu_seconds(router_pid)
            run = run_hey(base + path, body, requests, concurrency)
            times, rps, errors = run.times_ms, run.rps, run.errors
            cpu = (tree_cpu_seconds(router_pid) - before) * 1000 / requests
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
    if shutil.which("hey") is None:
        print("hey not found: install hey (apt-get install hey, or make install)", file=sys.stderr)
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
