"""Both install paths on a real API server: ``kubectl apply -k manifests/`` and ``helm install``.

A control plane of this module's own (the CRD installed here is owned by kustomize or by a
Helm release, and Helm refuses to adopt one it did not create). Every object must be
accepted (a refusal fails the test), and the operator Deployment must become Available:
the real scheduler places its pod on a kwok node, the real Deployment controller reports it
(no container runs, so this proves the objects, not the image). Pod Security admission of
the real server checks the pod against the ``restricted`` level of manifests/namespace.yaml.

The Prometheus Operator's CRDs are not on this machine: the ``monitoring`` values install
ServiceMonitor, PodMonitor and PrometheusRule against stand-in CRDs that accept any fields
(``x-kubernetes-preserve-unknown-fields``); their fields are asserted in
tests/unit/test_helm_chart.py and the rules by promtool, not here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mlrollout"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "ml", "mlrollout-system"
MONITORING = {
    "ServiceMonitor": "servicemonitors",
    "PodMonitor": "podmonitors",
    "PrometheusRule": "prometheusrules",
}


def stand_in_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def cp(private_control_plane: Any) -> Any:
    private_control_plane.apply([stand_in_crd(k, p) for k, p in MONITORING.items()])
    for plural in MONITORING.values():
        private_control_plane.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            f"crd/{plural}.monitoring.coreos.com",
        )
    return private_control_plane


def _available(cp: Any, namespace: str, timeout: str = "90s") -> None:
    cp.kubectl(
        "wait",
        "deployment",
        "--all",
        "-n",
        namespace,
        "--for=condition=Available",
        f"--timeout={timeout}",
        timeout=120,
    )


def test_kubectl_apply_k_manifests(cp: Any) -> None:
    out = cp.kubectl("apply", "-k", str(ROOT / "manifests"), check=False)
    assert out.returncode == 0, out.stderr
    applied = [line for line in out.stdout.splitlines() if line.strip()]
    expected = yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text())
    # kubectl prints "<kind>.<group>/<name> created" per object.
    done = {
        (ln.split()[0].split("/")[0].split(".")[0], ln.split()[0].split("/")[1]) for ln in applied
    }
    for doc in (d for d in expected if d):
        assert (doc["kind"].lower(), doc["metadata"]["name"]) in done, (doc["kind"], applied)
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/modeldeployments.mlrollout.io",
    )
    _available(cp, NAMESPACE)
    pods = json.loads(cp.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    assert pods and all(p["spec"].get("nodeName", "").startswith("kwok-node") for p in pods)
    # Applying again changes nothing (what GitOps tools do every few minutes).
    again = cp.kubectl("apply", "-k", str(ROOT / "manifests"))
    assert all(line.endswith("unchanged") for line in again.stdout.splitlines()), again.stdout
    # Leave the cluster as found: the Helm installs below create the CRD themselves.
    cp.kubectl("delete", "-k", str(ROOT / "manifests"), "--wait=true", timeout=180)


@pytest.fixture(scope="module")
def helm_config(cp: Any) -> Iterator[Any]:
    import helm_python as helm

    with helm.Config(kubeconfig_path=str(cp.kubeconfig), namespace=NAMESPACE) as config:
        yield config


@pytest.mark.parametrize("values_file", CI_FILES, ids=[p.stem for p in CI_FILES])
def test_helm_install(cp: Any, helm_config: Any, values_file: Path) -> None:
    import helm_python as helm

    values = yaml.safe_load(values_file.read_text()) or {}
    # What a user of these values has in place before installing:
    for ns in values.get("operator", {}).get("watch", {}).get("namespaces", []):
        cp.kubectl("create", "namespace", ns, check=False)
    if not values.get("crds", {}).get("install", True):
        cp.kubectl("apply", "-f", str(ROOT / "crds" / "modeldeployment.yaml"))
    cp.kubectl("create", "namespace", NAMESPACE, check=False)
    account = values.get("serviceAccount", {})
    if account.get("create") is False:
        cp.kubectl("create", "serviceaccount", account["name"], "-n", NAMESPACE, check=False)

    with helm.Chart.load(str(CHART)) as chart:
        try:
            release = helm_config.install(
                chart, RELEASE, values, namespace=NAMESPACE, wait="watcher", timeout=180
            )
        except helm.HelmError as exc:  # the server refused an object, or it never got ready
            pytest.fail(f"helm install with {values_file.name} failed: {exc}")
    try:
        assert release["status"] == "deployed", release["status"]
        manifest = [d for d in yaml.safe_load_all(release["manifest"]) if d]
        for doc in manifest:
            ns = doc["metadata"].get("namespace")
            args = ["get", doc["kind"], doc["metadata"]["name"], "-o", "name"]
            cp.kubectl(*args, *(["-n", ns] if ns else []))
        _available(cp, NAMESPACE)
    finally:
        helm_config.uninstall(RELEASE, wait="watcher", timeout=120)
    if values.get("crds", {}).get("install", True):
        # resource-policy keep: the CRD outlives the release, as documented.
        cp.kubectl("get", "crd", "modeldeployments.mlrollout.io")
