"""Helpers for the operator's integration tests: fake model servers and bounded waits.

Loaded by conftest.py by path (tests run with --import-mode=importlib) and handed to the
tests as the ``harness`` fixture.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlrollout.services.metrics import LATENCY_BUCKETS
from mlrollout.services.netutil import free_port
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


@dataclass
class Traffic:
    rps: float = 50.0
    error_rate: float = 0.0
    prediction_mix: tuple[float, ...] = (0.5, 0.5)


@dataclass
class _Series:
    traffic: Traffic
    track: str
    requests_ok: float = 0.0
    requests_err: float = 0.0
    bins: list[float] = field(default_factory=list)


class FakeModelServers(Collector):
    """Counters that grow in a background thread as real model servers' would."""

    BUCKETS = LATENCY_BUCKETS  # the model server's layout (fine enough for a 1.5x gate)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grow, name="fake-models", daemon=True)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.port = free_port()

    def start(self) -> None:
        start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def set(
        self, namespace: str, deployment: str, version: str, traffic: Traffic, track: str = "stable"
    ) -> None:
        with self._lock:
            key = (namespace, deployment, version)
            if key in self._series:
                self._series[key].traffic = traffic
            else:
                self._series[key] = _Series(
                    traffic, track, bins=[0.0] * len(traffic.prediction_mix)
                )

    def _grow(self) -> None:
        step = 0.2
        while not self._stop.wait(step):
            with self._lock:
                for s in self._series.values():
                    n = s.traffic.rps * step
                    s.requests_err += n * s.traffic.error_rate
                    s.requests_ok += n * (1 - s.traffic.error_rate)
                    for i, share in enumerate(s.traffic.prediction_mix):
                        s.bins[i] += n * share

    def collect(self) -> Iterator[Any]:
        names = ["namespace", "deployment", "model", "version", "track"]
        requests = CounterMetricFamily(
            "mlrollout_model_requests", "requests", labels=[*names, "endpoint", "outcome"]
        )
        latency = HistogramMetricFamily(
            "mlrollout_model_request_duration_seconds", "latency", labels=[*names, "endpoint"]
        )
        bins = CounterMetricFamily(
            "mlrollout_prediction_bin", "predictions per bin", labels=[*names, "bin"]
        )
        ready = GaugeMetricFamily("mlrollout_model_ready", "ready", labels=names)
        with self._lock:
            for (ns, md, version), s in self._series.items():
                lv = [ns, md, md, version, s.track]
                requests.add_metric([*lv, "predict", "ok"], s.requests_ok)
                requests.add_metric([*lv, "predict", "server_error"], s.requests_err)
                total = s.requests_ok + s.requests_err
                # Every request takes ~8 ms: all of them fall in the bucket holding 0.008.
                buckets = [(str(b), 0.0 if b < 0.008 else total) for b in self.BUCKETS]
                latency.add_metric([*lv, "predict"], [*buckets, ("+Inf", total)], total * 0.008)
                for i, value in enumerate(s.bins):
                    bins.add_metric([*lv, str(i)], value)
                ready.add_metric(lv, 1.0)
        yield from (requests, latency, bins, ready)


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, IndexError, TypeError) as exc:
            last = exc
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
