"""``python -m mlrollout.services.bench``: run the benchmark suite and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlrollout.operator.local.procs import Supervisor

from .drift_cost import drift_cost
from .loadtool import cores, hey_path
from .report import cpu_ratios, machine, write_report
from .router_cost import router_overhead
from .servers import PEERS, BenchEnv, ensure_peer_venvs
from .serving import build_bench_model, run_serving

SECTIONS = ("serving", "router", "drift")
OURS, BARE = "mlrollout server", "starlette+onnxruntime (bare)"


def _versions() -> dict[str, str]:
    out = {}
    for dist in (
        "mlrollout",
        "bentoml",
        "onnxruntime",
        "scikit-learn",
        "aiohttp",
        "uvicorn",
        "starlette",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    med = statistics.median
    cells = {(c["server"], c["batch"]): c for c in results.get("serving", {}).get("cells", [])}
    ours, bare = cells.get((OURS, 1)), cells.get((BARE, 1))
    ratios = cpu_ratios(ours["runs"], bare["runs"]) if ours and bare else []
    if ours and ratios:
        ratio = med(ratios)
        targets.append(
            {
                "target": "model server CPU/request <= 2.5x bare app (batch 1)",
                "measured": f"{ratio:.2f}x",
                "met": ratio <= 2.5,
            }
        )
        tail = med(r["p99_ms"] / r["p50_ms"] for r in ours["runs"])
        targets.append(
            {
                "target": "model server p99 <= 3x p50 at concurrency 8 (batch 1)",
                "measured": f"{tail:.1f}x",
                "met": tail <= 3,
            }
        )
        drift = next(
            (d for d in results.get("drift", {}).get("costs", []) if d["batch"] == 1), None
        )
        if drift:
            share = drift["us_per_call"] / med(r["cpu_us_per_request"] for r in ours["runs"]) * 100
            targets.append(
                {
                    "target": "drift tracking share of request CPU (batch 1; part of the <= 10% budget with validation and metrics)",
                    "measured": f"{share:.1f}%",
                    "met": share <= 10,
                }
            )
    router = results.get("router")
    if router:
        cpu, added = med(router["router_cpu_us_per_request"]), med(router["added_p50_ms"])
        targets.append(
            {
                "target": "router adds <= 0.3 ms CPU per request",
                "measured": f"{cpu / 1000:.3f} ms",
                "met": cpu <= 300,
            }
        )
        targets.append(
            {
                "target": "router adds <= 0.5 ms p50",
                "measured": f"{added:.2f} ms",
                "met": added <= 0.5,
            }
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlrollout.services.bench", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path("docs"), help="docs folder to write benchmarks.md into"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma list of sections: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--servers", default="bare,bentoml-stock,mlrollout,mlserver,kserve")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--requests", type=int, default=4000, help="requests per cell and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--state", type=Path, default=Path(".bench"), help="peer venvs and scratch files"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny durations, no peers: checks the harness, not speed",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.servers, args.batches, args.requests, args.rounds = "bare,mlrollout", "1", 200, 1
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    hey_path()
    servers = [s for s in args.servers.split(",") if s]
    server_core, load_core = cores()
    args.state = args.state.resolve()
    args.state.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.state))
    versions = _versions()
    peers = tuple(p for p in PEERS if p in servers)
    if peers and "serving" in sections:
        versions.update(ensure_peer_venvs(args.state / "venvs", peers))
    results: dict[str, Any] = {"machine": machine(), "versions": versions, "smoke": args.smoke}
    try:
        with Supervisor(log_dir=work / "logs") as sup:
            model = build_bench_model(args.state)
            env = BenchEnv(
                sup=sup, model=model, core=server_core, work=work, venvs=args.state / "venvs"
            )
            if "serving" in sections:
                cells = run_serving(
                    env,
                    servers,
                    [int(b) for b in args.batches.split(",")],
                    args.requests,
                    args.concurrency,
                    args.rounds,
                    load_core,
                )
                results["serving"] = {
                    "config": {
                        "model": "100-tree random forest (max depth 10), 20 numeric features, exported with skl2onnx",
                        "requests": args.requests,
                        "concurrency": args.concurrency,
                        "rounds": args.rounds,
                        "load_core": load_core,
                        "server_core": server_core,
                    },
                    "cells": [c.to_json() for c in cells],
                }
            if "router" in sections:
                results["router"] = router_overhead(
                    env, args.requests, args.concurrency, args.rounds
                )
            if "drift" in sections:
                costs = drift_cost(model, rows=2_000 if args.smoke else 200_000)
                results["drift"] = {
                    "costs": [asdict(c) for c in costs],
                    "markdown": [
                        "`DriftMonitor.observe` on the bench model's profile (20 numeric features + prediction), "
                        "in-process, amortised over chunk binning and window tests; best of 3.",
                        "",
                        "| batch | us per call | us per row |",
                        "|---:|---:|---:|",
                        *[
                            f"| {c.batch} | {c.us_per_call:.2f} | {c.us_per_row:.3f} |"
                            for c in costs
                        ],
                    ],
                }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["targets"] = _targets(results)
    path = write_report(results, args.out)
    print(f"bench: wrote {path}")
    for t in results["targets"]:
        print(f"bench: {'met ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
