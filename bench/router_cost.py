"""Router overhead in front of a real mlrollout model server.

The measurement itself is the router's own side-by-side tool
(``bench.measure_router``): the same load alternately straight to the model
server and through the router, the router's CPU read around every run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlrollout.services.netutil import free_port

from bench.measure_router import measure

from .loadtool import pinned
from .servers import BenchEnv, Server, body, start_mlrollout, wait_post
from .serving import sample_rows


def start_router(env: BenchEnv, backend_base: str) -> Server:
    port = free_port()
    table = env.work / "router-table.json"
    table.write_text(
        json.dumps(
            {
                "generation": 1,
                "deployment": "bench",
                "backends": {"stable": {"url": backend_base, "version": "v1"}},
                "weights": {"stable": 100},
            }
        )
    )
    exe = str(Path(sys.executable).with_name("mlrollout"))
    argv = [exe, "router", "--table", str(table), "--host", "127.0.0.1", "--port", str(port)]
    proc = env.sup.start("router", pinned(argv, env.core))
    return Server("router", proc, f"http://127.0.0.1:{port}/predict", "instances")


def router_overhead(env: BenchEnv, requests: int, concurrency: int, rounds: int) -> dict[str, Any]:
    backend = start_mlrollout(env)
    backend_base = backend.url.rsplit("/predict", 1)[0]
    router = start_router(env, backend_base)
    data = env.work / "router-body.json"
    data.write_bytes(body(env.model, "instances", sample_rows(env.model.n_features, 1)))
    wait_post(backend.url, data.read_bytes(), backend.proc)
    wait_post(router.url, data.read_bytes(), router.proc)
    router_base = router.url.rsplit("/predict", 1)[0]
    summary = measure(
        backend_base, router_base, router.proc.pid, "/predict", data, requests, concurrency, rounds
    )
    # One request at a time: the hop's own latency. Under concurrent load on this 2-core
    # machine the router and the model server share the server core (hey has the other),
    # so the loaded figure also holds the time requests queue for that core.
    single = measure(
        backend_base,
        router_base,
        router.proc.pid,
        "/predict",
        data,
        max(200, requests // 4),
        1,
        rounds,
    )
    env.sup.stop("router")
    env.sup.stop("mlrollout")
    cpu_us = [r.router_cpu_ms_per_req * 1000 for r in summary.runs if r.target == "router"]
    direct = [r for r in summary.runs if r.target == "direct"]
    routed = [r for r in summary.runs if r.target == "router"]
    added_mean = [b.mean_ms - a.mean_ms for a, b in zip(direct, routed, strict=True)]

    def rows(result: Any, conc: int) -> list[str]:
        return [
            f"| {conc} | {r.target} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.mean_ms:.3f} | {r.rps:,.0f} | {r.errors} |"
            for r in result.runs
        ]

    markdown = [
        f"In front of the mlrollout model server, batch 1, {rounds} rounds alternating direct and routed "
        f"(`bench.measure_router`): {requests} requests per run at concurrency {concurrency}, "
        f"then {max(200, requests // 4)} at concurrency 1. The router runs on the server core beside the "
        "model server (hey has the other core), so at concurrency "
        f"{concurrency} the added latency includes queueing for that one core; at concurrency 1 it is "
        "the hop itself. In a cluster the router has its own pods. hey reports times in 0.1 ms steps, "
        "so the mean difference is given beside the p50.",
        "",
        "| concurrency | path | p50 ms | p99 ms | mean ms | req/s | errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *rows(summary, concurrency),
        *rows(single, 1),
        "",
        f"Router CPU per request: median {summary.router_cpu_ms_per_req * 1000:.0f} us "
        f"(runs: {', '.join(f'{x:.0f}' for x in cpu_us)}). Added p50: {single.added_p50_ms:+.2f} ms at "
        f"concurrency 1 (mean {single.added_mean_ms:+.3f} ms), {summary.added_p50_ms:+.2f} ms at "
        f"concurrency {concurrency} on the shared core (mean {summary.added_mean_ms:+.3f} ms).",
    ]
    return {
        "summary": asdict(summary),
        "router_cpu_us_per_request": cpu_us,
        "added_p50_ms": [summary.added_p50_ms],
        "added_mean_ms": added_mean,
        "single": asdict(single),
        "added_p50_ms_concurrency_1": single.added_p50_ms,
        "markdown": markdown,
    }
