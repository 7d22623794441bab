"""The rollout commands on a local run dir (no processes): reading, -w, controls editing
the file in place, outputs, and shell completion."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from mlrollout.services import cli
from mlrollout.services.completion import script

from tests.doubles.decide import Scenario

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FILE = """\
# my fraud model (this comment stays)
apiVersion: mlrollout.io/v1alpha1
kind: ModelDeployment
metadata:
  name: fraud
spec:
  model:
    name: fraud
    version: v2
    uri: https://models.example/v2.tar.gz
  rollout:
    steps:
      - weight: 10
      - weight: 50
    analysis:
      interval: 30s
      minSamples: 100
"""


def local_run(tmp_path: Path) -> tuple[Path, Path, Scenario]:
    """A run dir as `mlrollout dev` leaves it, with a canary v2 in progress."""
    path = tmp_path / "fraud.yaml"
    path.write_text(FILE)
    spec = yaml.safe_load(FILE)["spec"]
    s = Scenario({**spec, "model": {**spec["model"], "version": "v1",
                                    "uri": "https://models.example/v1.tar.gz"}}, T0)  # fmt: skip
    s.healthy_traffic()
    s.tick()
    s.spec = spec
    s.tick()
    run_dir = tmp_path / ".mlrollout" / "fraud"
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text(
        json.dumps(
            {"format": 1, "deployment": "fraud", "namespace": "local", "generation": 2,
             "spec": spec, "status": {**s.status, "observedGeneration": 2}}
        )
    )  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps({"file": str(path), "deployment": "fraud"}))
    (run_dir / "events.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "time": "2026-01-01T12:00:00+00:00",
                    "type": e.type,
                    "reason": e.reason,
                    "message": e.message,
                }
            )
            + "\n"
            for e in s.events
        )
        + "not json, a torn line\n"
    )
    return path, run_dir, s


def test_get_list_history_from_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _path, run_dir, _s = local_run(tmp_path)
    monkeypatch.chdir(tmp_path)  # .mlrollout/fraud is found without --local
    assert cli.main(["get", "fraud"]) == 0
    out = capsys.readouterr().out
    assert f"(local {run_dir})" in out and "Canary:      v2" in out
    assert "RolloutStarted" in out  # from events.jsonl; the torn line is skipped
    assert cli.main(["list", "-o", "json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == ["fraud"]
    assert cli.main(["history", "fraud", "--local", str(run_dir), "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)[0]["version"] == "v1"
    assert cli.main(["status", "fraud", "--no-watch"]) == 4
    # No local run of that name: the cluster is asked, and there is none configured here.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    assert cli.main(["get", "other"]) == 5
    assert "no cluster configured" in capsys.readouterr().err


def test_controls_edit_the_file_in_place_and_say_what_happens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _run_dir, s = local_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["abort", "fraud", "--dry-run"]) == 0
    assert "dry run, nothing changed" in capsys.readouterr().out
    assert path.read_text() == FILE
    assert cli.main(["abort", "fraud"]) == 0
    out = capsys.readouterr().out
    assert f"{path} updated" in out and "What happens: canary v2 is rolled back now" in out
    text = path.read_text()
    assert text.startswith(FILE)  # every line kept, the control appended
    token = yaml.safe_load(text)["spec"]["controls"]["abort"]
    # The engine reading the edited file rolls the canary back.
    s.spec = yaml.safe_load(text)["spec"]
    s.tick(1)
    assert s.phase == "RolledBack" and token


def test_a_file_changed_but_not_yet_applied_is_not_an_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _run_dir, _s = local_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    path.write_text(FILE.replace("version: v2", "version: v3"))
    assert cli.main(["status", "fraud", "--no-watch", "-o", "json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["done"] is False and "generation 3" in doc["message"]


def test_get_watch_prints_until_interrupted(tmp_path: Path) -> None:
    _path, run_dir, _s = local_run(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlrollout.services.cli", "get", "fraud", "-w",
         "--local", str(run_dir), "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))
    reader.start()

    def blocks() -> int:
        return sum(ln.startswith("Name:") for ln in list(lines))

    try:
        deadline = time.monotonic() + 60
        while blocks() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        state = json.loads((run_dir / "state.json").read_text())
        state["status"]["phase"] = "Paused"  # a change shows up as a new block
        (run_dir / "state.json").write_text(json.dumps(state))
        while blocks() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 130, err
    assert out.count("Name:        fraud") >= 2 and "Paused" in out


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed here")
def test_bash_completion_completes_commands_options_and_names(tmp_path: Path) -> None:
    _path, _run_dir, _s = local_run(tmp_path)
    completion = tmp_path / "c.bash"
    completion.write_text(script("bash"))
    probe = f"""
source {completion}
mlrollout() {{ {sys.executable} -m mlrollout.services.cli "$@"; }}
COMP_WORDS=(mlrollout st); COMP_CWORD=1; _mlrollout; echo "1:${{COMPREPLY[*]}}"
COMP_WORDS=(mlrollout promote --fu); COMP_CWORD=2; _mlrollout; echo "2:${{COMPREPLY[*]}}"
COMP_WORDS=(mlrollout get fr); COMP_CWORD=2; _mlrollout; echo "3:${{COMPREPLY[*]}}"
"""
    out = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    assert lines["1"].split() == ["status"]
    assert lines["2"].split() == ["--full"]
    assert lines["3"].split() == ["fraud"]  # names from `mlrollout list` of the local run
    assert "#compdef" in script("zsh")


KUBECTL = Path.home() / ".cache/mlrollout/kube/v1.37.2/bin/kubectl"


@pytest.mark.skipif(
    not KUBECTL.exists() and shutil.which("kubectl") is None,
    reason="kubectl not built yet (tests/cluster/build.sh builds it; runs once it has)",
)
def test_kubectl_completes_the_plugin(tmp_path: Path) -> None:
    """kubectl (>= 1.26) runs `kubectl_complete-mlrollout` to complete `kubectl mlrollout`."""
    _path, _run_dir, _s = local_run(tmp_path)
    kubectl = str(KUBECTL) if KUBECTL.exists() else str(shutil.which("kubectl"))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def complete(*words: str) -> list[str]:
        out = subprocess.run(
            [kubectl, "__complete", "mlrollout", *words],
            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert complete("pro") == ["promote", ":4"]
    assert complete("promote", "--fu") == ["--full", ":4"]
    assert complete("get", "") == ["fraud", ":4"]  # the local run in the working directory


def test_get_watch_stops_on_sigint_even_if_started_with_sigint_ignored(tmp_path: Path) -> None:
    # A shell starts background jobs (scripts, CI) with SIGINT ignored and Python keeps
    # that: `get -w` then never stopped on Ctrl-C. The CLI takes SIGINT back.
    _path, run_dir, _s = local_run(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlrollout.services.cli", "get", "fraud", "-w",
         "--local", str(run_dir), "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not proc.stdout.readline().startswith("Name:"):
            pass
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode is not None and proc.returncode != -signal.SIGKILL
