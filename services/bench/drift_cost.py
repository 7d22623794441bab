"""Cost of streaming drift tracking: CPU per request (batch 1) and per row (large batches).

Measured in-process on the bench model's real profile, including the amortised chunk
binning and window tests, so the figure is what a server pays on average.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

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
