"""The operator runs as the chart's ServiceAccount, not as admin, and its rights are enough.

For each RBAC mode of the chart (cluster: ClusterRole; namespaced: a Role per watched
namespace), the chart is rendered by Helm's engine, its ServiceAccount and RBAC objects are
applied to the real API server, and the real ``kopf run`` (the chart's own arguments and
environment) is started with a TokenRequest token of that ServiceAccount. A ModelDeployment
must then get every child, its status through the status subresource and its Events, and
a model version change must start a canary; the API server's audit log must show no
request of the operator's refused. That the rights are no more than needed is the unit
test ``tests/unit/test_rbac.py`` (the chart's rules equal the code's declared calls).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mlrollout"
VENV_BIN = Path(sys.executable).parent
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
MODEL = {"name": "fraud", "version": "v1", "uri": "https://models.example.com/fraud/v1.tar.gz"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render(values: dict[str, Any], release: str, namespace: str) -> list[dict[str, Any]]:
    import helm_python as helm

    from tools.deploy_assets import documents

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    return documents(rendered, "templates/")


def eventually(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


class RunningOperator:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _operator_command(deployment: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The chart's container command and environment, made to run on this machine."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kopf"]
    args = [
        f"--liveness=http://127.0.0.1:{_free_port()}/healthz" if a.startswith("--liveness") else a
        for a in container["args"]
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    env |= {
        # Nothing listens there: analysis reports the provider down and holds; what is
        # tested here is the API side.
        "MLROLLOUT_PROMETHEUS_URL": f"http://127.0.0.1:{_free_port()}",
        "MLROLLOUT_PROMETHEUS_TIMEOUT": "1",
        "MLROLLOUT_METRICS_PORT": "0",
        "MLROLLOUT_TICK_SECONDS": "1",
    }
    return [str(VENV_BIN / "kopf"), *args], env


@pytest.fixture(params=["cluster", "namespaced"])
def installed(
    request: pytest.FixtureRequest, md_crd: Any, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """The chart's RBAC for one mode applied, and the operator running with its token."""
    cp, mode = md_crd, request.param
    tag = uuid.uuid4().hex[:5]
    release, system, apps = f"rbac-{tag}", f"rbac-{tag}-system", f"rbac-{tag}-apps"
    for ns in (system, apps):
        cp.kubectl("create", "namespace", ns)
    watch: dict[str, Any] = {"mode": mode}
    if mode == "namespaced":
        watch["namespaces"] = [apps]
    objs = render({"operator": {"watch": watch}}, release, system)
    rbac = [o for o in objs if o["kind"] in RBAC_KINDS]
    kinds = {o["kind"] for o in rbac}
    if mode == "cluster":
        assert {"ClusterRole", "ClusterRoleBinding"} <= kinds and "Role" not in kinds
    else:
        assert {"Role", "RoleBinding"} <= kinds and "ClusterRole" not in kinds
    cp.apply(rbac)
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = cp.sa_kubeconfig(system, account)
    argv, env = _operator_command(deployment)
    operator = RunningOperator(
        argv, {**os.environ, **env, "KUBECONFIG": str(kubeconfig)}, tmp_path / "operator.log"
    )
    try:
        yield {
            "cp": cp,
            "mode": mode,
            "apps": apps,
            "operator": operator,
            "user": f"system:serviceaccount:{system}:{account}",
            "rules": [r for o in rbac if "rules" in o for r in o["rules"]],
        }
    finally:
        operator.stop()
        cp.kubectl("delete", "namespace", system, apps, "--wait=false", check=False)
        for o in rbac:
            if o["kind"].startswith("Cluster"):
                cp.kubectl("delete", o["kind"], o["metadata"]["name"], check=False)


def _md(cp: Any, ns: str) -> dict[str, Any]:
    return json.loads(cp.kubectl("get", "md", "fraud", "-n", ns, "-o", "json").stdout)


def _names(cp: Any, kind: str, ns: str) -> set[str]:
    out = cp.kubectl("get", kind, "-n", ns, "-o", "json").stdout
    return {o["metadata"]["name"] for o in json.loads(out)["items"]}


def test_operator_works_with_the_charts_service_account(installed: dict[str, Any]) -> None:
    cp, ns, operator = installed["cp"], installed["apps"], installed["operator"]
    md = {
        "apiVersion": "mlrollout.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": ns},
        "spec": {"model": MODEL, "serving": {"replicas": 1}},
    }
    cp.apply(md)

    def healthy() -> Any:
        assert operator.proc.poll() is None, operator.log()[-3000:]
        return _md(cp, ns).get("status", {}).get("phase") == "Healthy"

    eventually(healthy, 90, "the first revision Healthy (children Ready through kwok)")
    deployments = _names(cp, "deployments", ns)
    assert "fraud-router" in deployments and len(deployments) == 2, deployments
    assert {"fraud", "fraud-stable"} <= _names(cp, "services", ns)
    assert "fraud-router" in _names(cp, "serviceaccounts", ns)
    assert "fraud-router" in _names(cp, "roles", ns)
    assert "fraud-router" in _names(cp, "rolebindings", ns)
    assert "fraud" in _names(cp, "poddisruptionbudgets", ns)
    events = json.loads(cp.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    assert any(e["involvedObject"].get("kind") == "ModelDeployment" for e in events)

    # A new model version: a canary Deployment, the routing table patched; Prometheus is
    # down, so analysis holds (an API-side path through patch and create of everything).
    cp.kubectl(
        "patch",
        "md",
        "fraud",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"model": {**MODEL, "version": "v2"}}}),
    )
    eventually(lambda: len(_names(cp, "deployments", ns)) == 3, 60, "a canary Deployment created")
    eventually(
        lambda: (_md(cp, ns).get("status", {}).get("canary") or {}).get("version") == "v2",
        60,
        "status.canary is v2",
    )

    audit = cp.audit(installed["user"])
    assert audit, "the operator's requests are not in the audit log"
    # The one refusal by design: without gatewayAPI.enabled the chart grants nothing on
    # HTTPRoutes, and the operator's look for one left by a router switch gets a 403 it
    # reads as "none made" (k8s_runtime._remove_other_path).
    refused = [
        (e["verb"], e.get("objectRef", {}).get("resource"), e["responseStatus"].get("code"))
        for e in audit
        if e.get("responseStatus", {}).get("code") == 403
        and not (e["verb"] == "get" and e.get("objectRef", {}).get("resource") == "httproutes")
    ]
    assert not refused, refused
    assert "Forbidden" not in operator.log(), operator.log()[-3000:]
    _assert_calls_are_granted(audit, installed["rules"])


def _assert_calls_are_granted(audit: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    """Every (group, resource, verb) the operator called is in the rules it was given (the
    server said so already; this checks the audit is read right)."""
    for e in audit:
        ref = e.get("objectRef") or {}
        if "resource" not in ref:
            continue  # discovery (/api, /apis): allowed to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        group = ref.get("apiGroup", "")
        if resource == "selfsubjectaccessreviews" or e["responseStatus"].get("code") == 403:
            continue
        assert any(
            group in r["apiGroups"] and resource in r["resources"] and e["verb"] in r["verbs"]
            for r in rules
        ), (e["verb"], group, resource, yaml.safe_dump(rules))
