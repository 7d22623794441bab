"""Router overhead: the same load straight to a model server and through the router.

Both paths run alternately in the same rounds. The router's own CPU per request is its
process's utime+stime delta over the requests; added latency is the p50 difference.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlrollout.services.netutil import free_port

from .loadtool import LoadResult, measure, pinned, tree_cpu_seconds
from .servers import BenchEnv, Server, body, start_mlrollout, wait_post
from .serving import sample_rows


def start_router(env: BenchEnv, backend: Server) -> Server:
    port = free_port()
    table = env.work / "router-table.json"
    table.write_text(
        json.dumps(
            {
                "generation": 1,
                "deployment": "bench",
                "backends": {
                    "stable": {"url": backend.url.rsplit("/predict", 1)[0], "version": "v1"}
                },
                "weights": {"stable": 100},
                "stickyHeader": None,
                "shadowPercent": 0,
            }
        )
    )
    exe = str(Path(sys.executable).with_name("mlrollout"))
    argv = [exe, "router", "--table", str(table), "--host", "127.0.0.1", "--port", str(port)]
    proc = env.sup.start("router", pinned(argv, env.core))
    return Server("router", proc, f"http://127.0.0.1:{port}/predict", "instances")


def router_overhead(
    env: BenchEnv, requests: int, concurrency: int, rounds: int, load_core: str | None
) -> dict[str, Any]:
    backend = start_mlrollout(env)
    router = start_router(env, backend)
    data = env.work / "router-body.json"
    data.write_bytes(body(env.model, "instances", sample_rows(env.model.n_features, 1)))
    wait_post(backend.url, data.read_bytes(), backend.proc)
    wait_post(router.url, data.read_bytes(), router.proc)
    measure(router.url, backend.proc.pid, data, max(100, requests // 10), concurrency, load_core)
    direct: list[LoadResult] = []
    via: list[LoadResult] = []
    router_cpu: list[float] = []
    for _ in range(rounds):
        direct.append(
            measure(backend.url, backend.proc.pid, data, requests, concurrency, load_core)
        )
        before = tree_cpu_seconds(router.proc.pid)
        via.append(measure(router.url, backend.proc.pid, data, requests, concurrency, load_core))
        router_cpu.append(
            (tree_cpu_seconds(router.proc.pid) - before) / max(1, via[-1].requests) * 1e6
        )
    env.sup.stop("router")
    env.sup.stop("mlrollout")
    added = [v.p50_ms - d.p50_ms for d, v in zip(direct, via, strict=True)]
    med = statistics.median
    markdown = [
        f"In front of the mlrollout model server, batch 1, {requests} requests per run at concurrency "
        f"{concurrency}, {rounds} rounds alternating direct and routed.",
        "",
        "| path | p50 ms | p99 ms | req/s | errors |",
        "|---|---:|---:|---:|---:|",
        f"| direct | {med(r.p50_ms for r in direct):.2f} | {med(r.p99_ms for r in direct):.2f} | {med(r.rps for r in direct):,.0f} | {sum(r.errors for r in direct)} |",
        f"| through router | {med(r.p50_ms for r in via):.2f} | {med(r.p99_ms for r in via):.2f} | {med(r.rps for r in via):,.0f} | {sum(r.errors for r in via)} |",
        "",
        f"Router CPU per request: {med(router_cpu):.0f} us (runs: {', '.join(f'{x:.0f}' for x in router_cpu)}); "
        f"added p50: {med(added):.2f} ms (runs: {', '.join(f'{x:.2f}' for x in added)}).",
    ]
    return {
        "direct": [asdict(r) for r in direct],
        "routed": [asdict(r) for r in via],
        "router_cpu_us_per_request": router_cpu,
        "added_p50_ms": added,
        "markdown": markdown,
    }
