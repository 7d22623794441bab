"""Cost of streaming drift tracking: CPU per request (batch 1) and per row (large batches).

Measured in-process on the bench model's real profile, including the amortised chunk
binning and window tests, so the figure is what a server pays on average.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlrollout.services.drift import DriftMonitor
from mlrollout.services.profile import load_profile

from .servers import BenchModel


@dataclass(frozen=True)
class DriftCost:
    batch: int
    rows: int
    us_per_call: float
    us_per_row: float


def drift_cost(
    model: BenchModel, batches: tuple[int, ...] = (1, 32, 256), rows: int = 200_000, repeat: int = 3
) -> list[DriftCost]:
    profile = load_profile(json.loads((model.artifact / "profile.json").read_text()))
    n_num = len(profile.numeric_names)
    rng = np.random.default_rng(11)
    results = []
    for batch in batches:
        calls = max(1, rows // batch)
        numeric = rng.normal(size=(batch, n_num))
        preds = rng.integers(0, 2, size=batch)
        best = float("inf")
        for _ in range(repeat):  # the minimum of a few repeats: least disturbed by neighbours
            monitor = DriftMonitor(profile, window=1000)
            start = time.process_time()
            for _ in range(calls):
                monitor.observe(numeric, None, preds)
            monitor.snapshot()
            best = min(best, time.process_time() - start)
        results.append(
            DriftCost(
                batch=batch,
                rows=calls * batch,
                us_per_call=best / calls * 1e6,
                us_per_row=best / (calls * batch) * 1e6,
            )
        )
    return results


@dataclass(frozen=True)
class DataplaneCost:
    calls: int
    bare_us: float  # parse JSON, run onnxruntime, write JSON: what any server must do
    dataplane_us: float  # Dataplane.predict: the same plus validation, drift and metrics

    @property
    def added_us(self) -> float:
        return self.dataplane_us - self.bare_us


def dataplane_cost(model: BenchModel, calls: int = 20_000, repeat: int = 3) -> DataplaneCost:
    """In-process CPU of mlrollout's request path beyond the unavoidable parse-predict-write.

    Both sides get the same batch-1 body; the minimum of a few repeats is taken for each, the
    figure least disturbed by other work on the machine.
    """
    import onnxruntime as ort
    import rapidjson
    from mlrollout.services.model.dataplane import Dataplane

    rng = np.random.default_rng(5)
    body = json.dumps(
        {"instances": rng.normal(size=(1, model.n_features)).round(4).tolist()}
    ).encode()
    plane = Dataplane.from_artifact(model.artifact, deployment="bench", track="stable")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model.onnx), options, providers=["CPUExecutionProvider"])

    def bare() -> bytes:
        rows = np.asarray(rapidjson.loads(body)["instances"], dtype=np.float32)
        labels, probabilities = session.run(None, {model.input_name: rows})
        return rapidjson.dumps(
            {"predictions": labels.tolist(), "probabilities": probabilities.tolist()}
        ).encode()

    def ours() -> bytes:
        return plane.predict(body, "bench").body()

    def best(fn: Any) -> float:
        for _ in range(200):
            fn()
        times = []
        for _ in range(repeat):
            start = time.process_time()
            for _ in range(calls):
                fn()
            times.append((time.process_time() - start) / calls * 1e6)
        return min(times)

    if plane.predict(body, "check").status != 200:
        raise RuntimeError("the bench model refused the bench body")
    return DataplaneCost(calls=calls, bare_us=best(bare), dataplane_us=best(ours))
