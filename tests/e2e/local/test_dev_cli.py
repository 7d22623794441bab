"""``mlrollout dev`` as a user runs it: bad files are refused before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlrollout.operator.local.procs import descendants
from mlrollout.services.netutil import free_port

from tests.doubles.local import kill_tree, manifest_doc, write_manifest

pytestmark = pytest.mark.e2e

GOOD = """\
apiVersion: mlrollout.io/v1alpha1
kind: ModelDeployment
metadata: {name: fraud}
spec:
  model: {name: fraud, version: v1, uri: ./v1}
"""


def _dev(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlrollout.services.cli", "dev", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("spec: {model: [unclosed", "not valid YAML"),
        (GOOD.replace("kind: ModelDeployment", "kind: Deployment"), "kind must be"),
        (GOOD.replace("version: v1", "version: ''"), "spec.model.version"),
        (GOOD + "  rollout: {steps: [{weight: 60}, {weight: 20}]}\n", "non-decreasing"),
        (GOOD + "  trafic: {}\n", "spec.trafic"),
        (GOOD, "does not exist"),  # ./v1 is not there
    ],
    ids=["yaml", "kind", "version", "steps", "typo", "missing-artifact"],
)
def test_bad_input_is_refused_and_starts_nothing(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "fraud.yaml"
    path.write_text(text)
    result = _dev(path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert result.stderr.startswith("mlrollout dev: error:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".mlrollout").exists()  # no run dir, so no process was started


def test_missing_file(tmp_path: Path) -> None:
    result = _dev(tmp_path / "nope.yaml")
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_missing_prometheus_says_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    path = tmp_path / "fraud.yaml"
    path.write_text(GOOD)
    result = _dev(path, "--prometheus-bin", str(tmp_path / "no-prometheus"))
    assert result.returncode == 2
    assert "apt-get install prometheus" in result.stderr
    assert not (tmp_path / ".mlrollout").exists()


def _wait_state(path: Path, done, timeout: float, proc: subprocess.Popen[bytes]) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlrollout dev exited early with {proc.returncode}"
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if done(state.get("status") or {}):
            return state
        time.sleep(0.25)
    raise AssertionError(f"state not reached in {timeout}s: {json.dumps(state)[:1500]}")


@pytest.mark.slow
def test_dev_follows_the_file_and_leaves_nothing_behind(
    tmp_path: Path, examples: Path, prometheus_bin: str
) -> None:
    path = tmp_path / "fraud.yaml"
    write_manifest(path, manifest_doc("v1", examples / "v1"))
    run_dir = tmp_path / "run"
    router_port = free_port()
    log = (tmp_path / "dev.out").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlrollout.services.cli",
            "dev",
            str(path),
            "--run-dir",
            str(run_dir),
            "--router-port",
            str(router_port),
            "--poll",
            "0.5",
            "--prometheus-bin",
            prometheus_bin,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    tree: set[tuple[int, int]] = set()
    try:
        state_path = run_dir / "state.json"
        _wait_state(state_path, lambda st: st.get("phase") == "Healthy", 120, proc)
        # Editing the file is a spec change: a canary starts.
        write_manifest(path, manifest_doc("v2", examples / "v2"))
        state = _wait_state(
            state_path, lambda st: (st.get("canary") or {}).get("version") == "v2", 60, proc
        )
        assert state["generation"] == 2
        tree = descendants(proc.pid)
        assert len(tree) >= 4  # Prometheus, router, two model servers (and their workers)

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # faulthandler: where is it stuck?
            time.sleep(2)
            log.flush()
            tail = (tmp_path / "dev.out").read_text(errors="replace")[-6000:]
            raise AssertionError(f"dev did not stop within 60 s of Ctrl-C:\n{tail}") from None
        assert code == 0
        alive = [pid for pid, start in tree if _alive(pid, start)]
        assert alive == [], f"left behind: {alive}"
        with socket.socket() as s:  # nobody listens on the router's port any more
            # (as any server does: connections closed moments ago linger in TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", router_port))
            s.listen()
        timeline = json.loads((run_dir / "timeline.json").read_text())
        assert "rollout_started" in [e["event"] for e in timeline["entries"]]
        assert (run_dir / "timeline.png").stat().st_size > 0
    finally:
        log.close()
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait(timeout=10)
        for pid, start in tree:
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int, start: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[19]) == start and fields[0] != "Z"
