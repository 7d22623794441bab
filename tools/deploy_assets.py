"""Generated install assets: the chart's CRD copy and the plain manifests rendered from the chart.

One source each: ``crds/modeldeployment.yaml`` for the CRD, the Helm chart for everything
else. ``write`` regenerates the copies, ``check`` lists the stale ones (a test and ``make``
call it), so ``kubectl apply -k manifests/`` and ``helm install`` cannot drift apart.

    python -m tools.deploy_assets write|check [--root DIR]

Rendering needs ``helm-python-sdk`` (Helm's Go SDK, in the ``test`` extra); it is imported
only here, on demand, so nothing at run time depends on it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RELEASE = "mlrollout"
NAMESPACE = "mlrollout-system"
CHART = Path("helm/mlrollout")
CRD_SOURCE = Path("crds/modeldeployment.yaml")
CRD_CHART_COPY = CHART / "files/crds/modeldeployment.yaml"
RBAC_RULES = CHART / "files/operator-rbac.yaml"
RBAC_HEADER = (
    "# Generated from operator/kube.py (RESOURCES: what the operator calls) and the router\n"
    "# Role it creates, by `python -m tools.deploy_assets write`. Do not edit.\n"
    "# templates/operator/rbac.yaml grants `namespaced` in each reconciled namespace (a\n"
    "# ClusterRole in cluster mode), `gatewayAPI` with gatewayAPI.enabled, `cluster` in\n"
    "# cluster mode only.\n"
)
HEADER = (
    "# Generated from helm/mlrollout by `python -m tools.deploy_assets write`.\n"
    "# Do not edit: change the chart and regenerate (a test fails when this file is stale).\n"
)
# Labels that only make sense for a Helm release.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
KIND_ORDER = (
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Service",
    "Deployment",
)


class AssetError(RuntimeError):
    """The repository is not in a state the assets can be generated from."""


@dataclass(frozen=True)
class Rendering:
    """One plain-manifest file: chart values and the templates it keeps."""

    path: Path
    values: Mapping[str, Any]
    templates: str  # prefix of the chart template paths to keep


MONITORING_ON = {
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "prometheusRule": {"enabled": True},
    "dashboard": {"enabled": True},
}
RENDERINGS = (
    Rendering(Path("manifests/operator.yaml"), {"crds": {"install": False}}, "templates/operator/"),
    Rendering(
        Path("manifests/monitoring/monitoring.yaml"),
        {"crds": {"install": False}, **MONITORING_ON},
        "templates/monitoring/",
    ),
)


def documents(rendered: Mapping[str, str], prefix: str) -> list[dict[str, Any]]:
    """The objects of the rendered templates under ``prefix``, NOTES.txt and empties left out."""
    out: list[dict[str, Any]] = []
    for name, text in sorted(rendered.items()):
        template = name.split("/", 1)[1] if "/" in name else name
        if not template.startswith(prefix) or not template.endswith(".yaml"):
            continue
        out.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return out


def without_helm_labels(obj: Any) -> Any:
    """A copy of ``obj`` with Helm-only labels removed from every ``labels`` map."""
    if isinstance(obj, list):
        return [without_helm_labels(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "labels" and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k not in HELM_ONLY_LABELS}
        else:
            out[key] = without_helm_labels(value)
    return out


def _kind_rank(obj: Mapping[str, Any]) -> int:
    kind = obj.get("kind", "")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the dashboard JSON) as readable `|` blocks."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def plain_manifest(objs: Iterable[Mapping[str, Any]]) -> str:
    """The text of one generated manifest file."""
    ordered = sorted((without_helm_labels(dict(o)) for o in objs), key=_kind_rank)
    body = yaml.dump_all(ordered, Dumper=_BlockDumper, sort_keys=False, width=100)
    return HEADER + body


def render_chart(chart_dir: Path, values: Mapping[str, Any]) -> dict[str, str]:
    """Render the chart offline with Helm's own engine (helm-python-sdk)."""
    try:
        import helm_python as helm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AssetError(
            "rendering the chart needs helm-python-sdk: pip install -e '.[test]'"
        ) from exc
    with helm.Chart.load(str(chart_dir)) as chart:
        rendered: dict[str, str] = chart.render(
            dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return rendered


def operator_rules() -> dict[str, list[dict[str, Any]]]:
    """The operator's RBAC rules, from what its code declares it calls (kube.RESOURCES).

    Resources of one API group with the same verbs share a rule; verbs are sorted, so the
    output is stable. Rights the operator only holds so that it may grant them (the
    router's Role on its ConfigMap: Kubernetes refuses to create a Role granting more than
    its creator holds) are added to the ConfigMap rule.
    """
    from mlrollout.operator import builders, kube

    def grouped(items: Iterable[tuple[str, str, frozenset[str]]]) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        for group, resource, verbs in items:
            verb_list = sorted(verbs)
            for rule in rules:
                if rule["apiGroups"] == [group] and rule["verbs"] == verb_list:
                    rule["resources"].append(resource)
                    break
            else:
                rules.append({"apiGroups": [group], "resources": [resource], "verbs": verb_list})
        return rules

    namespaced: list[tuple[str, str, frozenset[str]]] = []
    gateway: list[tuple[str, str, frozenset[str]]] = []
    for kind, res in kube.RESOURCES.items():
        verbs = res.verbs
        if kind == "ConfigMap":
            verbs = verbs | set(builders.ROUTER_CONFIGMAP_VERBS)
        target = gateway if res.group == "gateway.networking.k8s.io" else namespaced
        target.append((res.group, res.plural, verbs))
        if res.status_verbs:
            target.append((res.group, f"{res.plural}/status", res.status_verbs))
    return {
        "namespaced": grouped(namespaced),
        "gatewayAPI": grouped(gateway),
        "cluster": grouped(kube.CLUSTER_SCOPED_CALLS),
    }


def rbac_rules_text() -> str:
    return RBAC_HEADER + yaml.dump(
        operator_rules(), sort_keys=False, width=100, default_flow_style=None
    )


def _sources(root: Path) -> dict[Path, str]:
    """Generated files that the chart itself reads (written before it is rendered)."""
    source = root / CRD_SOURCE
    if not source.is_file():
        raise AssetError(f"{CRD_SOURCE} is missing: run `make crds` first")
    return {CRD_CHART_COPY: source.read_text(), RBAC_RULES: rbac_rules_text()}


def expected_files(root: Path) -> dict[Path, str]:
    """Every generated file (relative path -> content) as the sources say it should be."""
    files = _sources(root)
    for item in RENDERINGS:
        rendered = render_chart(root / CHART, item.values)
        files[item.path] = plain_manifest(documents(rendered, item.templates))
    return files


def stale(root: Path) -> list[Path]:
    """Generated files that are missing or differ from what the sources give."""
    return [
        path
        for path, text in expected_files(root).items()
        if not (root / path).is_file() or (root / path).read_text() != text
    ]


def write(root: Path) -> list[Path]:
    """Regenerate every file; returns the ones that changed."""
    changed = []
    # The chart reads the sources (CRD copy, RBAC rules): write them before rendering it.
    for files in (_sources, expected_files):
        for path, text in files(root).items():
            target = root / path
            if target.is_file() and target.read_text() == text:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(path)
    return changed


def _default_root() -> Path:
    # services/ sits at the repository root in a checkout (editable install).
    return Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.deploy_assets")
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("--root", type=Path, default=_default_root(), help="repository root")
    args = parser.parse_args(argv)
    root: Path = args.root
    if not (root / CHART / "Chart.yaml").is_file():
        print(
            f"error: {root} is not an mlrollout checkout (no {CHART}/Chart.yaml)", file=sys.stderr
        )
        return 2
    try:
        if args.action == "write":
            for path in write(root):
                print(f"wrote {path}")
            return 0
        out_of_date = stale(root)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in out_of_date:
        print(f"stale: {path}", file=sys.stderr)
    if out_of_date:
        print("run: python -m tools.deploy_assets write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
