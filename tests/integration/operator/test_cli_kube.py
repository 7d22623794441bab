"""`kubectl-mlrollout` (the `mlrollout` rollout commands) against a Kubernetes API.

Runs the installed console script as a user would, with a kubeconfig, against the API
emulator (kmock). Statuses are the engine's own (``tests.doubles.decide.Scenario``), written
through the status subresource as the operator writes them; the spec changes the CLI
makes are read back from the API and fed to the engine, which must do what the CLI said.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from mlrollout.operator.kube import Kube

from tests.doubles.decide import Scenario

pytestmark = pytest.mark.integration

NS = "clictl"
BIN = Path(sys.executable).parent
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def spec() -> dict[str, Any]:
    return {
        "model": {"name": "wine", "version": "v1", "uri": "https://models.test/wine-v1.tar.gz"},
        "rollout": {
            "steps": [{"weight": 20}, {"weight": 50}],
            "analysis": {"interval": "30s", "minSamples": 100},
        },
    }


@pytest.fixture(scope="module")
def kube(cluster: Any) -> Kube:
    cluster.call(lambda e: e.namespaces.add(NS))
    config = kubernetes.client.Configuration()
    config.host = cluster.url
    return Kube(config, timeout=5)


def cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [str(BIN / "kubectl-mlrollout"), *args, "-n", NS],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=kubeconfig.parent,  # no .mlrollout here: the cluster is used
    )


def write(kube: Kube, name: str, s: Scenario) -> dict[str, Any]:
    """The object as the operator leaves it: spec from the scenario, status from the engine."""
    current = kube.get("ModelDeployment", NS, name)
    if current is None:
        kube.create(
            {
                "apiVersion": "mlrollout.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": NS},
                "spec": s.spec,
            }
        )
    else:
        kube.merge_patch("ModelDeployment", NS, name, {"spec": s.spec})
    obj = kube.get("ModelDeployment", NS, name) or {}
    status = {**s.status, "observedGeneration": obj["metadata"]["generation"]}
    # A merge patch keeps keys it does not name: null the ones the engine dropped.
    status.update({k: None for k in (obj.get("status") or {}) if k not in status})
    kube.merge_patch("ModelDeployment", NS, name, {"status": status}, sub="status")
    return kube.get("ModelDeployment", NS, name) or {}


def scenario_from(obj: dict[str, Any], s: Scenario) -> Scenario:
    """Continue the engine on the spec now stored in the API (what the operator would do)."""
    s.spec = obj["spec"]
    return s


def test_get_list_promote_status_history_undo(kube: Kube, kubeconfig: Path) -> None:
    s = Scenario(spec(), T0)
    s.healthy_traffic()
    s.tick()
    s.set_model("v2", uri="https://models.test/wine-v2.tar.gz")
    s.tick()
    s.tick(30)
    assert s.phase == "Progressing", s.status["message"]
    write(kube, "wine", s)
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "wine.1", "namespace": NS},
            "involvedObject": {"kind": "ModelDeployment", "name": "wine", "namespace": NS},
            "type": "Normal",
            "reason": "RolloutStarted",
            "message": "canary v2 against stable v1",
            "lastTimestamp": "2026-01-01T12:00:00Z",
        }
    )

    got = cli(kubeconfig, "get", "wine")
    assert got.returncode == 0, got.stderr
    out = got.stdout
    assert "Phase:" in out and "Step:        " in out and "/2" in out
    assert "Canary:      v2  (revision" in out and "Stable:      v1  (revision" in out
    assert "errorRate" in out and "<= 0.05 (errors/requests)" in out
    assert "RolloutStarted" in out and "canary v2 against stable v1" in out

    listed = cli(kubeconfig, "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [d["name"] for d in json.loads(listed.stdout)] == ["wine"]

    # Still rolling out: `status` times out with its own exit code.
    waited = cli(kubeconfig, "status", "wine", "--timeout", "1s", "--interval", "0.2")
    assert waited.returncode == 4, waited.stdout + waited.stderr
    assert "timed out after 1s" in waited.stderr

    dry = cli(kubeconfig, "promote", "wine", "--full", "--dry-run")
    assert dry.returncode == 0 and "dry run, nothing changed" in dry.stdout
    assert "controls" not in (kube.get("ModelDeployment", NS, "wine") or {})["spec"]

    promoted = cli(kubeconfig, "promote", "wine", "--full")
    assert promoted.returncode == 0, promoted.stderr
    assert "What happens: canary v2 becomes stable" in promoted.stdout
    obj = kube.get("ModelDeployment", NS, "wine") or {}
    token = obj["spec"]["controls"]["promote"]
    assert token.startswith("promote-")
    # The operator (the engine) acts on the token the CLI wrote.
    s = scenario_from(obj, s)
    s.tick(1)
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"

    # The spec generation the CLI wrote is not observed yet: still not an outcome.
    stale = cli(kubeconfig, "status", "wine", "--no-watch")
    assert stale.returncode == 4, stale.stdout
    write(kube, "wine", s)
    done = cli(kubeconfig, "status", "wine", "--timeout", "30s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy: v2 serves all traffic" in done.stdout

    history = cli(kubeconfig, "history", "wine", "-o", "yaml")
    rows = yaml.safe_load(history.stdout)
    assert [(r["number"], r["version"], r["outcome"]) for r in rows] == [
        (1, "v1", "deployed"),
        (2, "v2", "promoted"),
    ]
    assert rows[0]["uri"] == "https://models.test/wine-v1.tar.gz"

    undo = cli(kubeconfig, "undo", "wine", "-o", "json")
    assert undo.returncode == 0, undo.stderr
    assert "v1" in json.loads(undo.stdout)["effect"]
    model = (kube.get("ModelDeployment", NS, "wine") or {})["spec"]["model"]
    assert (model["version"], model["uri"]) == ("v1", "https://models.test/wine-v1.tar.gz")
    s = scenario_from(kube.get("ModelDeployment", NS, "wine") or {}, s)
    s.tick(1)
    assert s.status["canary"]["version"] == "v1"  # undo rolls v1 out again, as a canary


def test_errors_are_one_line_with_exit_codes(kube: Kube, kubeconfig: Path) -> None:
    missing = cli(kubeconfig, "get", "nope")
    assert missing.returncode == 2
    assert missing.stderr.startswith("mlrollout get: error: ModelDeployment 'nope' not found")
    s = Scenario(spec(), T0)
    s.healthy_traffic()
    s.tick()
    write(kube, "calm", s)
    refused = cli(kubeconfig, "abort", "calm")
    assert refused.returncode == 2 and "has no canary to abort" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_kubectl_runs_it_as_a_plugin(kubeconfig: Path) -> None:
    kubectl = shutil.which("kubectl") or str(
        Path.home() / ".cache/mlrollout/kube/v1.37.2/bin/kubectl"
    )
    if not Path(kubectl).exists():
        pytest.skip("kubectl not built yet (tests/cluster/build.sh builds it; runs once it has)")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [kubectl, "mlrollout", "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mlrollout ")
