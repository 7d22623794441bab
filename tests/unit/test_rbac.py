"""The operator's RBAC is exactly what its code declares it calls, and nothing more.

One list: ``kube.RESOURCES`` says, per kind, which verbs the operator calls. The chart's
rules are generated from it (``files/operator-rbac.yaml``), the operator's client refuses a
call not declared there (so a test on the emulator finds a missing grant), and the real API
server test (tests/cluster/test_operator_rbac_server.py) proves the grants are enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml
from mlrollout.operator import builders, kube

from tools import deploy_assets

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mlrollout"
Triple = tuple[str, str, str]  # (API group, resource, verb)


def triples(rules: list[dict[str, Any]]) -> set[Triple]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def declared(*, gateway: bool, cluster: bool) -> set[Triple]:
    """What the code calls, straight from kube.RESOURCES (no generator in between)."""
    out: set[Triple] = set()
    for kind, res in kube.RESOURCES.items():
        if res.group == "gateway.networking.k8s.io" and not gateway:
            continue
        out |= {(res.group, res.plural, v) for v in res.verbs}
        out |= {(res.group, f"{res.plural}/status", v) for v in res.status_verbs}
        if kind == "ConfigMap":  # held so that the router's Role may grant them
            out |= {("", "configmaps", v) for v in builders.ROUTER_CONFIGMAP_VERBS}
    if cluster:
        out |= {(g, r, v) for g, r, verbs in kube.CLUSTER_SCOPED_CALLS for v in verbs}
    return out


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="ml", namespace="mlrollout-system", is_install=True)
    return deploy_assets.documents(rendered, "templates/")


@pytest.mark.parametrize("gateway", [False, True], ids=["plain", "gatewayAPI"])
@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_chart_grants_exactly_what_the_code_declares(mode: str, gateway: bool) -> None:
    objs = render({"operator": {"watch": {"mode": mode}}, "gatewayAPI": {"enabled": gateway}})
    roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        assert triples(role["rules"]) == declared(gateway=gateway, cluster=mode == "cluster")


def test_generated_rules_are_current() -> None:
    committed = (ROOT / deploy_assets.RBAC_RULES).read_text()
    assert committed == deploy_assets.rbac_rules_text(), "run `make crds`"
    assert yaml.safe_load(committed)["namespaced"]


def test_no_update_no_wildcards_no_escalation() -> None:
    everything = declared(gateway=True, cluster=True)
    verbs = {v for _, _, v in everything}
    assert verbs <= {"get", "list", "watch", "create", "patch", "delete"}, verbs
    resources = {r for _, r, _ in everything}
    assert not resources & {"secrets", "pods", "nodes", "clusterroles", "clusterrolebindings"}
    # Status only through patch, and the user's spec is never written: no update anywhere.
    assert {v for _, r, v in everything if r.endswith("/status")} == {"patch"}
    assert ("rbac.authorization.k8s.io", "roles", "escalate") not in everything
    assert ("rbac.authorization.k8s.io", "roles", "bind") not in everything


def test_the_operator_client_refuses_undeclared_calls() -> None:
    calls: list[tuple[str, str]] = []

    class Recording(kube.Kube):
        def request(self, method: str, path: str, **_: Any) -> Any:
            calls.append((method, path))
            return {"items": []} if method == "GET" else {}

    config = kubernetes.client.Configuration()
    config.host = "https://127.0.0.1:1"
    strict = Recording(config, declared_only=True)
    with pytest.raises(kube.UndeclaredCall, match="delete poddisruptionbudgets"):
        strict.delete("PodDisruptionBudget", "ns", "x")
    with pytest.raises(kube.UndeclaredCall, match="list roles"):
        strict.list("Role", "ns")
    with pytest.raises(kube.UndeclaredCall, match="patch modeldeployments/scale"):
        strict.merge_patch("ModelDeployment", "ns", "x", {}, sub="scale")
    with pytest.raises(kube.UndeclaredCall, match="get modeldeployments"):
        strict.get("ModelDeployment", "ns", "x")
    assert calls == []  # refused before anything was sent
    strict.merge_patch("ModelDeployment", "ns", "x", {"status": {}}, sub="status")
    strict.list("Deployment", "ns", {"a": "b"})
    assert [m for m, _ in calls] == ["PATCH", "GET"]
    # Tools and tests use the same client unrestricted.
    Recording(config).get("ModelDeployment", "ns", "x")
