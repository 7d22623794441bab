"""The real operator (``kopf run -m mlrollout.operator.main``) managing many ModelDeployments
on the real control plane of the tests (tests/cluster/controlplane.py: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok's fake nodes, so
Deployments get real status from real controllers).

Fake model servers are one Prometheus exporter and the real Prometheus binary scrapes
them, so analysis runs real PromQL. Phases:

1. burst: N ModelDeployments POSTed at once (a few client threads); create-to-children
   of each;
2. paced: with N managed, a few more created one at a time (the everyday case);
3. idle: operator CPU while all are Healthy (a Healthy deployment is reconciled once per
   analysis interval for its stable drift check; nothing runs in between);
4. analysis: every deployment given a canary held at one step; operator CPU per analysis
   run (runs counted from the operator's own verdict counter).

Clocking: the bench watches the namespace (one watch per kind, its own thread) and notes
the monotonic time each object's ADDED event arrives. Create-to-children runs from the
ModelDeployment's ADDED event to the last ADDED of the children its first reconcile
makes (router, its RBAC, public Service, PDB, the revision's Deployment and Service).
The routing ConfigMap is left out there: it waits, by design, for the revision's pods to
be Ready (kwok + the Deployment controller); create-to-routed and create-to-Healthy are
reported beside it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import urllib3
from mlrollout.operator.local.procs import ManagedProcess, Supervisor
from mlrollout.operator.model import Analysis, parse_duration
from mlrollout.services.netutil import free_port, wait_http
from prometheus_client.parser import text_string_to_metric_families

from .loadtool import tree_cpu_seconds, tree_rss_mb

REPO = Path(__file__).resolve().parents[1]
CONTROLPLANE = REPO / "tests" / "cluster" / "controlplane.py"
HARNESS = REPO / "tests" / "integration" / "operator" / "harness.py"
CRD = REPO / "crds" / "modeldeployment.yaml"
NAMESPACE = "bench"
# Made by a new ModelDeployment's first reconcile (built-in router): router Deployment,
# ServiceAccount, Role, RoleBinding, public Service, PDB, revision Deployment + Service.
FIRST_CHILDREN = 8
PODS_PER_NODE = 110
WATCHED = (
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "rolebindings"),
    ("policy/v1", "poddisruptionbudgets"),
    ("mlrollout.io/v1alpha1", "modeldeployments"),
)


@dataclass(frozen=True)
class ScaleConfig:
    deployments: int = 500
    paced: int = 20  # created one at a time once the burst is reconciled
    # The spec's default: a deployment is reconciled (and a canary analysed) this often.
    analysis_interval: str = Analysis().interval
    idle_window_s: float = 60.0
    analysis_window_s: float = 60.0
    settle_timeout_s: float = 1200.0
    canary_settle_s: float = 300.0  # then analysis is measured over the canaries at 10 %
    create_threads: int = 8  # the bench's POSTs of the burst

    def __post_init__(self) -> None:
        if self.deployments < 1 or self.paced < 1:
            raise ValueError("the operator benchmark needs at least 1 deployment and 1 paced one")
        if min(self.idle_window_s, self.analysis_window_s) <= 0:
            raise ValueError("measuring windows must be > 0 seconds")
        parse_duration(self.analysis_interval)  # raises on a malformed duration

    def nodes(self) -> int:
        """Fake nodes for every pod: 1 replica + 1 router per deployment, + 1 canary."""
        pods = 3 * (self.deployments + self.paced)
        return max(2, math.ceil(pods / PODS_PER_NODE) + 1)


@dataclass
class ScaleResult:
    deployments: int
    burst_latency_s: list[float]
    paced_latency_s: list[float]
    rss_reconciled_mb: float
    rss_peak_mb: float
    idle: dict[str, float] = field(default_factory=dict)
    analysis: dict[str, float] = field(default_factory=dict)
    objects: int = 0
    burst_settle_s: float = 0.0
    burst_create_s: float = 0.0  # how long the bench took to POST them all
    burst_routed_s: list[float] = field(default_factory=list)
    burst_healthy_s: list[float] = field(default_factory=list)
    control_plane: dict[str, Any] = field(default_factory=dict)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _load(path: Path, name: str) -> ModuleType:
    if not path.exists():
        raise RuntimeError(f"the operator benchmark needs {path} from a source checkout")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def controlplane_module() -> ModuleType:
    return sys.modules.get("mlrollout_tests_controlplane") or _load(
        CONTROLPLANE, "mlrollout_tests_controlplane"
    )


def missing_control_plane() -> list[str]:
    """What the control plane still lacks (binaries: tests/cluster/build.sh builds them)."""
    if not CONTROLPLANE.exists():
        return [str(CONTROLPLANE.relative_to(REPO))]
    return list(controlplane_module().missing_binaries())


class Clock:
    """ADDED-event arrival times of everything in the namespace, from one watch per kind."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.lock = threading.Lock()
        self.md_added: dict[str, tuple[float, str]] = {}  # name -> (t, uid)
        self.md_state: dict[str, dict[str, Any]] = {}  # name -> status
        self.kids: dict[str, dict[tuple[str, str], float]] = {}  # owner uid -> child -> t
        self.healthy_at: dict[str, float] = {}
        self.objects = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for api, plural in WATCHED:
            base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
            path = f"{base}/namespaces/{NAMESPACE}/{plural}"
            rv = self.kube.request("GET", path)["metadata"]["resourceVersion"]
            t = threading.Thread(
                target=self._watch, args=(path, plural, rv), name=f"watch-{plural}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """The watch threads are daemons blocked in reads: they end when the control
        plane stops (closing a response another thread reads can block, so we don't)."""
        self._stop.set()

    def _watch(self, path: str, plural: str, rv: str) -> None:
        kube = self.kube
        while not self._stop.is_set():
            url = f"{kube._config.host}{path}?watch=1&timeoutSeconds=3600&resourceVersion={rv}"
            try:
                resp = kube._pool.request(
                    "GET",
                    url,
                    preload_content=False,
                    timeout=urllib3.Timeout(connect=5, read=None),
                    headers={"Accept": "application/json"},
                )
            except urllib3.exceptions.HTTPError:
                time.sleep(0.5)
                continue
            buf = b""
            try:
                for chunk in resp.stream(65536):
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        # Only ADDED events of children matter (and every event of a
                        # ModelDeployment, for its phase): parsing the rest (Deployment
                        # status churn) would cost this process the CPU the control plane
                        # and the operator need.
                        if line.startswith(b'{"type":"ERROR"'):  # e.g. 410: too old
                            rv = self.kube.request("GET", path)["metadata"]["resourceVersion"]
                        elif plural == "modeldeployments" or line.startswith(b'{"type":"ADDED"'):
                            rv = self._note(plural, json.loads(line)) or rv
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def _note(self, plural: str, event: dict[str, Any]) -> str | None:
        t = time.monotonic()
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        kind = event.get("type")
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return None
        name = meta.get("name", "")
        with self.lock:
            if plural == "modeldeployments":
                if kind == "ADDED":
                    self.md_added.setdefault(name, (t, meta.get("uid", "")))
                    self.objects += 1
                status = obj.get("status") or {}
                self.md_state[name] = status
                if status.get("phase") == "Healthy":
                    self.healthy_at.setdefault(name, t)
            elif kind == "ADDED":
                self.objects += 1
                for ref in meta.get("ownerReferences") or []:
                    self.kids.setdefault(ref.get("uid", ""), {}).setdefault((plural, name), t)
        return str(meta.get("resourceVersion") or "") or None

    def _times(self, name: str) -> tuple[float, dict[tuple[str, str], float]] | None:
        md = self.md_added.get(name)
        if md is None:
            return None
        return md[0], self.kids.get(md[1], {})

    def children_s(self, name: str) -> float | None:
        """Create to the last of the first reconcile's children; None before."""
        with self.lock:
            got = self._times(name)
            if got is None:
                return None
            t0, kids = got
            first = [t for (p, n), t in kids.items() if not _after_ready(p, n, name)]
            if len(first) < FIRST_CHILDREN:
                return None
            return max(first) - t0

    def routed_s(self, name: str) -> float | None:
        with self.lock:
            got = self._times(name)
            if got is None:
                return None
            t0, kids = got
            t = kids.get(("configmaps", f"{name}-routes"))
            return None if t is None else t - t0

    def healthy_s(self, name: str) -> float | None:
        with self.lock:
            md = self.md_added.get(name)
            t = self.healthy_at.get(name)
            return None if md is None or t is None else t - md[0]

    def count(self, check: Callable[[dict[str, Any]], bool]) -> int:
        with self.lock:
            return sum(bool(check(st)) for st in self.md_state.values())


def _after_ready(plural: str, name: str, md: str) -> bool:
    """Children written only once the revision is Ready: the table and track Services."""
    return (plural, name) in {
        ("configmaps", f"{md}-routes"),
        ("services", f"{md}-stable"),
        ("services", f"{md}-canary"),
    }


def md_body(name: str, version: str, interval: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlrollout.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": name, "version": version, "uri": f"https://models.test/{version}"},
            "serving": {"replicas": 1},
            "rollout": {
                # One step held for an hour: canaries stay under analysis while measured.
                "steps": [{"weight": 10, "pause": "1h"}],
                "analysis": {
                    "interval": interval,
                    "window": "30s",
                    "minSamples": 20,
                    "maxStaleness": "1m",
                },
            },
        },
    }


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _verdict_runs(metrics_url: str) -> float:
    """Analysis runs so far: each run counts one errorRate verdict per deployment."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "mlrollout_operator_verdicts_total" and s.labels.get("check") == "errorRate"
    )


def _until(check: Callable[[], bool], timeout: float, what: str, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"operator exited ({proc.returncode}):\n{proc.log_tail(30)}")
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"operator benchmark: {what} not reached in {timeout:.0f}s")


class _Cost:
    """CPU of the operator, the control plane (all its processes) and Prometheus."""

    def __init__(self, op: int, plane: list[int], prom: int) -> None:
        self.op, self.plane, self.prom = op, plane, prom
        self.start = self._read()
        self.t0 = time.monotonic()

    def _read(self) -> tuple[float, float, float]:
        plane = sum(tree_cpu_seconds(p) for p in self.plane)
        return tree_cpu_seconds(self.op), plane, tree_cpu_seconds(self.prom)

    def done(self) -> dict[str, float]:
        now = self._read()
        op, plane, prom = (b - a for a, b in zip(self.start, now, strict=True))
        return {"wall_s": time.monotonic() - self.t0, "operator_cpu_s": op,
                "control_plane_cpu_s": plane, "prometheus_cpu_s": prom}  # fmt: skip


def _prometheus(sup: Supervisor, work: Path, exporter_port: int) -> tuple[ManagedProcess, str]:
    config = work / "prometheus.yml"
    scrape = {"job_name": "models", "honor_labels": True,
              "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}  # fmt: skip
    # 5 s: the fake servers' exposition for 520 deployments is large, and this process
    # (which also clocks the run) renders it; analysis windows are 30 s.
    glob = {"scrape_interval": "5s", "evaluation_interval": "5s"}
    config.write_text(json.dumps({"global": glob, "scrape_configs": [scrape]}))
    port = free_port()
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]  # fmt: skip
    proc = sup.start("bench-prometheus", argv)
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
    return proc, f"http://127.0.0.1:{port}"


def _start_operator(sup: Supervisor, kubeconfig: Path, prom_url: str) -> tuple[ManagedProcess, str]:
    metrics_port = free_port()
    env = {
        "KUBECONFIG": str(kubeconfig),
        "MLROLLOUT_PROMETHEUS_URL": prom_url,
        "MLROLLOUT_METRICS_PORT": str(metrics_port),
    }
    kopf = str(Path(sys.executable).with_name("kopf"))
    argv = [kopf, "run", "--standalone", "-m", "mlrollout.operator.main", "--namespace", NAMESPACE]
    proc = sup.start("bench-operator", argv, env=env)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_http(metrics_url, timeout=60)
    except TimeoutError:
        raise RuntimeError(f"operator did not start:\n{proc.log_tail(30)}") from None
    return proc, metrics_url


def _kube(kubeconfig: Path) -> Any:
    import kubernetes
    from mlrollout.operator.kube import Kube

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
    return Kube(config, timeout=30)


def run_operator_scale(sup: Supervisor, work: Path, config: ScaleConfig) -> ScaleResult:
    cpmod = controlplane_module()
    missing = cpmod.missing_binaries()
    if missing:
        raise RuntimeError(
            f"control plane not built ({', '.join(missing)} missing): run tests/cluster/build.sh"
        )
    harness = _load(HARNESS, "mlrollout_bench_harness")
    exporter = harness.FakeModelServers()
    exporter.start()
    plane = cpmod.ControlPlane(work / "control-plane", nodes=config.nodes())
    clock: Clock | None = None
    try:
        plane.start()
        plane.kubectl("apply", "-f", str(CRD))
        plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/modeldeployments.mlrollout.io",
        )  # fmt: skip
        plane.kubectl("create", "namespace", NAMESPACE)
        kube = _kube(plane.kubeconfig)
        clock = Clock(kube)
        clock.start()
        prom, prom_url = _prometheus(sup, work, exporter.port)
        op, metrics_url = _start_operator(sup, plane.kubeconfig, prom_url)
        pids = [p.popen.pid for p in plane._processes.values()]
        result = _phases(config, clock, harness, exporter, kube, op, prom, pids, metrics_url)
        result.control_plane = {
            "version": cpmod.KUBE_VERSION,
            "nodes": config.nodes(),
            "startup_s": round(plane.startup_seconds, 1),
        }
        return result
    finally:
        if clock is not None:
            clock.stop()
        exporter.stop()
        for name in ("bench-operator", "bench-prometheus"):
            sup.stop(name)
        plane.stop()


def _phases(
    config: ScaleConfig,
    clock: Clock,
    harness: ModuleType,
    exporter: Any,
    kube: Any,
    op: ManagedProcess,
    prom: ManagedProcess,
    plane_pids: list[int],
    metrics_url: str,
) -> ScaleResult:
    n, interval = config.deployments, config.analysis_interval
    names = [f"md-{i:04d}" for i in range(n)]
    good = harness.Traffic(rps=20.0, error_rate=0.0)
    for name in names:
        exporter.set(NAMESPACE, name, "v1", good, "stable")
    t0 = time.monotonic()
    with ThreadPoolExecutor(config.create_threads) as pool:
        list(pool.map(lambda m: kube.create(md_body(m, "v1", interval)), names))
    created = time.monotonic() - t0

    def healthy() -> int:
        return clock.count(lambda st: st.get("phase") == "Healthy")

    _until(lambda: healthy() >= n, config.settle_timeout_s, f"{n} deployments Healthy", op)
    settle = time.monotonic() - t0
    burst = [clock.children_s(m) for m in names]
    missing = [m for m, t in zip(names, burst, strict=True) if t is None]
    if missing:
        raise RuntimeError(f"Healthy without children: {missing[:5]}")
    routed = [clock.routed_s(m) for m in names]
    healthy_s = [clock.healthy_s(m) for m in names]
    rss = tree_rss_mb(op.pid)

    paced: list[float] = []
    for i in range(config.paced):
        name = f"md-new-{i:03d}"
        exporter.set(NAMESPACE, name, "v1", good, "stable")
        kube.create(md_body(name, "v1", interval))
        deadline = time.monotonic() + 60
        while (done := clock.children_s(name)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no children after 60 s")
            time.sleep(0.02)
        paced.append(done)
        time.sleep(0.5)  # let the follow-up reconciles of this one pass before the next
    total = n + config.paced
    _until(lambda: healthy() >= total, config.settle_timeout_s, "paced ones Healthy", op)

    cost = _Cost(op.pid, plane_pids, prom.pid)
    time.sleep(config.idle_window_s)
    idle = cost.done()
    idle["operator_core_share"] = idle["operator_cpu_s"] / idle["wall_s"]
    cycles = idle["wall_s"] / parse_duration(interval) * total
    idle["operator_cpu_ms_per_md_per_interval"] = idle["operator_cpu_s"] / cycles * 1000

    all_names = names + [f"md-new-{i:03d}" for i in range(config.paced)]
    for name in all_names:
        exporter.set(NAMESPACE, name, "v2", good, "canary")
    with ThreadPoolExecutor(config.create_threads) as pool:
        patch = {"spec": {"model": {"version": "v2", "uri": "https://models.test/v2"}}}
        list(
            pool.map(lambda m: kube.merge_patch("ModelDeployment", NAMESPACE, m, patch), all_names)
        )

    def canaries() -> int:
        return clock.count(lambda st: (st.get("weights") or {}).get("canary") == 10)

    # On a loaded machine the canaries' pods can take long to come up (the control plane
    # shares the cores); analysis is then measured over the canaries that are at 10 %.
    deadline = time.monotonic() + config.canary_settle_s
    while canaries() < total and time.monotonic() < deadline:
        if not op.alive():
            raise RuntimeError(f"operator exited ({op.returncode}):\n{op.log_tail(30)}")
        time.sleep(1.0)
    analysed = canaries()
    if analysed == 0:
        raise TimeoutError(f"no canary reached 10 % in {config.canary_settle_s:.0f}s")
    # Give analysis its first full window of data, then count runs over the window.
    time.sleep(min(10.0, config.analysis_window_s / 3))
    runs0, cost = _verdict_runs(metrics_url), _Cost(op.pid, plane_pids, prom.pid)
    time.sleep(config.analysis_window_s)
    analysis = cost.done()
    runs = _verdict_runs(metrics_url) - runs0
    analysis["runs"] = runs
    analysis["runs_per_s"] = runs / analysis["wall_s"]
    analysis["operator_cpu_ms_per_run"] = analysis["operator_cpu_s"] / max(runs, 1) * 1000
    analysis["prometheus_cpu_ms_per_run"] = analysis["prometheus_cpu_s"] / max(runs, 1) * 1000
    analysis["canaries"] = analysed
    analysis["wanted_runs_per_s"] = analysed / parse_duration(interval)
    return ScaleResult(
        deployments=n,
        burst_latency_s=[t for t in burst if t is not None],
        paced_latency_s=paced,
        rss_reconciled_mb=rss,
        rss_peak_mb=_peak_rss_mb(op.pid),
        idle=idle,
        analysis=analysis,
        objects=clock.objects,
        burst_settle_s=settle,
        burst_create_s=created,
        burst_routed_s=[t for t in routed if t is not None],
        burst_healthy_s=[t for t in healthy_s if t is not None],
    )


def markdown(r: ScaleResult, config: ScaleConfig) -> list[str]:
    def lat(v: list[float]) -> str:
        return f"{quantile(v, 0.5):.2f} / {quantile(v, 0.9):.2f} / {max(v):.2f}"

    def cpu(w: dict[str, float]) -> str:
        return (
            f"{w['operator_cpu_s']:.1f} / {w['control_plane_cpu_s']:.1f} / "
            f"{w['prometheus_cpu_s']:.1f}"
        )

    idle, an, n = r.idle, r.analysis, r.deployments
    total = n + config.paced
    cp = r.control_plane
    rows = [
        (
            f"burst: {n} created at once ({config.create_threads} client threads, all POSTed "
            f"in {r.burst_create_s:.1f} s): create to children, p50 / p90 / max (s)",
            lat(r.burst_latency_s),
        ),
        (
            "burst: create to routed (table written once pods Ready), p50 / p90 / max (s)",
            lat(r.burst_routed_s),
        ),
        ("burst: create to Healthy, p50 / p90 / max (s)", lat(r.burst_healthy_s)),
        (f"burst: until all {n} Healthy (s)", f"{r.burst_settle_s:.1f}"),
        (
            f"paced: {config.paced} more created one at a time with {n} managed, "
            "create to children p50 / p90 / max (s)",
            lat(r.paced_latency_s),
        ),
        ("operator RSS once all reconciled (MB)", f"{r.rss_reconciled_mb:.0f}"),
        ("operator peak RSS (VmHWM, after the analysis phase) (MB)", f"{r.rss_peak_mb:.0f}"),
        (
            f"idle ({total} Healthy): operator CPU, share of one core (%)",
            f"{idle['operator_core_share'] * 100:.1f}",
        ),
        (
            f"idle: operator CPU per deployment per {config.analysis_interval} interval (ms)",
            f"{idle['operator_cpu_ms_per_md_per_interval']:.2f}",
        ),
        (
            f"idle: operator / control plane / Prometheus CPU over {idle['wall_s']:.0f} s (s)",
            cpu(idle),
        ),
        (
            f"analysis ({an.get('canaries', total):.0f} of {total} canaries at 10 % when "
            "measured): operator CPU per analysis run (ms)",
            f"{an['operator_cpu_ms_per_run']:.1f}",
        ),
        (
            "analysis: Prometheus CPU per analysis run (ms)",
            f"{an['prometheus_cpu_ms_per_run']:.1f}",
        ),
        (
            "analysis: runs per second achieved / wanted",
            f"{an['runs_per_s']:.1f} / {an['wanted_runs_per_s']:.1f}",
        ),
        (
            f"analysis: operator / control plane / Prometheus CPU over {an['wall_s']:.0f} s (s)",
            cpu(an),
        ),
    ]
    return [
        "The real operator (`kopf run -m mlrollout.operator.main`, default settings, the "
        "admin kubeconfig) against the real control plane of the tests "
        f"(Kubernetes v{cp.get('version', '?')}: etcd, kube-apiserver, controller-manager, "
        f"scheduler; {cp.get('nodes', '?')} kwok fake nodes; started in "
        f"{cp.get('startup_s', float('nan')):.0f} s), all on this machine's 2 shared cores, "
        "one namespace. Each ModelDeployment runs 1 replica; its pods are made Ready by kwok, "
        "so readiness comes from the real Deployment controller. Specs use analysis interval "
        f"{config.analysis_interval}, also how often a Healthy deployment is reconciled (its "
        "stable drift check); nothing runs for it in between. Analysis queries go to a real "
        "Prometheus (scrape every 5 s) reading fake model-server counters "
        "(`tests/integration/operator/harness.py`). Times are ADDED events seen by the "
        "bench's own watches (monotonic clock). Create to children: until the last of the "
        f"{FIRST_CHILDREN} objects a new ModelDeployment's first reconcile writes; create to "
        "routed: until its routing ConfigMap, which waits for its pods to be Ready. "
        f"{r.objects:,} objects were watched. CPU from /proc: the operator process, every "
        "control-plane process (etcd, apiserver, controllers, kwok), Prometheus.",
        "",
        "| measure | value |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in rows],
    ]


def operator_section(sup: Supervisor, work: Path, config: ScaleConfig) -> dict[str, Any]:
    result = run_operator_scale(sup, work, config)
    return {
        "config": asdict(config),
        "result": asdict(result),
        "markdown": markdown(result, config),
    }
