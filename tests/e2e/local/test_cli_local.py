"""The rollout CLI against a real local run, and `mlrollout dev` for scripts (issue 13).

`dev --until-decided` runs real processes (Prometheus, router, model servers); the CLI
(`mlrollout get|status|history|promote`) finds the run in the working directory and
steers it by editing the ModelDeployment file, as a user would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlrollout.operator.rundir import RunLock

from tests.doubles.local import FAST_ANALYSIS, kill_tree, manifest_doc, write_manifest

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "mlrollout.services.cli"]


def run_cli(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def good_file(tmp_path: Path) -> Path:
    (tmp_path / "v1").mkdir(exist_ok=True)
    path = tmp_path / "fraud.yaml"
    write_manifest(path, manifest_doc("v1", Path("./v1")))
    return path


def test_a_second_dev_on_the_same_run_dir_is_refused_and_starts_nothing(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    run_dir = tmp_path / ".mlrollout" / "fraud"
    with RunLock(run_dir):  # as a first `mlrollout dev` holds it
        out = run_cli(tmp_path, "dev", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "another mlrollout dev" in out.stderr and str(run_dir) in out.stderr
    assert not (run_dir / "logs").exists() and not (run_dir / "run.json").exists()


def test_a_busy_router_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = run_cli(tmp_path, "dev", str(path), "--router-port", str(port))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--router-port {port} is in use" in out.stderr
    assert not (tmp_path / ".mlrollout").exists()  # no run dir: nothing was started


def _wait(what: str, check: Any, timeout: float, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s (dev exit {proc.poll()})")


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "state.json").read_text()).get("status") or {}
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_dev_until_decided_with_the_cli_steering_a_local_run(
    tmp_path: Path, examples: Path, prometheus_bin: str
) -> None:
    path = tmp_path / "fraud.yaml"
    run_dir = tmp_path / ".mlrollout" / "fraud"
    dev = [*CLI, "dev", str(path), "--poll", "0.5", "--prometheus-bin", prometheus_bin]
    write_manifest(path, manifest_doc("v1", examples / "v1"))

    # 1. First deployment: decided (healthy) -> exit 0, with run.json left for scripts.
    first = subprocess.run(
        [*dev, "--until-decided", "--max-duration", "180"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "decided: healthy: v1 serves all traffic" in first.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["running"] is False and run["file"] == str(path.resolve())

    # Resuming the same file: the saved stable restarts and is waited for, so the run is
    # still decided healthy (issue 13: every resume printed `Warning: StableNotReady`,
    # and the first decision saw a Degraded stable).
    again = subprocess.run(
        [*dev, "--until-decided", "--max-duration", "180"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "StableNotReady" not in again.stdout and "Degraded" not in again.stdout

    # 2. A canary with a manual pause: dev resumes (no false StableNotReady), the CLI
    #    sees it, promotes it by editing the file; dev exits 0 once it is promoted.
    steps = [{"weight": 50, "pause": "manual"}]
    write_manifest(path, manifest_doc("v2", examples / "v2", steps=steps, analysis=FAST_ANALYSIS))
    out = (tmp_path / "dev.out").open("wb")
    proc = subprocess.Popen(
        [*dev, "--until-decided", "--max-duration", "300"], stdout=out, stderr=subprocess.STDOUT
    )
    loadgen = None
    try:
        run = _wait(
            "run.json of the second run",
            lambda: (
                (json.loads((run_dir / "run.json").read_text()) or None)
                if (run_dir / "run.json").exists()
                and json.loads((run_dir / "run.json").read_text()).get("running")
                else None
            ),
            120,
            proc,
        )
        assert run["pid"] == proc.pid and run["router"]["pid"] and run["prometheus"]["pid"]
        router = run["router"]["url"]
        assert router == f"http://127.0.0.1:{run['router']['port']}"

        # While it runs, a second dev on the same file is refused.
        second = run_cli(tmp_path, "dev", str(path))
        assert second.returncode == 2 and "another mlrollout dev" in second.stderr

        loadgen = subprocess.Popen(
            [*CLI, "loadgen", router, "--records", str(examples / "traffic.jsonl"),
             "--rate", "40", "--batch", "8", "--duration", "240", "--progress", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(
            "Paused at the manual step",
            lambda: _status(run_dir).get("phase") == "Paused",
            180,
            proc,
        )

        got = run_cli(tmp_path, "get", "fraud")  # found in ./.mlrollout/fraud
        assert got.returncode == 0, got.stderr
        assert "Phase:       ॥ Paused" in got.stdout and "Step:        1/1" in got.stdout
        assert "Canary:      v2" in got.stdout and "local " in got.stdout
        assert "errorRate" in got.stdout and "pass" in got.stdout
        waiting = run_cli(tmp_path, "status", "fraud", "--no-watch", "-o", "json")
        assert waiting.returncode == 4 and json.loads(waiting.stdout)["done"] is False

        promoted = run_cli(tmp_path, "promote", "fraud")
        assert promoted.returncode == 0, promoted.stderr
        assert "then it is promoted (last step)" in promoted.stdout
        doc = yaml.safe_load(path.read_text())
        assert doc["spec"]["controls"]["resume"].startswith("promote-")
        assert doc["spec"]["model"]["version"] == "v2"  # the rest of the file is as it was

        assert proc.wait(timeout=120) == 0
    finally:
        if loadgen is not None:
            loadgen.terminate()
            loadgen.wait(timeout=30)
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait(timeout=10)
        out.close()
    log = (tmp_path / "dev.out").read_text()
    assert "decided: healthy: v2 serves all traffic" in log
    assert "StableNotReady" not in log, log[-3000:]  # issue 13: printed on every resume
    assert "as canary" not in log

    done = run_cli(tmp_path, "status", "fraud", "--timeout", "10s")
    assert done.returncode == 0 and "healthy: v2" in done.stdout
    history = json.loads(run_cli(tmp_path, "history", "fraud", "-o", "json").stdout)
    assert [(h["version"], h["outcome"]) for h in history] == [
        ("v1", "deployed"),
        ("v2", "promoted"),
    ]

    # One JSON line per analysis run: time, step, weight, each check's value vs limit.
    records = [json.loads(ln) for ln in (run_dir / "analysis.jsonl").read_text().splitlines()]
    canary_runs = [r for r in records if r["canary"] == "v2"]
    assert canary_runs and all(r["step"] == "1/1" and r["weight"] == 50 for r in canary_runs)
    times = [r["time"] for r in records]
    assert times == sorted(times) and len(set(times)) == len(times)
    check = next(c for c in canary_runs[-1]["checks"] if c["check"] == "errorRate")
    assert check["verdict"] == "pass" and check["samples"] >= 20
    assert check["threshold"] == 0.05 and check["limit"] == "<= 0.05 (errors/requests)"
    events = [json.loads(ln) for ln in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "Promoted" in [e["reason"] for e in events]
