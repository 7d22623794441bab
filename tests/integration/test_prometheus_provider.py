"""The Prometheus provider against a real Prometheus scraping a metrics endpoint we control,
and its error mapping against fake servers and a closed port."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlrollout.operator import queries as q
from mlrollout.operator.decide import analysis, checks
from mlrollout.operator.interfaces import ProviderError
from mlrollout.operator.model import Analysis
from mlrollout.operator.prometheus import PrometheusProvider
from mlrollout.services.netutil import free_port, wait_http
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

LABELS = ("deployment", "model", "version", "track")


def _now() -> datetime:
    return datetime.now(UTC)


class Exporter:
    """Model-server-like metrics for two versions, on an in-process HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlrollout_model_requests",
            "requests",
            [*LABELS, "endpoint", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlrollout_model_request_duration_seconds",
            "latency",
            [*LABELS, "endpoint"],
            registry=self.registry,
        )
        self.ready = Gauge("mlrollout_model_ready", "ready", LABELS, registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", self.registry)
        for version, track in (("v1", "stable"), ("v2", "canary")):
            self.ready.labels("fraud", "fraud", version, track).set(1)
            self.requests.labels("fraud", "fraud", version, track, "predict", "ok").inc(100)
            self.latency.labels("fraud", "fraud", version, track, "predict").observe(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    exp = Exporter()
    try:
        yield exp
    finally:
        exp.close()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("prom")
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: models\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
        "        labels: {namespace: team-a}\n"
    )
    port = free_port()
    log = (root / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", timeout=60)
        provider = PrometheusProvider(url)
        _eventually(lambda: len(provider.query("mlrollout_model_ready", _now())) == 2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ProviderError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout:.0f}s")


def _ctx(cfg: Analysis, canary: str) -> analysis.Context:
    return analysis.Context(
        analysis=cfg,
        deployment="fraud",
        namespace="team-a",
        stable_version="v1",
        canary_version=canary,
    )


def test_vector_samples_carry_labels_and_values(prometheus: str, exporter: Exporter) -> None:
    provider = PrometheusProvider(prometheus)
    exporter.requests.labels("fraud", "fraud", "v2", "canary", "predict", "server_error").inc(7)
    sel = q.selector("fraud", "team-a", "v2", outcome="server_error")
    promql = f"mlrollout_model_requests_total{sel}"
    _eventually(lambda: [s.value for s in provider.query(promql, _now())] == [7.0])
    (sample,) = provider.query(promql, _now())
    assert sample.labels["namespace"] == "team-a" and sample.labels["track"] == "canary"
    assert sample.timestamp == pytest.approx(time.time(), abs=30)


def test_scalar_and_freshness(prometheus: str) -> None:
    provider = PrometheusProvider(prometheus)
    (scalar,) = provider.query("vector(2) * 21", _now())
    assert scalar.value == 42.0
    cfg = Analysis.model_validate({})
    planned = checks.analysis_queries(cfg, "fraud", "team-a", "v1", "v2")
    (age,) = provider.query(planned[q.FRESHNESS], _now())
    assert 0 <= age.value < 30


def test_a_scrape_that_stops_is_stale_not_never_scraped(
    prometheus: str, exporter: Exporter
) -> None:
    # A series that leaves a scrape gets a stale marker, exactly as when the target dies:
    # the plain selector goes empty at once, which read as "never scraped" (noData) and held
    # forever, past onProviderError.maxHold.
    provider = PrometheusProvider(prometheus)
    cfg = Analysis.model_validate({"maxStaleness": "2s"})
    freshness = checks.analysis_queries(cfg, "fraud", "team-a", "v1", "v3")[q.FRESHNESS]

    def outcomes() -> set[str]:
        results = {q.FRESHNESS: provider.query(freshness, _now())}
        verdicts = analysis.evaluate(_ctx(cfg, "v3"), results)
        return {"stale" if "stale" in v.message else v.outcome for v in verdicts}

    exporter.ready.labels("fraud", "fraud", "v3", "canary").set(1)
    _eventually(lambda: len(provider.query(freshness, _now())) == 1)
    exporter.ready.remove("fraud", "fraud", "v3", "canary")
    _eventually(lambda: outcomes() == {"stale"})


def test_every_analysis_query_runs_on_real_prometheus(prometheus: str) -> None:
    provider = PrometheusProvider(prometheus)
    cfg = Analysis.model_validate(
        {
            "minSamples": 1,
            "metrics": {
                "inputDrift": {},
                "predictionDrift": {},
                "feedbackAccuracy": {},
                "custom": [{"name": "up", "query": 'up{namespace="{{namespace}}"}', "min": 1}],
            },
        }
    )
    planned = checks.analysis_queries(cfg, "fraud", "team-a", "v1", "v2")
    planned.update(q.stable_drift_queries("fraud", "team-a", "v1"))
    now = _now()
    results = {name: provider.query(promql, now) for name, promql in planned.items()}
    verdicts = {v.check: v for v in analysis.evaluate(_ctx(cfg, "v2"), results)}
    # Every query ran (no providerError); with no traffic a sequential test cannot decide yet.
    assert {v.outcome for v in verdicts.values()} <= {"pass", "noData", "inconclusive"}
    assert verdicts["up"].outcome == "pass"


def test_bad_query_is_a_provider_error(prometheus: str) -> None:
    provider = PrometheusProvider(prometheus)
    with pytest.raises(ProviderError, match="HTTP 400: bad_data"):
        provider.query("sum(", _now())
    with pytest.raises(ProviderError, match="vector or scalar"):
        provider.query("mlrollout_model_ready[1m]", _now())
    assert provider.is_online()


def test_closed_port_is_offline_and_unreachable() -> None:
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=1)
    assert not provider.is_online()
    with pytest.raises(ProviderError, match="unreachable"):
        provider.query("up", _now())


class _Fake(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b""
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        try:
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(self.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[Callable[[int, bytes, float], str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: bytes, delay: float = 0.0) -> str:
        handler = type("Handler", (_Fake,), {"status": status, "body": body, "delay": delay})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>proxy</html>", "invalid JSON"),
        (200, b'{"status":"error","errorType":"timeout","error":"query timed out"}', "timeout"),
        (503, b'{"status":"error","errorType":"unavailable","error":"starting"}', "HTTP 503"),
        (502, b"bad gateway", "bad gateway"),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"value":1}]}}',
            "malformed",
        ),
    ],
    ids=["not-json", "error-status", "503", "502-text", "malformed"],
)
def test_error_answers_map_to_provider_error(
    fake_server: Callable[[int, bytes, float], str], status: int, body: bytes, message: str
) -> None:
    provider = PrometheusProvider(fake_server(status, body, 0.0))
    with pytest.raises(ProviderError, match=message):
        provider.query("up", _now())


def test_slow_server_times_out(fake_server: Callable[[int, bytes, float], str]) -> None:
    provider = PrometheusProvider(fake_server(200, b"{}", 2.0), timeout=0.3)
    with pytest.raises(ProviderError, match=r"did not answer within 0\.3s"):
        provider.query("up", _now())


@pytest.mark.parametrize("url", ["localhost:9090", "ftp://x", "http://"])
def test_bad_url_is_rejected_early(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        PrometheusProvider(url)


def test_a_prometheus_compatible_api_without_ready_endpoint_is_online() -> None:
    # Mimir/Cortex serve the query API under a prefix and have no /-/ready there: being
    # "offline" would hold every canary forever.
    answer = b'{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}'

    class QueryOnly(_Fake):
        def do_GET(self) -> None:
            if self.path.startswith("/prometheus/api/v1/query?"):
                self.status, self.body = 200, answer
            else:
                self.status, self.body = 404, b"404 page not found"
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QueryOnly)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        provider = PrometheusProvider(f"http://127.0.0.1:{server.server_address[1]}/prometheus")
        assert provider.is_online()
        assert provider.query("vector(1)", _now())[0].value == 1.0
    finally:
        server.shutdown()
        server.server_close()
