"""Serving benchmark: the same model and requests through every server, side by side.

Rounds alternate between servers so that machine noise lands on all of them alike;
each cell is run ``rounds`` times and reported as median with its spread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .loadtool import LoadResult, measure
from .servers import STARTERS, BenchEnv, BenchModel, Server, body, wait_post


@dataclass(frozen=True)
class Cell:
    server: str
    batch: int
    runs: list[LoadResult]

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in self.runs))

    def spread(self, field: str) -> tuple[float, float]:
        values = [getattr(r, field) for r in self.runs]
        return float(min(values)), float(max(values))

    def to_json(self) -> dict[str, object]:
        return {"server": self.server, "batch": self.batch, "runs": [asdict(r) for r in self.runs]}


def build_bench_model(out: Path, n_features: int = 20, trees: int = 100) -> BenchModel:
    """A 100-tree random forest on 20 generated features, exported with mlrollout's exporter."""
    from mlrollout.services.model.export import export_model
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    artifact = out / "bench-model"
    if not (artifact / "model.json").exists():
        X, y = make_classification(
            n_samples=4000, n_features=n_features, n_informative=10, random_state=7
        )
        forest = RandomForestClassifier(
            n_estimators=trees, max_depth=10, random_state=7, n_jobs=1
        ).fit(X, y)
        names = [f"f{i}" for i in range(n_features)]
        export_model(
            forest, X, y, artifact, name="bench", version="v1", feature_names=names, overwrite=True
        )
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    return BenchModel(
        artifact=artifact, input_name=session.get_inputs()[0].name, n_features=n_features
    )


def sample_rows(n_features: int, batch: int, seed: int = 3) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [[round(float(v), 4) for v in row] for row in rng.normal(size=(batch, n_features))]


def in_process_floor(model: BenchModel, batch: int, calls: int) -> LoadResult:
    """onnxruntime called directly: the cost no server can go below."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model.onnx), options, providers=["CPUExecutionProvider"])
    rows = np.asarray(sample_rows(model.n_features, batch), dtype=np.float32)
    feed = {model.input_name: rows}
    for _ in range(50):
        session.run(None, feed)
    latencies = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        session.run(None, feed)
        latencies.append(time.perf_counter() - t)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    ms = sorted(x * 1000 for x in latencies)
    return LoadResult(
        requests=calls,
        errors=0,
        rps=calls / wall,
        p50_ms=ms[len(ms) // 2],
        p99_ms=ms[int(len(ms) * 0.99) - 1],
        mean_ms=sum(ms) / len(ms),
        cpu_us_per_request=cpu / calls * 1e6,
        rss_mb=float("nan"),
    )


def run_serving(
    env: BenchEnv,
    servers: list[str],
    batches: list[int],
    requests: int,
    concurrency: int,
    rounds: int,
    load_core: str | None,
) -> list[Cell]:
    started: list[Server] = []
    for name in servers:
        print(f"bench: starting {name}", flush=True)
        started.append(STARTERS[name](env))
    bodies: dict[tuple[str, int], Path] = {}
    for server in started:
        for batch in batches:
            path = env.work / f"body-{server.protocol}-{batch}.json"
            path.write_bytes(
                body(env.model, server.protocol, sample_rows(env.model.n_features, batch))
            )
            bodies[(server.protocol, batch)] = path
        wait_post(server.url, bodies[(server.protocol, batches[0])].read_bytes(), server.proc)
        for batch in batches:  # warm-up: JIT-free, but caches, pools and lazy imports settle
            measure(
                server.url,
                server.proc.pid,
                bodies[(server.protocol, batch)],
                max(100, requests // 10),
                concurrency,
                load_core,
            )

    runs: dict[tuple[str, int], list[LoadResult]] = {}
    for batch in batches:
        runs[("onnxruntime in-process (floor)", batch)] = [
            in_process_floor(env.model, batch, requests) for _ in range(rounds)
        ]
    for r in range(rounds):
        for batch in batches:
            for server in started:
                result = measure(
                    server.url,
                    server.proc.pid,
                    bodies[(server.protocol, batch)],
                    requests,
                    concurrency,
                    load_core,
                )
                print(
                    f"bench: round {r + 1}/{rounds} batch {batch:>3} {server.name:<40} "
                    f"{result.cpu_us_per_request:8.0f} us CPU/req  p50 {result.p50_ms:6.2f} ms  "
                    f"p99 {result.p99_ms:6.2f} ms  {result.rps:7.0f} req/s  errors {result.errors}",
                    flush=True,
                )
                runs.setdefault((server.name, batch), []).append(result)
    for server in started:
        env.sup.stop(server.proc.name)
    return [Cell(server=name, batch=batch, runs=results) for (name, batch), results in runs.items()]
