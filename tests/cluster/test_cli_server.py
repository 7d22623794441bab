"""`kubectl mlrollout` and `kubectl get md` against a real kube-apiserver (TLS, RBAC, the CRD).

Statuses are the engine's own (``tests.doubles.decide.Scenario``) written through the
status subresource, so the server's schema validates them; the CLI runs as the kubectl
plugin the real kubectl finds on PATH; the spec changes it makes are fed back to the
engine, which must do what the CLI said. Also proves the STEP and MESSAGE printer
columns and the documented `kubectl wait` form on a real server.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlrollout.operator.builders import Owner
from mlrollout.operator.interfaces import Event
from mlrollout.operator.k8s_runtime import event_object

from tests.doubles.decide import Scenario

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
def cluster(md_crd: Any) -> tuple[Any, str]:
    namespace = f"cli-{uuid.uuid4().hex[:6]}"
    md_crd.kubectl("create", "namespace", namespace)
    return md_crd, namespace


def write(cp: Any, ns: str, s: Scenario) -> dict[str, Any]:
    cp.apply(
        {
            "apiVersion": "mlrollout.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "wine", "namespace": ns},
            "spec": s.spec,
        }
    )
    obj = cp.get_json("md", "wine", "-n", ns)
    status = {**s.status, "observedGeneration": obj["metadata"]["generation"]}
    status.update({k: None for k in obj.get("status") or {} if k not in status})
    cp.kubectl(
        "patch", "md", "wine", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    return dict(cp.get_json("md", "wine", "-n", ns))


def plugin(cp: Any, *args: str, kubeconfig: Path | None = None) -> Any:
    env = {**cp.env(kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    import subprocess

    return subprocess.run(
        [str(cp.bin_dir / "kubectl"), "mlrollout", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cp.workdir,  # no .mlrollout here: the cluster is used
    )


def test_kubectl_plugin_get_promote_status_undo_on_a_real_server(
    cluster: tuple[Any, str],
) -> None:
    cp, ns = cluster
    s = Scenario(spec(), T0)
    s.healthy_traffic()
    s.tick()
    s.set_model("v2", uri="https://models.test/wine-v2.tar.gz")
    s.tick()
    s.tick(30)
    assert s.phase == "Progressing"
    write(cp, ns, s)

    # Printer columns from the CRD, rendered by the server.
    table = cp.kubectl("get", "md", "-n", ns).stdout.splitlines()
    assert table[0].split()[:7] == [
        "NAME",
        "PHASE",
        "STABLE",
        "CANARY",
        "STEP",
        "WEIGHT",
        "MESSAGE",
    ]
    row = table[1].split()
    step, weight = s.status["step"], s.status["weights"]["canary"]
    assert row[:6] == ["wine", "Progressing", "v1", "v2", step, str(weight)]
    assert f"step {step} at {weight}%" in table[1]
    wide = cp.kubectl("get", "md", "-n", ns, "-o", "wide").stdout.splitlines()[0]
    assert "STABLE-REVISION" in wide and "CANARY-REVISION" in wide

    # An Event exactly as the operator posts it (its own builder), read back by `get`.
    uid = cp.get_json("md", "wine", "-n", ns)["metadata"]["uid"]
    event = event_object(
        Owner(name="wine", namespace=ns, uid=uid),
        Event("Normal", "RolloutStarted", "canary v2 against stable v1"),
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    cp.kubectl("create", "-f", "-", input=json.dumps(event))
    got = plugin(cp, "get", "wine", "-n", ns)
    assert got.returncode == 0, got.stderr
    assert "RolloutStarted" in got.stdout and "canary v2 against stable v1" in got.stdout
    assert f"Step:        {step}" in got.stdout and "Canary:      v2  (revision" in got.stdout
    assert "errorRate" in got.stdout

    promoted = plugin(cp, "promote", "wine", "--full", "-n", ns)
    assert promoted.returncode == 0, promoted.stderr
    assert "canary v2 becomes stable" in promoted.stdout
    obj = cp.get_json("md", "wine", "-n", ns)
    s.spec = obj["spec"]
    s.tick(1)  # the engine acts on the token the CLI wrote
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"
    write(cp, ns, s)

    # The `kubectl wait` form docs/cli.md gives, on the real server.
    waited = cp.kubectl(
        "wait", "md/wine", "-n", ns, "--for=jsonpath={.status.phase}=Healthy", "--timeout=20s"
    )
    assert waited.returncode == 0
    done = plugin(cp, "status", "wine", "-n", ns, "--timeout", "20s")
    assert done.returncode == 0 and "healthy: v2" in done.stdout

    history = json.loads(plugin(cp, "history", "wine", "-n", ns, "-o", "json").stdout)
    assert [(h["version"], h["outcome"]) for h in history] == [
        ("v1", "deployed"),
        ("v2", "promoted"),
    ]
    undo = plugin(cp, "undo", "wine", "-n", ns)
    assert undo.returncode == 0, undo.stderr
    model = cp.get_json("md", "wine", "-n", ns)["spec"]["model"]
    assert (model["version"], model["uri"]) == ("v1", "https://models.test/wine-v1.tar.gz")


def test_errors_from_the_server_are_one_line(cluster: tuple[Any, str]) -> None:
    cp, ns = cluster
    missing = plugin(cp, "get", "nope", "-n", ns)
    assert missing.returncode == 2
    assert "ModelDeployment 'nope' not found" in missing.stderr
    assert "Traceback" not in missing.stderr


USER_ROLES = Path(__file__).resolve().parents[2] / "manifests" / "user-roles"


def _can(cp: Any, verb: str, ns: str, kubeconfig: Path) -> bool:
    out = cp.kubectl("auth", "can-i", verb, "modeldeployments.mlrollout.io", "-n", ns,
                     kubeconfig=kubeconfig, check=False)  # fmt: skip
    return out.stdout.strip() == "yes"


def test_namespace_viewers_read_and_editors_steer_with_the_user_roles(
    cluster: tuple[Any, str],
) -> None:
    """manifests/user-roles aggregates into the built-in view/edit roles, so ordinary
    namespace users can use `kubectl mlrollout` without a custom RoleBinding per tool."""
    cp, ns = cluster
    cp.kubectl("apply", "-k", str(USER_ROLES))
    s = Scenario(spec(), T0)
    s.healthy_traffic()
    s.tick()
    s.set_model("v2", uri="https://models.test/wine-v2.tar.gz")
    s.tick()
    write(cp, ns, s)
    users = {}
    for role in ("view", "edit"):
        cp.kubectl("create", "serviceaccount", f"{role}-user", "-n", ns)
        cp.kubectl("create", "rolebinding", f"{role}-user", f"--clusterrole={role}",
                   f"--serviceaccount={ns}:{role}-user", "-n", ns)  # fmt: skip
        users[role] = cp.sa_kubeconfig(ns, f"{role}-user")
    deadline = time.monotonic() + 60  # the aggregation controller fills the roles in
    while time.monotonic() < deadline and not (
        _can(cp, "get", ns, users["view"]) and _can(cp, "patch", ns, users["edit"])
    ):
        time.sleep(0.5)
    assert not _can(cp, "patch", ns, users["view"])

    seen = plugin(cp, "get", "wine", "-n", ns, kubeconfig=users["view"])
    assert seen.returncode == 0, seen.stderr
    assert "Canary:      v2" in seen.stdout
    refused = plugin(cp, "abort", "wine", "-n", ns, kubeconfig=users["view"])
    assert refused.returncode == 5 and "403" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    aborted = plugin(cp, "abort", "wine", "-n", ns, kubeconfig=users["edit"])
    assert aborted.returncode == 0, aborted.stderr
    assert cp.get_json("md", "wine", "-n", ns)["spec"]["controls"]["abort"].startswith("abort-")
