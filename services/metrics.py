"""Model-server Prometheus metrics (names and labels: docs/architecture.md, docs/metrics.md).

The hot path only bumps plain integers and one numpy vector under a lock; the series are
built at scrape time by a custom collector. Each server owns its registry, so two servers
in one process (tests) or on one host never mix their numbers. ``DriftCollector`` exposes
a ``drift.DriftMonitor`` the same way (the drift statistics themselves are pure). The
names come from ``metric_names``, which the operator's queries read too.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from mlrollout.services import metric_names as n
from mlrollout.services.drift import DriftMonitor, DriftSnapshot
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

# Eight buckets per doubling (edges 1.09x apart, 0.1 ms to 10 s): the operator bounds a
# latency quantile between bucket edges, and the bounds of both versions must fit inside
# the ratio it gates on (maxRatio 1.5 leaves room for about two buckets either side).
LATENCY_BUCKETS: tuple[float, ...] = (
    *(float(f"{0.0001 * 2 ** (k / 8):.3g}") for k in range(133)),
    10.0,
)
ENDPOINTS: tuple[str, ...] = ("predict", "infer", "feedback")
OUTCOMES: tuple[str, ...] = ("ok", "client_error", "server_error")
FEEDBACK_OUTCOMES: tuple[str, ...] = ("correct", "incorrect", "unmatched")
LABEL_NAMES: tuple[str, ...] = n.LABELS
# Requests refused by the HTTP guard before any endpoint saw them (services/server/guard.py).
HTTP_REFUSAL_REASONS: tuple[str, ...] = ("header_too_large", "header_timeout", "upgrade", "connect")


@dataclass(frozen=True)
class ServerLabels:
    """The labels every model-server series carries (``L`` in docs/architecture.md)."""

    deployment: str
    model: str
    version: str
    track: str

    def values(self) -> list[str]:
        return [self.deployment, self.model, self.version, self.track]

    def as_dict(self) -> dict[str, str]:
        return dict(zip(LABEL_NAMES, self.values(), strict=True))


class ServerMetrics:
    """Counters for one model server; ``render()`` gives the exposition text."""

    def __init__(
        self,
        labels: ServerLabels,
        *,
        reasons: Sequence[str],
        classes: Sequence[str] = (),
        sha256: str = "",
    ) -> None:
        self.labels = labels
        self.sha256 = sha256
        self._reasons = tuple(reasons)
        self._reason_index = {r: i for i, r in enumerate(self._reasons)}
        self._classes = tuple(str(c) for c in classes)
        self._endpoint_index = {e: i for i, e in enumerate(ENDPOINTS)}
        self._outcome_index = {o: i for i, o in enumerate(OUTCOMES)}
        self._lock = threading.Lock()
        n_e = len(ENDPOINTS)
        self._requests = [[0] * len(OUTCOMES) for _ in range(n_e)]
        # Per-bucket (not cumulative) counts; the extra slot is +Inf.
        self._buckets = [[0] * (len(LATENCY_BUCKETS) + 1) for _ in range(n_e)]
        self._duration_sum = [0.0] * n_e
        self._rows = 0
        self._violations = [0] * len(self._reasons)
        self._predictions = np.zeros(len(self._classes), dtype=np.int64)
        self._feedback = [0] * len(FEEDBACK_OUTCOMES)
        # Regressors: rows scored, sum of |error|, sum of error^2 (MAE and RMSE over any range).
        self._regression = [0, 0.0, 0.0]
        self._http_refusals = dict.fromkeys(HTTP_REFUSAL_REASONS, 0)
        # Bytes the feedback store holds and may hold (set by the dataplane).
        self.feedback_store_bytes: Callable[[], tuple[int, int]] | None = None
        self._ready = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ServerCollector(self))

    def observe_request(self, endpoint: str, outcome: str, seconds: float, rows: int = 0) -> None:
        e = self._endpoint_index[endpoint]
        o = self._outcome_index[outcome]
        b = bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self._requests[e][o] += 1
            self._buckets[e][b] += 1
            self._duration_sum[e] += seconds
            self._rows += rows

    def count_violation(self, reason: str) -> None:
        i = self._reason_index[reason]
        with self._lock:
            self._violations[i] += 1

    def count_predictions(self, class_indices: np.ndarray) -> None:
        """Add a batch of predicted class indices (one numpy call, not one per row)."""
        if not self._classes:
            return
        counts = np.bincount(class_indices, minlength=len(self._classes))
        with self._lock:
            self._predictions += counts[: len(self._classes)]

    def count_http_refusal(self, reason: str) -> None:
        with self._lock:
            self._http_refusals[reason] += 1

    def count_feedback(self, correct: int, incorrect: int, unmatched: int) -> None:
        with self._lock:
            self._feedback[0] += correct
            self._feedback[1] += incorrect
            self._feedback[2] += unmatched

    def count_regression_errors(self, errors: Sequence[float]) -> None:
        """Delayed ground truth for a regressor: ``truth - prediction`` per scored row."""
        with self._lock:
            self._regression[0] += len(errors)
            self._regression[1] += sum(abs(e) for e in errors)
            self._regression[2] += sum(e * e for e in errors)

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def register(self, collector: Collector) -> None:
        """Add another collector (the drift collector) to this server's registry."""
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def snapshot(self) -> dict[str, object]:
        """A consistent copy of the raw counts (for tests and debugging)."""
        with self._lock:
            return {
                "requests": {
                    (e, o): self._requests[i][j]
                    for i, e in enumerate(ENDPOINTS)
                    for j, o in enumerate(OUTCOMES)
                },
                "rows": self._rows,
                "violations": dict(zip(self._reasons, self._violations, strict=True)),
                "predictions": dict(zip(self._classes, self._predictions.tolist(), strict=True)),
                "feedback": dict(zip(FEEDBACK_OUTCOMES, self._feedback, strict=True)),
            }


