"""The test control plane: what its one-time build cost, how long it takes to start, and
what it costs while idle.

- Cold build: the record ``tests/cluster/build.sh`` writes next to the binaries
  (``build.json``: seconds per binary, Go version, cores, load average at start and end).
  Measured when the cache was filled, not here: a cold rebuild takes the machine's two
  cores for twenty minutes or more.
- Start-up: ``ControlPlane.start()`` to ready (API server ready, kwok nodes Ready, the
  default ServiceAccount made), over fresh control planes started one after another.
- Idle: CPU (% of one core, utime+stime from /proc) and RSS of each component over a
  window right after start-up, nothing applied.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _controlplane() -> Any:
    name = "mlrollout_tests_controlplane"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "tests" / "cluster" / "controlplane.py"
        )
        assert spec is not None and spec.loader is not None
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def measure(starts: int = 3, idle_s: float = 30.0) -> dict[str, Any]:
    cpm = _controlplane()
    missing = cpm.missing_binaries()
    if missing:
        return {"missing": missing}
    runs: list[dict[str, float]] = []
    idle: dict[str, Any] = {}
    for i in range(starts):
        with cpm.ControlPlane() as cp:
            runs.append({"startup_seconds": round(cp.startup_seconds, 2), **cp.timings})
            if i == 0 and idle_s > 0:
                idle = cp.idle_usage(idle_s)
    record = cpm.BIN_DIR.parent / "build.json"
    build = json.loads(record.read_text()) if record.is_file() else None
    return {
        "kube_version": cpm.KUBE_VERSION,
        "runs": runs,
        "idle": idle,
        "idle_s": idle_s,
        "build": build,
    }


def markdown(result: dict[str, Any]) -> list[str]:
    if "missing" in result:
        return [
            f"Not measured: the control plane is not built ({', '.join(result['missing'])} "
            "missing); `make kube-bins` builds it."
        ]
    lines = [
        f"Kubernetes v{result['kube_version']} built from source (`tests/cluster/build.sh`), "
        "started by `tests/cluster/controlplane.py` on 127.0.0.1: etcd, kube-apiserver (TLS, "
        "RBAC), kube-controller-manager, kube-scheduler, kwok with 2 fake nodes.",
        "",
    ]
    build = result.get("build")
    if build:
        secs = build["seconds"]
        parts = ", ".join(f"{k} {v} s" for k, v in secs.items() if k != "total")
        kind = "cold build" if build.get("complete") else "partial rebuild"
        load = (
            f"load average {build['loadavg_start']} at start / {build['loadavg_end']} at end"
            if build.get("loadavg_start") is not None
            else "load average not recorded"
        )
        lines += [
            f"- Build ({kind}, {build['date']}, {build['go']}, {build['cores']} cores, {load}): "
            f"**{secs['total']} s** in all ({parts}). Paid once per machine: the binaries "
            "are cached under `~/.cache/mlrollout/kube/`."
            + (f" Note: {build['source']}." if build.get("source") else ""),
        ]
    else:
        lines += ["- Build: no `build.json` record next to the cached binaries."]
    totals = [r["startup_seconds"] for r in result["runs"]]
    api = [r["kube-apiserver ready"] for r in result["runs"]]
    lines += [
        f"- Start-up to ready, {len(totals)} fresh starts: median **{statistics.median(totals):.1f} s**"
        f" (min {min(totals):.1f}, max {max(totals):.1f}); kube-apiserver ready after "
        f"{statistics.median(api):.1f} s (median).",
    ]
    idle = result.get("idle")
    if idle:
        cpu = sum(v["cpu_percent"] for v in idle.values())
        rss = sum(v["rss_mb"] for v in idle.values())
        lines += [
            f"- Idle over {result['idle_s']:.0f} s: {cpu:.1f}% of one core and {rss} MB RSS in "
            "all.",
            "",
            "| component | CPU % of one core | RSS MB |",
            "|---|---:|---:|",
            *(f"| {k} | {v['cpu_percent']} | {v['rss_mb']} |" for k, v in idle.items()),
        ]
    return lines


def section(smoke: bool = False) -> dict[str, Any]:
    result = measure(starts=1 if smoke else 3, idle_s=3.0 if smoke else 30.0)
    return {**result, "markdown": markdown(result)}


if __name__ == "__main__":
    print("\n".join(section(smoke="--smoke" in sys.argv)["markdown"]))
