"""The real operator (``kopf run -m mlrollout.operator.main``) managing many ModelDeployments.

Stand-ins, all on 127.0.0.1: the kmock-based API emulator of the operator's integration
tests (loaded by path from the checkout, in a thread of this process), fake model
servers as one Prometheus exporter, and the real Prometheus binary scraping them, so
analysis runs real PromQL. Phases:

1. burst: N ModelDeployments POSTed back to back; create-to-children latency of each;
2. paced: with N managed, a few more created one at a time (the everyday case);
3. idle: operator CPU per timer tick per deployment while all are Healthy;
4. analysis: every deployment given a canary held at one step; operator CPU per analysis
   run (runs counted from the operator's own verdict counter).

The spec's default analysis interval is used: it is also how often a Healthy deployment
is reconciled, so it sets the idle cost as much as the tick does.

Latencies come from a hook on the emulator's event log (monotonic clock when each object
was stored), so polling cadence does not blur them. The emulator's own CPU (its thread)
is reported separately so a slow emulator is not mistaken for a slow operator.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from mlrollout.operator.local.procs import ManagedProcess, Supervisor
from mlrollout.operator.model import Analysis, parse_duration
from mlrollout.operator.settings import OperatorSettings
from mlrollout.services.netutil import free_port, wait_http
from prometheus_client.parser import text_string_to_metric_families

from .loadtool import TICKS, tree_cpu_seconds, tree_rss_mb

REPO = Path(__file__).resolve().parents[1]
EMULATOR_DIR = REPO / "tests" / "integration" / "operator"
NAMESPACE = "bench"
INSTANCE = "app.kubernetes.io/instance"


@dataclass(frozen=True)
class ScaleConfig:
    deployments: int = 500
    paced: int = 20  # created one at a time once the burst is reconciled
    tick_s: float = OperatorSettings().tick_seconds  # MLROLLOUT_TICK_SECONDS, the default
    # The spec's default: a deployment is reconciled (and a canary analysed) this often;
    # the ticks in between only check that nothing is due.
    analysis_interval: str = Analysis().interval
    idle_window_s: float = 60.0
    analysis_window_s: float = 60.0
    settle_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.deployments < 1 or self.paced < 1:
            raise ValueError("the operator benchmark needs at least 1 deployment and 1 paced one")
        if min(self.tick_s, self.idle_window_s, self.analysis_window_s) <= 0:
            raise ValueError("tick and measuring windows must be > 0 seconds")
        parse_duration(self.analysis_interval)  # raises on a malformed duration


@dataclass
class ScaleResult:
    deployments: int
    burst_latency_s: list[float]
    paced_latency_s: list[float]
    rss_reconciled_mb: float
    rss_peak_mb: float
    idle: dict[str, float] = field(default_factory=dict)
    analysis: dict[str, float] = field(default_factory=dict)
    emulator_objects: int = 0
    burst_settle_s: float = 0.0


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _load(name: str) -> ModuleType:
    path = EMULATOR_DIR / f"{name}.py"
    if not path.exists():
        raise RuntimeError(
            f"the operator benchmark needs the API emulator from a source checkout ({path})"
        )
    spec = importlib.util.spec_from_file_location(f"mlrollout_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def benchmark_emulator(module: ModuleType) -> type:
    """The tests' emulator plus two things the benchmark needs (a subclass, so the tested
    request handling stays as is):

    - a clock: when every object was first stored (``added[(plural, name)] = (t, uid)``,
      ``children[owner uid] = [(plural, name, t)]``);
    - list requests served from a (resource, namespace[, instance label]) index. The
      tests' emulator scans every stored object per list; at 500 deployments (5,000+
      objects) that scan alone saturated a core and the emulator, not the operator, set
      the latencies. A real API server answers lists from an indexed watch cache.
    """

    base: type = vars(module)["Emulator"]
    Where = tuple[str, str, str]  # (group, version, plural)
    Key = tuple[Any, str | None, str]  # the emulator's object key

    class BenchEmulator(base):  # type: ignore[misc,valid-type]
        def __attrs_post_init__(self) -> None:
            super().__attrs_post_init__()
            self.added: dict[tuple[str, str], tuple[float, str]] = {}
            self.children: dict[str, list[tuple[str, str, float]]] = {}
            self.index: dict[Where, dict[str | None, dict[str, Key]]] = {}
            self.by_instance: dict[tuple[Any, ...], dict[str, Key]] = {}

        def _record(self, resource: Any, kind: str, raw: dict[str, Any]) -> None:
            super()._record(resource, kind, raw)
            if kind != "ADDED":
                return
            t, meta = time.monotonic(), raw.get("metadata", {})
            name, ns = str(meta.get("name")), meta.get("namespace")
            self.added.setdefault((str(resource.plural), name), (t, str(meta.get("uid"))))
            for ref in meta.get("ownerReferences") or []:
                self.children.setdefault(str(ref.get("uid")), []).append((resource.plural, name, t))
            where = (resource.group, resource.version, resource.plural)
            key = (resource, ns, name)
            self.index.setdefault(where, {}).setdefault(ns, {})[name] = key
            instance = (meta.get("labels") or {}).get(INSTANCE)
            if instance is not None:
                self.by_instance.setdefault((*where, ns, instance), {})[name] = key

        def objects_of(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
            """Live objects of one kind (not copies: read them on the emulator's loop)."""
            out = []
            for (_, _, p), by_ns in self.index.items():
                if p != plural:
                    continue
                for ns, keys in by_ns.items():
                    if namespace is None or ns == namespace:
                        out += [self._objects[k].raw for k in keys.values()
                                if not self._objects[k].deleted]  # fmt: skip
            return out

        def _list(self, request: Any) -> dict[str, Any]:
            res = request.resource
            selector = module.parse_selector(request.params.get("labelSelector", ""))
            where = (res.group, res.version, res.plural)
            by_ns = self.index.get(where, {})
            spaces = (
                by_ns.values() if request.namespace is None else [by_ns.get(request.namespace, {})]
            )
            instance = [v for k, op, v in selector if k == INSTANCE and op == "="]
            if instance and request.namespace is not None:
                # The operator lists one deployment's children; its builders never relabel.
                spaces = [self.by_instance.get((*where, request.namespace, instance[0]), {})]
            items = [
                obj.raw
                for keys in spaces
                for key in keys.values()
                if not (obj := self._objects[key]).deleted
                if module.matches(obj.raw.get("metadata", {}).get("labels") or {}, selector)
            ]
            return {
                "apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
                "kind": self._kind(res) + "List",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }

    return BenchEmulator


def children_done_at(emu: Any, name: str) -> float | None:
    """Monotonic time the last child appeared, once the routing ConfigMap, a Deployment
    and a Service exist; None before. Runs on the emulator's loop (thread.call)."""
    md = emu.added.get(("modeldeployments", name))
    if md is None:
        return None
    kids = emu.children.get(md[1], [])
    plurals = {p for p, _, _ in kids}
    if ("configmaps", f"{name}-routes") not in {(p, n) for p, n, _ in kids}:
        return None
    if not {"deployments", "services"} <= plurals:
        return None
    return max(t for _, _, t in kids) - md[0]


def md_body(name: str, version: str, interval: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlrollout.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": name, "version": version, "uri": f"https://models.test/{version}"},
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


def _thread_cpu_seconds(tid: int) -> float:
    raw = Path(f"/proc/self/task/{tid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


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
    """CPU of the operator, the emulator thread and Prometheus over one window."""

    def __init__(self, op: int, emu_tid: int, prom: int) -> None:
        self.pids = (op, emu_tid, prom)
        self.start = self._read()
        self.t0 = time.monotonic()

    def _read(self) -> tuple[float, float, float]:
        op, tid, prom = self.pids
        return tree_cpu_seconds(op), _thread_cpu_seconds(tid), tree_cpu_seconds(prom)

    def done(self) -> dict[str, float]:
        now = self._read()
        op, emu, prom = (b - a for a, b in zip(self.start, now, strict=True))
        return {"wall_s": time.monotonic() - self.t0, "operator_cpu_s": op,
                "emulator_cpu_s": emu, "prometheus_cpu_s": prom}  # fmt: skip


def _prometheus(sup: Supervisor, work: Path, exporter_port: int) -> tuple[ManagedProcess, str]:
    config = work / "prometheus.yml"
    scrape = {"job_name": "models", "honor_labels": True,
              "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}  # fmt: skip
    glob = {"scrape_interval": "2s", "evaluation_interval": "2s"}
    config.write_text(json.dumps({"global": glob, "scrape_configs": [scrape]}))
    port = free_port()
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]  # fmt: skip
    proc = sup.start("bench-prometheus", argv)
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
    return proc, f"http://127.0.0.1:{port}"


def _start_operator(
    sup: Supervisor, work: Path, api_url: str, prom_url: str, tick_s: float
) -> tuple[ManagedProcess, str]:
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "emu", "cluster": {"server": api_url}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "bench"}}],
        "current-context": "emu",
    }))  # fmt: skip
    metrics_port = free_port()
    env = {
        "KUBECONFIG": str(kubeconfig),
        "MLROLLOUT_PROMETHEUS_URL": prom_url,
        "MLROLLOUT_TICK_SECONDS": str(tick_s),
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


def run_operator_scale(sup: Supervisor, work: Path, config: ScaleConfig) -> ScaleResult:
    emulator, harness = _load("emulator"), _load("harness")
    # Our own copy of the module (loaded under another name): the tests' one is untouched.
    vars(emulator)["Emulator"] = benchmark_emulator(emulator)
    import kubernetes
    from mlrollout.operator.kube import Kube

    exporter = harness.FakeModelServers()
    exporter.start()
    try:
        with emulator.EmulatorThread() as cluster:
            cluster.call(lambda e: e.namespaces.add(NAMESPACE))
            prom, prom_url = _prometheus(sup, work, exporter.port)
            op, metrics_url = _start_operator(sup, work, cluster.url, prom_url, config.tick_s)
            api = kubernetes.client.Configuration()
            api.host = cluster.url
            kube = Kube(api, timeout=30)
            return _phases(config, cluster, harness, exporter, kube, op, prom, metrics_url)
    finally:
        exporter.stop()
        for name in ("bench-operator", "bench-prometheus"):
            sup.stop(name)


def _phases(
    config: ScaleConfig,
    cluster: Any,
    harness: ModuleType,
    exporter: Any,
    kube: Any,
    op: ManagedProcess,
    prom: ManagedProcess,
    metrics_url: str,
) -> ScaleResult:
    n, interval = config.deployments, config.analysis_interval
    names = [f"md-{i:04d}" for i in range(n)]
    good = harness.Traffic(rps=20.0, error_rate=0.0)
    for name in names:
        exporter.set(NAMESPACE, name, "v1", good, "stable")
    t0 = time.monotonic()
    for name in names:
        kube.create(md_body(name, "v1", interval))

    def healthy() -> int:
        return int(cluster.call(lambda e: sum(
            (o.get("status") or {}).get("phase") == "Healthy"
            for o in e.objects_of("modeldeployments", NAMESPACE))))  # fmt: skip

    _until(lambda: healthy() >= n, config.settle_timeout_s, f"{n} deployments Healthy", op)
    settle = time.monotonic() - t0
    burst = cluster.call(lambda e: [children_done_at(e, m) for m in names])
    missing = [m for m, t in zip(names, burst, strict=True) if t is None]
    if missing:
        raise RuntimeError(f"Healthy without children: {missing[:5]}")
    rss = tree_rss_mb(op.pid)

    paced: list[float] = []
    for i in range(config.paced):
        name = f"md-new-{i:03d}"
        exporter.set(NAMESPACE, name, "v1", good, "stable")
        kube.create(md_body(name, "v1", interval))
        deadline = time.monotonic() + 60
        while (done := cluster.call(lambda e, m=name: children_done_at(e, m))) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no children after 60 s")
            time.sleep(0.02)
        paced.append(done)
        time.sleep(0.5)  # let the follow-up reconciles of this one pass before the next
    total = n + config.paced
    objects = cluster.call(lambda e: len(e.added))

    emu_tid = cluster._thread.native_id
    cost = _Cost(op.pid, emu_tid, prom.pid)
    time.sleep(config.idle_window_s)
    idle = cost.done()
    ticks = idle["wall_s"] / config.tick_s * total
    idle["operator_cpu_ms_per_tick_per_md"] = idle["operator_cpu_s"] / ticks * 1000

    all_names = names + [f"md-new-{i:03d}" for i in range(config.paced)]
    for name in all_names:
        exporter.set(NAMESPACE, name, "v2", good, "canary")
        kube.merge_patch("ModelDeployment", NAMESPACE, name, {"spec": {"model": {
            "version": "v2", "uri": "https://models.test/v2"}}})  # fmt: skip

    def canaries() -> int:
        return int(cluster.call(lambda e: sum(
            ((o.get("status") or {}).get("weights") or {}).get("canary") == 10
            for o in e.objects_of("modeldeployments", NAMESPACE))))  # fmt: skip

    _until(lambda: canaries() >= total, config.settle_timeout_s, "all canaries at 10 %", op)
    # Give analysis its first full window of data, then count runs over the window.
    time.sleep(min(10.0, config.analysis_window_s / 3))
    runs0, cost = _verdict_runs(metrics_url), _Cost(op.pid, emu_tid, prom.pid)
    time.sleep(config.analysis_window_s)
    analysis = cost.done()
    runs = _verdict_runs(metrics_url) - runs0
    analysis["runs"] = runs
    analysis["runs_per_s"] = runs / analysis["wall_s"]
    analysis["operator_cpu_ms_per_run"] = analysis["operator_cpu_s"] / max(runs, 1) * 1000
    analysis["prometheus_cpu_ms_per_run"] = analysis["prometheus_cpu_s"] / max(runs, 1) * 1000
    every = max(config.tick_s, parse_duration(interval))
    analysis["wanted_runs_per_s"] = total / every
    return ScaleResult(
        deployments=n,
        burst_latency_s=[t for t in burst if t is not None],
        paced_latency_s=paced,
        rss_reconciled_mb=rss,
        rss_peak_mb=_peak_rss_mb(op.pid),
        idle=idle,
        analysis=analysis,
        emulator_objects=objects,
        burst_settle_s=settle,
    )


def markdown(r: ScaleResult, config: ScaleConfig) -> list[str]:
    def lat(v: list[float]) -> str:
        return f"{quantile(v, 0.5):.2f} / {quantile(v, 0.9):.2f} / {max(v):.2f}"

    def cpu(w: dict[str, float]) -> str:
        return (
            f"{w['operator_cpu_s']:.1f} / {w['emulator_cpu_s']:.1f} / {w['prometheus_cpu_s']:.1f}"
        )

    idle, an, n = r.idle, r.analysis, r.deployments
    total = n + config.paced
    default = " (the default)" if config.tick_s == OperatorSettings().tick_seconds else ""
    rows = [
        (f"burst: {n} created back to back, p50 / p90 / max (s)", lat(r.burst_latency_s)),
        (f"burst: until all {n} Healthy (s)", f"{r.burst_settle_s:.1f}"),
        (
            f"paced: {config.paced} more created one at a time with {n} managed, "
            "p50 / p90 / max (s)",
            lat(r.paced_latency_s),
        ),
        ("operator RSS once all reconciled (MB)", f"{r.rss_reconciled_mb:.0f}"),
        ("operator peak RSS (VmHWM, after the analysis phase) (MB)", f"{r.rss_peak_mb:.0f}"),
        (
            "idle (all Healthy): operator CPU per tick per deployment (ms)",
            f"{idle['operator_cpu_ms_per_tick_per_md']:.3f}",
        ),
        (
            "idle: operator CPU, share of one core (%)",
            f"{idle['operator_cpu_s'] / idle['wall_s'] * 100:.0f}",
        ),
        (f"idle: operator / emulator / Prometheus CPU over {idle['wall_s']:.0f} s (s)", cpu(idle)),
        (
            f"analysis ({total} canaries): operator CPU per analysis run (ms)",
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
        (f"analysis: operator / emulator / Prometheus CPU over {an['wall_s']:.0f} s (s)", cpu(an)),
    ]
    return [
        "The real operator (`kopf run -m mlrollout.operator.main`, timer "
        f"tick {config.tick_s:g} s{default}, other settings default) against the kmock-based API emulator of the "
        "integration tests, in one namespace, with list requests answered from an index "
        "(the emulator scans every object per list, which made it the bottleneck at this "
        "scale). Specs use analysis interval "
        f"{config.analysis_interval}, which is also how often a Healthy deployment is "
        "reconciled. Analysis queries go to a real Prometheus (scrape every 2 s) reading fake "
        "model-server counters (`tests/integration/operator/harness.py`), so every verdict is "
        "real PromQL. Each ModelDeployment has 10 children; the emulator held "
        f"{r.emulator_objects:,} objects at the end. Create-to-children: from the "
        "ModelDeployment being stored until the last of its children (Deployments, Services, "
        "routing ConfigMap, ...) is, clocked inside the emulator. CPU from /proc: the "
        "operator process, the emulator's thread, the Prometheus process.",
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