class _ServerCollector(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        base = m.labels.values()
        names = list(LABEL_NAMES)
        with m._lock:
            requests = [row[:] for row in m._requests]
            buckets = [row[:] for row in m._buckets]
            sums = m._duration_sum[:]
            rows = m._rows
            violations = m._violations[:]
            predictions = m._predictions.tolist()
            feedback = m._feedback[:]
            regression = m._regression[:]
            refusals = dict(m._http_refusals)

        req = CounterMetricFamily(
            n.MODEL_REQUESTS,
            "Model-server requests by endpoint and outcome.",
            labels=[*names, "endpoint", "outcome"],
        )
        dur = HistogramMetricFamily(
            n.MODEL_REQUEST_DURATION,
            "Time spent handling a request inside the dataplane, in seconds.",
            labels=[*names, "endpoint"],
        )
        for i, endpoint in enumerate(ENDPOINTS):
            for j, outcome in enumerate(OUTCOMES):
                req.add_metric([*base, endpoint, outcome], requests[i][j])
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets[i], strict=True):
                running += count
                cumulative.append((_le(bound), running))
            dur.add_metric([*base, endpoint], cumulative, sum_value=sums[i])
        yield req
        yield dur

        rows_family = CounterMetricFamily(n.MODEL_ROWS, "Rows predicted.", labels=names)
        rows_family.add_metric(base, rows)
        yield rows_family

        viol = CounterMetricFamily(
            n.MODEL_INPUT_VIOLATIONS,
            "Rejected requests by validation rule.",
            labels=[*names, "reason"],
        )
        for reason, count in zip(m._reasons, violations, strict=True):
            viol.add_metric([*base, reason], count)
        yield viol

        refused = CounterMetricFamily(
            n.MODEL_HTTP_REFUSALS,
            "Requests refused before reaching an endpoint (header size or time, upgrades).",
            labels=[*names, "reason"],
        )
        for reason, count in refusals.items():
            refused.add_metric([*base, reason], count)
        yield refused

        if m.feedback_store_bytes is not None:
            used, capacity = m.feedback_store_bytes()
            store = GaugeMetricFamily(
                n.FEEDBACK_STORE_BYTES,
                f"Bytes of predictions kept for feedback (bound: {n.FEEDBACK_STORE_CAPACITY_BYTES}).",
                labels=names,
            )
            store.add_metric(base, used)
            yield store
            cap = GaugeMetricFamily(
                n.FEEDBACK_STORE_CAPACITY_BYTES,
                "The feedback store's byte bound (--feedback-bytes).",
                labels=names,
            )
            cap.add_metric(base, capacity)
            yield cap

        if m._classes:
            pred = CounterMetricFamily(
                n.MODEL_PREDICTIONS,
                "Predicted class counts.",
                labels=[*names, "class"],
            )
            for cls, count in zip(m._classes, predictions, strict=True):
                pred.add_metric([*base, cls], count)
            yield pred

        ready = GaugeMetricFamily(
            n.MODEL_READY, "1 once the model is loaded and warmed up.", labels=names
        )
        ready.add_metric(base, 1.0 if m._ready else 0.0)
        yield ready

        info = GaugeMetricFamily(
            n.MODEL_INFO, "The served model; always 1.", labels=[*names, "sha256"]
        )
        info.add_metric([*base, m.sha256], 1.0)
        yield info

        fb = CounterMetricFamily(
            n.FEEDBACK,
            "Delayed ground truth matched against earlier predictions.",
            labels=[*names, "outcome"],
        )
        for outcome, count in zip(FEEDBACK_OUTCOMES, feedback, strict=True):
            fb.add_metric([*base, outcome], count)
        yield fb

        if not m._classes:  # regressors: online error from delayed ground truth
            for name, total, what in (
                (n.FEEDBACK_ABS_ERROR, regression[1], "Absolute error"),
                (n.FEEDBACK_SQUARED_ERROR, regression[2], "Squared error"),
            ):
                family = SummaryMetricFamily(
                    name, f"{what} of scored predictions (truth - prediction).", labels=names
                )
                family.add_metric(base, count_value=int(regression[0]), sum_value=total)
                yield family


