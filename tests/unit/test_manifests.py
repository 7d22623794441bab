"""Plain manifests (kubectl apply -k manifests/), the CRD copies and the examples.

kustomize runs through `kubectl kustomize` (offline, no cluster), and every object it
builds is validated with kubernetes-validate --strict. ModelDeployments (the examples and
the one in the chart's NOTES.txt) are validated against the CRD's own openAPIV3Schema.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tools import deploy_assets

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CRD_SOURCE = ROOT / "crds" / "modeldeployment.yaml"
KUBE = "1.30.0"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (for its built-in kustomize) is not installed"
)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_generated_files_are_up_to_date() -> None:
    stale = deploy_assets.stale(ROOT)
    assert stale == [], f"run: python -m tools.deploy_assets write  (stale: {stale})"


@pytest.mark.parametrize(
    "copy", ["manifests/crd.yaml", "helm/mlrollout/files/crds/modeldeployment.yaml"]
)
def test_crd_copies_equal_the_source(copy: str) -> None:
    assert (ROOT / copy).read_text() == CRD_SOURCE.read_text(), f"{copy} is stale: make crds"


@needs_kubectl
def test_kustomization_builds_valid_objects() -> None:
    objs = kustomize(MANIFESTS)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        ["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
         "ClusterRoleBinding", "Service", "Deployment"]
    )  # fmt: skip
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE, strict=True)
        if obj["kind"] not in {
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        }:
            assert obj["metadata"]["namespace"] == "mlrollout-system", obj["kind"]
        assert "helm.sh/chart" not in obj["metadata"].get("labels", {})


@needs_kubectl
def test_monitoring_kustomization_builds() -> None:
    objs = kustomize(MANIFESTS / "monitoring")
    assert sorted(o["kind"] for o in objs) == [
        "ConfigMap",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    for obj in objs:
        assert obj["metadata"]["namespace"] == "mlrollout-system"
        if obj["kind"] == "ConfigMap":
            kubernetes_validate.validate(obj, KUBE, strict=True)
        # Prometheus Operator kinds: no schema offline; their content is checked in test_helm_chart.py


def test_plain_manifests_drop_helm_only_labels() -> None:
    obj = {
        "metadata": {"labels": {"a": "1", "helm.sh/chart": "x", "app.kubernetes.io/managed-by": "Helm"}},
        "spec": {"selector": {"matchLabels": {"a": "1"}},
                 "template": {"metadata": {"labels": {"helm.sh/chart": "x", "b": "2"}}}},
    }  # fmt: skip
    assert deploy_assets.without_helm_labels(obj) == {
        "metadata": {"labels": {"a": "1"}},
        "spec": {
            "selector": {"matchLabels": {"a": "1"}},
            "template": {"metadata": {"labels": {"b": "2"}}},
        },
    }


def test_check_reports_a_hand_edited_manifest(tmp_path: Path) -> None:
    for part in ("helm", "crds", "manifests"):
        shutil.copytree(ROOT / part, tmp_path / part)
    edited = tmp_path / "manifests" / "operator.yaml"
    edited.write_text(edited.read_text().replace("replicas: 1", "replicas: 2"))
    assert deploy_assets.main(["check", "--root", str(tmp_path)]) == 1
    assert deploy_assets.main(["write", "--root", str(tmp_path)]) == 0
    assert deploy_assets.stale(tmp_path) == []


def test_check_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    assert deploy_assets.main(["check", "--root", str(tmp_path)]) == 2


# ----------------------------------------------------------------- the CRD and ModelDeployments


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_SOURCE.read_text())
    return crd


def _md_schema() -> dict[str, Any]:
    (version,) = [v for v in _crd()["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _check_model_deployment(obj: dict[str, Any]) -> None:
    crd = _crd()
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    assert obj["apiVersion"].split("/")[0] == group and obj["kind"] == kind
    # The CRD's own schema. Kubernetes speaks OpenAPI v3.0, whose keywords (boolean
    # exclusiveMinimum) are JSON Schema draft 4's; x-kubernetes-* (CEL) are ignored here.
    jsonschema.Draft4Validator(_md_schema()).validate(obj)


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(_crd(), KUBE, strict=True)


def test_crd_schema_rejects_a_bad_model_deployment() -> None:
    bad = {"apiVersion": "mlrollout.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "x"}, "spec": {"model": {"name": "x", "version": "v1"}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        _check_model_deployment(bad)


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.skipif(not EXAMPLES, reason="examples/ has no ModelDeployment yet (issue 4 adds them)")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_match_the_crd_schema(example: Path) -> None:
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    mds = [d for d in docs if d.get("kind") == "ModelDeployment"]
    assert mds, f"{example.name} holds no ModelDeployment"
    for md in mds:
        _check_model_deployment(md)


def test_notes_example_matches_the_crd_schema() -> None:
    with helm.Chart.load(str(ROOT / "helm" / "mlrollout")) as chart:
        notes = chart.render({}, name="ml", namespace="ml")["mlrollout/templates/NOTES.txt"]
    match = re.search(r"-f -\n(.*?)\n\s*YAML\n", notes, re.S)
    assert match, notes
    lines = match[1].splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    _check_model_deployment(yaml.safe_load("\n".join(line[indent:] for line in lines)))


# ----------------------------------------------------------------- kind e2e inputs

E2E = ROOT / "tests" / "e2e" / "kind"


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_e2e_model_deployment_matches_the_crd_schema(version: str) -> None:
    text = (E2E / "modeldeployment.yaml").read_text().replace("VERSION", version)
    _check_model_deployment(yaml.safe_load(text))


def test_e2e_cluster_objects_are_valid() -> None:
    objs = [d for d in yaml.safe_load_all((E2E / "cluster.yaml").read_text()) if d]
    assert {o["kind"] for o in objs} >= {"Deployment", "Service", "ConfigMap", "ClusterRole"}
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE, strict=True)


def test_e2e_says_why_it_did_not_run(tmp_path: Path) -> None:
    """Without Docker/kind it prints one line and exits 0, never claiming a pass."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "mktemp"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    bash = shutil.which("bash")
    assert bash
    out = subprocess.run(
        [bash, str(E2E / "run.sh")], env={"PATH": str(bin_dir)},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("e2e: NOT RUN: 'docker' is not installed")
    assert "PASS" not in out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_e2e_prometheus_config_is_valid(tmp_path: Path) -> None:
    objs = [d for d in yaml.safe_load_all((E2E / "cluster.yaml").read_text()) if d]
    (config_map,) = [
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "prometheus"
    ]
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    # The alerts ConfigMap is mounted in the cluster; point at the chart's file here.
    config["rule_files"] = [str(ROOT / "helm" / "mlrollout" / "files" / "alerts.yaml")]
    # Debian's promtool is built without Kubernetes service discovery; everything else
    # (relabelling, honor_labels, globals) is still checked.
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    promtool = shutil.which("promtool")
    assert promtool
    out = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
