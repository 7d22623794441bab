"""A smoke run of `make bench` (tiny durations) so the harness cannot silently rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]  # bench/ runs from the checkout, as `make bench` does


# The run's own bound is the subprocess timeout (600 s); pytest's default 300 s cut it
# short on a loaded machine and left its processes behind.
@pytest.mark.timeout(660)
def test_bench_smoke_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--smoke",
        "--out",
        str(out),
        "--state",
        str(tmp_path / "state"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "bench" / "results.json").read_text())
    cells = {c["server"]: c for c in results["serving"]["cells"]}
    assert {
        "onnxruntime in-process (floor)",
        "starlette+onnxruntime (bare)",
        "mlrollout server",
    } <= set(cells)
    for cell in cells.values():
        run = cell["runs"][0]
        assert run["requests"] > 0 and run["errors"] == 0
        # Smoke runs are shorter than a few clock ticks (10 ms): CPU may read 0, never less.
        assert run["cpu_us_per_request"] >= 0
    routed = [r for r in results["router"]["summary"]["runs"] if r["target"] == "router"]
    assert routed and all(r["errors"] == 0 and r["rps"] > 0 for r in routed)
    assert all(c["us_per_call"] > 0 for c in results["drift"]["costs"])
    plane = results["controlplane"]  # skipped with the reason when not built
    assert plane.get("missing") or plane["runs"][0]["startup_seconds"] > 0
    operator = results["operator"]["result"]
    assert len(operator["burst_latency_s"]) == operator["deployments"] == 10
    assert operator["analysis"]["runs"] > 0
    trials = results["rollback"]["trials"]
    assert [t["variant"] for t in trials] == ["short", "guard"]
    assert all(t["outcome"] == "rolledBack" and t["peak_weight"] > 0 for t in trials)
    guard = results["guard"]["summary"]
    assert guard["errors"]["tripped"] == 1 and guard["agreement"]["tripped"] == 1
    assert guard["healthy"]["tripped"] == 0
    decision = results["decision"]
    policies = {r["policy"] for r in decision["rows"]}
    assert {"mlrollout (sequential)", "Flagger-like", "Argo-like"} <= policies
    assert any(t["target"].startswith("healthy canaries rolled back") for t in results["targets"])
    assert any(t["target"].startswith("operator RSS") for t in results["targets"])
    report = (out / "benchmarks.md").read_text()
    assert "SMOKE" in report and "| mlrollout server |" in report
    assert "## Operator at scale" in report and "## Rollback" in report
    assert "## Router guard and paired agreement" in report
    assert "## Decision quality" in report
    assert "## Reading these figures" in report
    assert (out / "bench" / "serving-cpu.png").stat().st_size > 1000
