"""The local Prometheus launcher against a real Prometheus and a tiny in-process exporter."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlrollout.operator.local.procs import Supervisor
from mlrollout.operator.local.prom import LocalPrometheus, ScrapeTarget, find_prometheus
from mlrollout.services.netutil import free_port
from prometheus_client import CollectorRegistry, Counter, start_http_server

pytestmark = pytest.mark.integration


def _query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]["result"]


def _wait_for_series(base: str, promql: str, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _query(base, promql)
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"no series for {promql} within {timeout}s")


@pytest.fixture
def exporter() -> Iterator[tuple[int, Counter]]:
    registry = CollectorRegistry()
    counter = Counter("demo_hits", "hits", ["deployment"], registry=registry)
    counter.labels(deployment="fraud").inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port, counter
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_scrapes_with_target_labels_and_reloads(tmp_path: Path, exporter) -> None:
    find_prometheus()  # the suite documents apt-get install prometheus; fail loudly if absent
    port, _counter = exporter
    with Supervisor(tmp_path / "logs") as sup:
        prom = LocalPrometheus(sup, interval_s=1.0, workdir=tmp_path / "prom")
        prom.start([])
        assert prom.process is not None and prom.process.alive()

        target = ScrapeTarget(f"127.0.0.1:{port}", {"namespace": "local", "deployment": "other"})
        assert prom.set_targets([target]) is True
        assert prom.set_targets([target]) is False  # unchanged: no reload

        series = _wait_for_series(prom.url, "demo_hits_total")
        labels = series[0]["metric"]
        assert labels["namespace"] == "local"  # added by the target
        assert labels["deployment"] == "fraud"  # the exporter's own label wins (honor_labels)
        assert float(series[0]["value"][1]) == 3.0

        prom.stop()
        assert sup.get("prometheus") is None
