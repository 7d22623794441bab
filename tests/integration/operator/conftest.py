"""Fixtures for the operator's end-to-end tests on 127.0.0.1.

- ``kcluster``: the real control plane (``control_plane``, tests/conftest.py: etcd,
  kube-apiserver with TLS and RBAC, controller-manager, scheduler, kwok fake nodes) with
  the CRD from crds/ installed and the scenario namespaces created; ``.kube`` is an admin
  client, ``.live()``/``.names()`` read what the server holds;
- ``cluster``: the kmock-based API emulator (``emulator.py``) in a background thread,
  kept for what a real server cannot do on demand: injected faults and request counting
  (docs/kmock.md);
- ``exporter``: a metrics endpoint impersonating model servers: tests set, per
  (namespace, deployment, version), request rate, error rate and prediction mix;
- ``prometheus``: the real Prometheus binary scraping the exporter every second;
- ``start_operator``: the real ``kopf run -m mlrollout.operator.main`` as a subprocess,
  against the real control plane.

Every process started here is stopped at teardown, also on failure. Scenario namespaces
are fixed up front because each operator watches an explicit list of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlrollout.services.netutil import free_port, wait_http

HERE = Path(__file__).parent
CRD_FILE = HERE.parents[2] / "crds" / "modeldeployment.yaml"
CRD_NAME = "modeldeployments.mlrollout.io"
VENV_BIN = Path(sys.executable).parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SHARED_NAMESPACES = ("healthy", "promote", "errors", "drift", "quiet", "invalid", "fields")
OWN_OPERATOR_NAMESPACES = ("promdown", "restart")


def _load(name: str) -> Any:
    # --import-mode=importlib puts nothing on sys.path, so load sibling modules by path.
    spec = importlib.util.spec_from_file_location(f"mlrollout_it_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


emulator = _load("emulator")
harness_module = _load("harness")
FakeModelServers = harness_module.FakeModelServers


@pytest.fixture(scope="session")
def harness() -> Any:
    """``harness.eventually``, ``harness.Traffic``, ``harness.http_text`` for the tests."""
    return harness_module


@pytest.fixture(scope="session")
def exporter() -> Iterator[FakeModelServers]:
    servers = FakeModelServers()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


# --- Prometheus --------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def prometheus(
    exporter: FakeModelServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"the Prometheus binary is required ({PROMETHEUS}); run `make system-deps`")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "models",
                        "honor_labels": True,  # keep the namespace label the fakes set
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30)
        yield Prometheus(f"http://127.0.0.1:{port}", proc)
    finally:
        _stop(proc)
        log.close()


# --- the real control plane ----------------------------------------------------------------


def _path(key: str, namespace: str) -> str:
    """``apps/v1/deployments`` (or ``v1/services``) in ``namespace`` as an API path."""
    *gv, plural = key.split("/")
    base = f"/api/{gv[0]}" if len(gv) == 1 else f"/apis/{gv[0]}/{gv[1]}"
    return f"{base}/namespaces/{namespace}/{plural}"


class RealCluster:
    """The control plane as the scenarios read it (admin client; objects being deleted
    are not live)."""

    def __init__(self, control_plane: Any) -> None:
        import kubernetes
        from mlrollout.operator.kube import Kube

        self.control_plane = control_plane
        self.kubeconfig = Path(control_plane.kubeconfig)
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=config
        )
        self.kube = Kube(config, timeout=10)

    def live(self, key: str, namespace: str) -> list[dict[str, Any]]:
        out = self.kube.request("GET", _path(key, namespace))
        kind = str(out.get("kind", "")).removesuffix("List")  # list items carry no kind
        items = [{"kind": kind, **o} for o in out.get("items") or []]
        return [o for o in items if not o["metadata"].get("deletionTimestamp")]

    def names(self, key: str, namespace: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.live(key, namespace)}

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return self.control_plane.kubectl(*args, **kw)


@pytest.fixture(scope="session")
def kcluster(control_plane: Any) -> RealCluster:
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    for ns in SHARED_NAMESPACES + OWN_OPERATOR_NAMESPACES:
        control_plane.kubectl("create", "namespace", ns, check=False)
    return RealCluster(control_plane)


# --- API emulator and operator -----------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    with emulator.EmulatorThread() as thread:
        # kopf only watches namespaces that exist; the emulator has no Namespace objects.
        thread.call(lambda e: e.namespaces.update(SHARED_NAMESPACES + OWN_OPERATOR_NAMESPACES))
        yield thread


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.process)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def kubeconfig(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": cluster.url}}],
                "users": [{"name": "test", "user": {"token": "test-token"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "test"}}],
                "current-context": "emu",
            }
        )
    )
    return path


StartOperator = Callable[..., Operator]


@pytest.fixture(scope="session")
def start_operator(kcluster: RealCluster, prometheus: Prometheus) -> Iterator[StartOperator]:
    kubeconfig = kcluster.kubeconfig
    started: list[Operator] = []
    logs = Path(tempfile.mkdtemp(prefix="mlrollout-operator-"))

    def start(namespaces: tuple[str, ...], prometheus_url: str | None = None) -> Operator:
        metrics_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MLROLLOUT_PROMETHEUS_URL": prometheus_url or prometheus.url,
            "MLROLLOUT_PROMETHEUS_TIMEOUT": "2",
            "MLROLLOUT_METRICS_PORT": str(metrics_port),
            "MLROLLOUT_API_TIMEOUT": "5",
        }
        ns_args = [arg for ns in namespaces for arg in ("--namespace", ns)]
        log_path = logs / f"operator-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "kopf"),
                    "run",
                    "--standalone",
                    "-m",
                    "mlrollout.operator.main",
                    *ns_args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        op = Operator(proc, log_path, f"http://127.0.0.1:{metrics_port}/metrics")
        started.append(op)
        try:
            wait_http(op.metrics_url, timeout=30)
        except TimeoutError:
            op.stop()
            raise AssertionError(f"operator did not start:\n{op.log()[-3000:]}") from None
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()
        if os.environ.get("MLROLLOUT_KEEP_LOGS") is None:
            shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture(scope="session")
def operator(start_operator: StartOperator) -> Operator:
    """One operator shared by the scenarios that do not stop or reconfigure it."""
    return start_operator(SHARED_NAMESPACES)
