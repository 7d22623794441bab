"""The objects in front of the model servers (pure): the public Service, the built-in
router (Deployment, RBAC, routing ConfigMap) and the Gateway API HTTPRoute.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mlrollout.operator.builders.common import (
    DRAIN,
    ROUTER_PORT,
    SERVING_PORT,
    TABLE_KEY,
    TMP_DIR,
    Obj,
    Owner,
    Serving,
    _container_security,
    _meta,
    _pod_security,
    check_name,
    labels,
)
from mlrollout.operator.builders.revision import _env_list, _scrape_annotations, _writable_volumes


def public_service(owner: Owner) -> Obj:
    """``{md}``: the endpoint clients call; it fronts the router."""
    md = owner.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, md, labels(md, "endpoint")),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/instance": md, "app.kubernetes.io/component": "router"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def routes_configmap_name(md: str) -> str:
    return check_name(f"{md}-routes", "routing ConfigMap name")


def routes_configmap(owner: Owner, table: Mapping[str, Any]) -> Obj:
    """The routing table (docs/architecture.md) under ``table.json``; the router watches it."""
    md = owner.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, routes_configmap_name(md), labels(md, "routing")),
        "data": {TABLE_KEY: json.dumps(dict(table), sort_keys=True, separators=(",", ":"))},
    }


# What a router may do with its routing ConfigMap (and nothing else): read the table, patch
# in the guard's report. The operator creates this Role, so Kubernetes requires it to hold
# these verbs itself (the chart grants them: see ``deploy_assets.operator_rules``).
ROUTER_CONFIGMAP_VERBS = ("get", "list", "watch", "patch")


def router_objects(owner: Owner, serving: Serving, replicas: int = 1) -> list[Obj]:
    """Router Deployment plus the least RBAC it needs: read its own ConfigMap, and patch it
    (the guard's report under ``guard.json``)."""
    md = owner.name
    name = check_name(f"{md}-router", "router name")
    cm = routes_configmap_name(md)
    lbls = labels(md, "router")
    selector = {"app.kubernetes.io/instance": md, "app.kubernetes.io/component": "router"}
    volumes, mounts = _writable_volumes()
    container: Obj = {
        "name": "router",
        "image": serving.router_image or serving.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "mlrollout",
            "router",
            "--configmap",
            f"{owner.namespace}/{cm}",
            "--host",
            "0.0.0.0",
            "--port",
            str(ROUTER_PORT),
        ],
        "env": _env_list({"MLROLLOUT_DEPLOYMENT": md, "HOME": TMP_DIR}),
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        "lifecycle": DRAIN,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, name, lbls),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": lbls, "annotations": _scrape_annotations(ROUTER_PORT)},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, name, lbls),
        "automountServiceAccountToken": True,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, name, lbls),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [cm],
                "verbs": list(ROUTER_CONFIGMAP_VERBS),
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name, lbls),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }
    return [account, role, binding, deployment]


def http_route(
    owner: Owner,
    backends: Mapping[str, tuple[str, int]],
    parent_refs: Sequence[Mapping[str, Any]],
    hostnames: Sequence[str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    """Gateway API HTTPRoute: ``backends`` maps track -> (Service name, weight)."""
    md = owner.name
    refs = [
        {"kind": "Service", "name": service, "port": SERVING_PORT, "weight": int(weight)}
        for _track, (service, weight) in sorted(backends.items())
    ]
    spec: Obj = {
        "parentRefs": [{k: v for k, v in p.items() if v is not None} for p in parent_refs],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs}
        ],
    }
    if hostnames:
        spec["hostnames"] = list(hostnames)
    extra = {"annotations": dict(annotations)} if annotations else {}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _meta(owner, md, labels(md, "endpoint"), **extra),
        "spec": spec,
    }