class DriftCollector:
    """A prometheus_client custom collector exposing a DriftMonitor (docs/architecture.md).

    Window gauges (psi, statistic) have no sample until the first window completes;
    alarms read 0 until then.
    """

    def __init__(self, monitor: DriftMonitor, labels: Mapping[str, str]) -> None:
        if set(labels) != set(LABEL_NAMES):
            raise ValueError(f"labels: need exactly {LABEL_NAMES}, got {sorted(labels)}")
        self._monitor = monitor
        self._values = [str(labels[k]) for k in LABEL_NAMES]

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._monitor.snapshot())

    def _families(self, snap: DriftSnapshot | None) -> Iterator[Metric]:
        base, lv = list(LABEL_NAMES), self._values
        bins = CounterMetricFamily(
            n.DRIFT_BIN,
            "Feature values per profile bin.",
            labels=[*base, "feature", "bin"],
        )
        fpsi = GaugeMetricFamily(
            n.DRIFT_PSI, "PSI of the last complete window vs profile.",
            labels=[*base, "feature"],
        )  # fmt: skip
        fstat = GaugeMetricFamily(
            n.DRIFT_STATISTIC, "G-test statistic of the last complete window.",
            labels=[*base, "feature"],
        )  # fmt: skip
        falarm = GaugeMetricFamily(
            n.DRIFT_ALARM, "1 if the last complete window alarmed.",
            labels=[*base, "feature"],
        )  # fmt: skip
        windows = CounterMetricFamily(n.DRIFT_WINDOWS, "Completed drift windows.", labels=base)
        pbins = CounterMetricFamily(
            n.PREDICTION_BIN, "Predictions per profile bin.", labels=[*base, "bin"]
        )
        ppsi = GaugeMetricFamily(
            n.PREDICTION_PSI, "Prediction PSI of the last window vs profile.",
            labels=base,
        )  # fmt: skip
        palarm = GaugeMetricFamily(
            n.PREDICTION_DRIFT_ALARM, "1 if the last prediction window alarmed.",
            labels=base,
        )  # fmt: skip
        if snap is not None:
            for f in snap.features:
                for b, c in enumerate(f.bin_counts):
                    bins.add_metric([*lv, f.name, str(b)], c)
                if f.psi is not None:
                    fpsi.add_metric([*lv, f.name], f.psi)
                if f.statistic is not None:
                    fstat.add_metric([*lv, f.name], f.statistic)
                falarm.add_metric([*lv, f.name], float(f.alarm))
            windows.add_metric(lv, snap.windows)
            for b, c in enumerate(snap.prediction.bin_counts):
                pbins.add_metric([*lv, str(b)], c)
            if snap.prediction.psi is not None:
                ppsi.add_metric(lv, snap.prediction.psi)
            palarm.add_metric(lv, float(snap.prediction.alarm))
        yield from (bins, fpsi, fstat, falarm, windows, pbins, ppsi, palarm)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
