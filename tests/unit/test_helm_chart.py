"""The Helm chart, rendered and linted by Helm's own Go engine (helm-python-sdk, no binary).

Every object rendered for the defaults and every ci/ values file is validated against the
Kubernetes 1.30 OpenAPI schema with kubernetes-validate --strict. Prometheus Operator objects
have no schema available offline: their fields are asserted here, the PrometheusRule's rules
by promtool (test_alerts.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kopf import cli as kopf_cli
from mlrollout.operator.kube import RESOURCES
from mlrollout.operator.settings import OperatorSettings

from tools.deploy_assets import documents

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mlrollout"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE = "1.30.0"
MONITORING_GROUP = "monitoring.coreos.com/v1"
RELEASE, NAMESPACE = "ml", "mlrollout-system"


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return documents(rendered, "templates/")


def only(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = only(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_there_are_ci_variants() -> None:
    names = {p.name for p in CI_FILES}
    assert {"default-values.yaml", "namespaced-values.yaml", "monitoring-values.yaml"} <= names


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_lint_is_clean(values_file: Path) -> None:
    report = helm.lint(str(CHART), _load(values_file), strict=True, kube_version=f"v{KUBE}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_every_rendered_object_is_valid(chart: helm.Chart, values_file: Path) -> None:
    objs = render(chart, _load(values_file))
    assert only(objs, "Deployment"), "the operator Deployment is always rendered"
    for obj in objs:
        if obj["apiVersion"] == MONITORING_GROUP:
            continue  # no offline schema; see test_monitoring_objects
        kubernetes_validate.validate(obj, KUBE, strict=True)


def test_defaults_and_ci_files_pass_the_schema(chart: helm.Chart) -> None:
    for values_file in CI_FILES:
        chart.validate_schema(_load(values_file))


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"operator": {"prometheusURL": "http://p:9090"}},
        {"metrics": {"serviceMonitor": {"enable": True}}},
        {"crds": {"install": True, "keepCRDs": True}},
        {"operator": {"watch": {"mode": "global"}}},
        {"operator": {"prometheusUrl": "prometheus:9090"}},
        {"operator": {"metricsPort": 0}},
    ],
    ids=[
        "unknown-top",
        "unknown-nested",
        "typo-deep",
        "unknown-crds",
        "bad-mode",
        "no-scheme",
        "port",
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(chart, values)


# ----------------------------------------------------------------- values and schema agree


def _schema_leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
    props = node.get("properties")
    if not props:
        return {prefix}
    out: set[str] = set()
    for key, child in props.items():
        out |= _schema_leaves(child, f"{prefix}.{key}" if prefix else key)
    return out


def _schema_nodes(node: dict[str, Any], path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}.{key}")


def test_schema_is_closed_and_described(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    for path, node in _schema_nodes(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        if path != "$":
            assert node.get("description"), f"{path} has no description"


def test_every_value_is_in_the_schema(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    leaves = _schema_leaves(schema) - {"global"}

    def value_paths(node: Any, prefix: str) -> set[str]:
        if prefix in leaves or not isinstance(node, dict):
            return {prefix}
        return set().union(
            *(value_paths(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items())
        )

    assert value_paths(_load(CHART / "values.yaml"), "") == leaves


def test_every_value_has_a_doc_comment() -> None:
    """helm-docs style: a `# --` comment documents a key and everything under it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(.*)$")
    documented_indent: int | None = None
    undocumented = []
    for i, line in enumerate(lines):
        match = key_re.match(line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        if documented_indent is not None and indent > documented_indent:
            continue  # inside a documented value
        documented_indent = None
        j = i - 1
        while (
            j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --")
        ):
            j -= 1
        if j >= 0 and lines[j].strip().startswith("# --"):
            documented_indent = indent
            continue
        nested = i + 1 < len(lines) and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
        if rest or not nested:
            undocumented.append(key)
    assert undocumented == []


# ----------------------------------------------------------------- operator and RBAC


def test_operator_deployment(chart: helm.Chart) -> None:
    objs = render(chart, {"operator": {"prometheusUrl": "http://prom.obs:9090"}})
    (deployment,) = only(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = operator_container(objs)
    assert container["command"] == ["kopf"]
    args = container["args"]
    assert args[:4] == ["run", "--module=mlrollout.operator.main", "--standalone",
                        "--liveness=http://0.0.0.0:8080/healthz"]  # fmt: skip
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLROLLOUT_PROMETHEUS_URL"] == "http://prom.obs:9090"
    assert env["MLROLLOUT_METRICS_PORT"] == "8000"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    (service,) = only(objs, "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name)
def test_operator_command_line_and_env_are_understood(chart: helm.Chart, values_file: Path) -> None:
    """kopf's own CLI parses the args; the operator's settings parse the environment."""
    values = _load(values_file)
    container = operator_container(render(chart, values))
    assert container["args"][0] == "run"
    params = kopf_cli.run.make_context("kopf run", list(container["args"][1:])).params
    assert params["modules"] == ("mlrollout.operator.main",) and params["standalone"] is True
    assert params["liveness_endpoint"].endswith(":8080/healthz")
    assert params["clusterwide"] != bool(params["namespaces"])
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(env)
    merged = chart.merge_values(values)["operator"]
    assert settings.prometheus_url == merged["prometheusUrl"].rstrip("/")
    assert settings.metrics_port == merged["metricsPort"]


def test_cluster_mode_grants_once_cluster_wide(chart: helm.Chart) -> None:
    objs = render(chart)
    assert "--all-namespaces" in operator_container(objs)["args"]
    env = {e["name"]: e["value"] for e in operator_container(objs)["env"]}
    assert env["MLROLLOUT_NAMESPACE_MODE"] == "cluster"
    (role,) = only(objs, "ClusterRole")
    (binding,) = only(objs, "ClusterRoleBinding")
    assert only(objs, "Role") == [] and only(objs, "RoleBinding") == []
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ml-mlrollout-operator", "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize(
    ("namespaces", "expected"), [([], [NAMESPACE]), (["team-a", "team-b"], ["team-a", "team-b"])]
)
def test_namespaced_mode_has_no_cluster_rights(
    chart: helm.Chart, namespaces: list[str], expected: list[str]
) -> None:
    objs = render(chart, {"operator": {"watch": {"mode": "namespaced", "namespaces": namespaces}}})
    assert only(objs, "ClusterRole") == [] and only(objs, "ClusterRoleBinding") == []
    roles = only(objs, "Role")
    assert [r["metadata"]["namespace"] for r in roles] == expected
    assert [b["metadata"]["namespace"] for b in only(objs, "RoleBinding")] == expected
    args = operator_container(objs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        f"--namespace={n}" for n in expected
    ]
    assert "--all-namespaces" not in args


def test_rbac_covers_every_kind_the_operator_builds(chart: helm.Chart) -> None:
    """Every kind the builders make is one kube.RESOURCES knows (so the chart grants it);
    the exact rules are tests/unit/test_rbac.py."""
    source = "".join(p.read_text() for p in sorted((ROOT / "operator" / "builders").glob("*.py")))
    built = set(re.findall(r'"kind": "([A-Za-z]+)"', source)) - {"ModelDeployment"}
    assert built, "operator/builders/ should build Kubernetes objects"
    unknown = built - RESOURCES.keys()
    assert not unknown, f"kube.RESOURCES does not know these built kinds: {unknown}"
    (role,) = only(render(chart, {"gatewayAPI": {"enabled": True}}), "ClusterRole")
    for kind in sorted(built):
        res = RESOURCES[kind]
        granted: set[str] = set()
        for rule in role["rules"]:
            if res.group in rule["apiGroups"] and res.plural in rule["resources"]:
                granted |= set(rule["verbs"])
        assert {"get", "create", "patch"} <= granted, kind


def test_no_wildcards_and_no_secrets(chart: helm.Chart) -> None:
    for values_file in CI_FILES:
        objs = render(chart, _load(values_file))
        for role in only(objs, "ClusterRole") + only(objs, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                assert "secrets" not in rule["resources"]


# ----------------------------------------------------------------- CRD


def _crd_source() -> dict[str, Any]:
    return _load(CHART / "files" / "crds" / "modeldeployment.yaml")


@pytest.mark.parametrize(("keep", "annotated"), [(True, True), (False, False)])
def test_crd_is_a_template_kept_on_uninstall(
    chart: helm.Chart, keep: bool, annotated: bool
) -> None:
    (crd,) = only(render(chart, {"crds": {"keep": keep}}), "CustomResourceDefinition")
    annotations = crd["metadata"].get("annotations", {})
    assert (annotations.get("helm.sh/resource-policy") == "keep") is annotated
    source = _crd_source()
    assert crd["spec"] == source["spec"]  # the body passes through untouched
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_can_be_left_out(chart: helm.Chart) -> None:
    assert only(render(chart, {"crds": {"install": False}}), "CustomResourceDefinition") == []


def test_the_chart_ships_the_crd_once() -> None:
    """Helm installs crds/ before the templates; a second copy there would make the
    templated CRD collide with it ("invalid ownership metadata") on the first install."""
    second_copies = sorted(p.name for p in (CHART / "crds").glob("*.y*ml"))
    assert second_copies == [], "move the CRD copy to helm/mlrollout/files/crds/ (make crds)"


# ----------------------------------------------------------------- monitoring


def test_monitoring_objects(chart: helm.Chart) -> None:
    objs = render(chart, _load(CHART / "ci" / "monitoring-values.yaml"))
    (monitor,) = only(objs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True  # operator series carry their own `namespace`
    assert {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "mlrollout-operator",
    } in endpoint["relabelings"]
    (service,) = only(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    (pods,) = only(objs, "PodMonitor")
    assert pods["spec"]["namespaceSelector"] == {"any": True}
    builders = "".join(p.read_text() for p in sorted((ROOT / "operator" / "builders").glob("*.py")))
    # The selector and port must match what the operator puts on model servers and routers.
    assert 'MANAGER = "mlrollout-operator"' in builders
    assert pods["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "mlrollout-operator"
    }
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert '"ports": [{"name": "http"' in builders

    (rule,) = only(objs, "PrometheusRule")
    assert rule["spec"] == _load(CHART / "files" / "alerts.yaml")

    (dashboard,) = only(objs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mlrollout.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )


def test_namespaced_podmonitor_watches_only_its_namespaces(chart: helm.Chart) -> None:
    values = {
        "operator": {"watch": {"mode": "namespaced", "namespaces": ["a", "b"]}},
        "metrics": {"podMonitor": {"enabled": True}},
    }
    (pods,) = only(render(chart, values), "PodMonitor")
    assert pods["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_alert_rules_need_the_operator_scraped(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match="serviceMonitor"):
        render(chart, {"prometheusRule": {"enabled": True}})


def test_monitoring_is_off_by_default(chart: helm.Chart) -> None:
    kinds = {o["kind"] for o in render(chart)}
    assert kinds.isdisjoint({"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"})


def test_notes_show_how_to_start(chart: helm.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)[f"{chart.name}/templates/NOTES.txt"]
    assert "kubectl -n mlrollout-system rollout status deploy/ml-mlrollout-operator" in notes
    assert (
        "kind: ModelDeployment" in notes and "kubectl -n default get modeldeployments -w" in notes
    )


def test_packaged_chart_renders_the_same(chart: helm.Chart, tmp_path: Path) -> None:
    """What `helm package` ships (after .helmignore) still holds files/ and renders alike."""
    archive = helm.package(str(CHART), destination=str(tmp_path))
    values = _load(CHART / "ci" / "monitoring-values.yaml")
    with helm.Chart.load(archive) as packaged:
        assert render(packaged, values) == render(chart, values)


def test_one_port_for_metrics_and_health_is_refused(chart: helm.Chart) -> None:
    # Both servers would bind it: the operator would crash-loop instead of failing the install.
    with pytest.raises(helm.HelmError, match=r"metricsPort and operator\.healthPort"):
        render(chart, {"operator": {"metricsPort": 8080, "healthPort": 8080}})
