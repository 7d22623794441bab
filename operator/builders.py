"""Pure builders of the Kubernetes objects behind one ModelDeployment, as plain dicts.

No Kubernetes client and no clock here: every input is an argument, every output is a
dict ready for ``kube.apply``. Naming (``md`` is the ModelDeployment's name):

=========================  ==============================================================
``{md}-{revision}``        Deployment (+ HPA) and Service of one model revision's servers
``{md}-stable``            Service selecting the stable revision's pods
``{md}-canary``            Service selecting the canary revision's pods (while one exists)
``{md}``                   public Service in front of the router (built-in router)
``{md}-router``            router Deployment, ServiceAccount, Role, RoleBinding
``{md}-routes``            routing ConfigMap (key ``table.json``)
``{md}``                   PodDisruptionBudget over all model servers; HTTPRoute (Gateway API)
=========================  ==============================================================

Services select pods by revision, never by track: a promoted canary keeps the track label
it started with (docs/architecture.md). The routing table points at the per-revision
Services (their URLs say which revision is which); ``{md}-stable`` / ``{md}-canary`` are
stable names for people and tools, re-pointed by revision when the table changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlrollout.operator.api import API_VERSION, GROUP, KIND

MANAGER = "mlrollout-operator"
PART_OF = "mlrollout"
SERVING_PORT = 8080
ROUTER_PORT = 8080
TABLE_KEY = "table.json"
# The router writes its guard's report here (services/router/source.py GUARD_KEY).
GUARD_KEY = "guard.json"

LABEL_REVISION = f"{GROUP}/revision"
LABEL_TRACK = f"{GROUP}/track"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"

# Where the read-only root filesystem needs writable space: the downloaded model, BentoML's
# home and Python's temp files.
CACHE_DIR = "/var/cache/mlrollout"
TMP_DIR = "/tmp"
NON_ROOT_UID = 65532

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A ModelDeployment's name prefixes every child's: the longest is ``{md}-{10-hex revision}``
# (63 at most), and Services named after it must be DNS-1035 labels (start with a letter).
REVISION_ID_LENGTH = 10
MAX_OWNER_NAME = 63 - 1 - REVISION_ID_LENGTH
OWNER_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
Obj = dict[str, Any]


class BuildError(ValueError):
    """The inputs cannot produce valid Kubernetes objects (names too long, bad characters)."""


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns every child (garbage collection on delete)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Obj:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class ModelRef:
    """One model revision: what a server downloads and serves."""

    revision: str
    name: str
    version: str
    uri: str
    sha256: str | None = None


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_cpu_percent: int = 70


@dataclass(frozen=True)
class Serving:
    """How model servers run; taken from ``spec.serving``."""

    image: str
    replicas: int = 1
    autoscaling: Autoscaling | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    router_image: str | None = None  # defaults to ``image`` (the same package ships both)
    service_account: str | None = None


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid DNS-1123 label (63 chars max), else raise BuildError."""
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise BuildError(
            f"{what} {name!r} is not a valid Kubernetes name: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return name


def check_owner_name(md: str) -> str:
    """Return ``md`` if every child can be named after it, else raise BuildError."""
    if len(md) > MAX_OWNER_NAME or not re.match(OWNER_NAME_PATTERN, md):
        raise BuildError(
            f"ModelDeployment name {md!r} cannot name its Services and Deployments: use at "
            f"most {MAX_OWNER_NAME} lowercase letters, digits and '-', starting with a letter "
            "and ending with a letter or digit"
        )
    return md


def revision_name(md: str, revision: str) -> str:
    return check_name(f"{md}-{revision}", "revision Deployment name")


def labels(
    md: str,
    component: str,
    *,
    version: str | None = None,
    revision: str | None = None,
    track: str | None = None,
) -> dict[str, str]:
    """The app.kubernetes.io set plus mlrollout's own keys; ``None`` values are left out."""
    out = {
        "app.kubernetes.io/name": "mlrollout",
        "app.kubernetes.io/instance": md,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGER,
        LABEL_DEPLOYMENT: md,
    }
    if version is not None:
        out["app.kubernetes.io/version"] = _label_value(version)
    if revision is not None:
        out[LABEL_REVISION] = revision
    if track is not None:
        out[LABEL_TRACK] = track
    return out


def _label_value(value: str) -> str:
    # Label values allow [A-Za-z0-9_.-], 63 chars; model versions such as "2024-01+rc1" may not.
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:63].strip("_.-")
    return cleaned or "unknown"


def _meta(owner: Owner, name: str, lbls: Mapping[str, str], **extra: Any) -> Obj:
    meta: Obj = {
        "name": check_name(name),
        "namespace": owner.namespace,
        "labels": dict(lbls),
        "ownerReferences": [owner.reference()],
    }
    meta.update(extra)
    return meta


def _pod_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# The model server caps a download and a tarball's contents at MLROLLOUT_MAX_ARTIFACT_BYTES
# (1 GiB unless serving.env sets it; services/model/artifact.py); the cache holds both, so
# its emptyDir gets twice that plus room, and a hostile artifact cannot fill the node's disk
# (beyond the limit the kubelet evicts the pod).
MAX_ARTIFACT_BYTES_ENV = "MLROLLOUT_MAX_ARTIFACT_BYTES"
DEFAULT_MAX_ARTIFACT_BYTES = 1 << 30
CACHE_HEADROOM_MI = 512
TMP_SIZE_LIMIT = "256Mi"


def cache_size_limit(env: Mapping[str, str]) -> str:
    raw = str(env.get(MAX_ARTIFACT_BYTES_ENV, "")).strip()
    cap = int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_ARTIFACT_BYTES
    return f"{-(-2 * cap // (1 << 20)) + CACHE_HEADROOM_MI}Mi"


def _writable_volumes(
    cache_limit: str | None = None, tmp_limit: str | None = None
) -> tuple[list[Obj], list[Obj]]:
    volumes: list[Obj] = [
        {"name": "cache", "emptyDir": {"sizeLimit": cache_limit} if cache_limit else {}},
        {"name": "tmp", "emptyDir": {"sizeLimit": tmp_limit} if tmp_limit else {}},
    ]
    mounts = [
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    return volumes, mounts


def _scrape_annotations(port: int) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def _env_list(env: Mapping[str, str]) -> list[Obj]:
    return [{"name": k, "value": str(v)} for k, v in sorted(env.items())]


# A pod being deleted keeps serving for a few seconds: the router drops a retired revision
# from its table within a second of the ConfigMap change (and Service endpoints take a
# moment to follow), so requests already on their way still find a live server. The
# serving image is python:slim based and has `sleep`.
DRAIN_SECONDS = 5
DRAIN: Obj = {"preStop": {"exec": {"command": ["sleep", str(DRAIN_SECONDS)]}}}


def revision_deployment(owner: Owner, model: ModelRef, serving: Serving, track: str) -> Obj:
    """The model servers of one revision; the model is fetched from its URI at start-up."""
    md = owner.name
    name = revision_name(md, model.revision)
    selector = _server_selector(md, model.revision)
    pod_labels = labels(
        md, "model-server", version=model.version, revision=model.revision, track=track
    )
    volumes, mounts = _writable_volumes(cache_size_limit(serving.env), TMP_SIZE_LIMIT)
    env = {
        **serving.env,
        "MODEL_URI": model.uri,
        "MLROLLOUT_DEPLOYMENT": md,
        "MLROLLOUT_TRACK": track,
        "MLROLLOUT_CACHE": CACHE_DIR,
        "BENTOML_HOME": f"{TMP_DIR}/bentoml",
        "HOME": TMP_DIR,
    }
    if model.sha256:
        env["MLROLLOUT_MODEL_SHA256"] = model.sha256
    http_get = {"port": "http"}
    container: Obj = {
        "name": "model-server",
        "image": serving.image,
        "imagePullPolicy": "IfNotPresent",
        # $(MODEL_URI) is expanded by the kubelet from the env below.
        "args": [
            "mlrollout",
            "serve",
            "$(MODEL_URI)",
            "--host",
            "0.0.0.0",
            "--deployment",
            md,
            "--track",
            track,
            "--port",
            str(SERVING_PORT),
            *(["--sha256", "$(MLROLLOUT_MODEL_SHA256)"] if model.sha256 else []),
        ],
        "env": _env_list(env),
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        # Download + load + warm-up may take minutes; startup gates the other probes.
        "startupProbe": {
            "httpGet": {"path": "/readyz", **http_get},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **http_get},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", **http_get},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        "lifecycle": DRAIN,
    }
    if serving.resources:
        container["resources"] = _plain(serving.resources)
    pod_spec: Obj = {
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
    }
    if serving.service_account:
        pod_spec["serviceAccountName"] = serving.service_account
    spec: Obj = {
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": _scrape_annotations(SERVING_PORT)},
            "spec": pod_spec,
        },
    }
    if serving.autoscaling is None:
        spec["replicas"] = serving.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, name, pod_labels),
        "spec": spec,
    }


def revision_hpa(owner: Owner, model: ModelRef, autoscaling: Autoscaling) -> Obj:
    name = revision_name(owner.name, model.revision)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(owner, name, labels(owner.name, "model-server", revision=model.revision)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_percent,
                        },
                    },
                }
            ],
        },
    }


def _server_selector(md: str, revision: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": md,
        "app.kubernetes.io/component": "model-server",
        LABEL_REVISION: revision,
    }


def revision_service(owner: Owner, revision: str) -> Obj:
    """``{md}-{revision}``: what the routing table and the HTTPRoute point at."""
    md = owner.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            owner, revision_name(md, revision), labels(md, "model-server", revision=revision)
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": _server_selector(md, revision),
            "ports": [{"name": "http", "port": SERVING_PORT, "targetPort": "http"}],
        },
    }


def revision_url(owner: Owner, revision: str) -> str:
    return f"http://{revision_name(owner.name, revision)}.{owner.namespace}.svc:{SERVING_PORT}"


def revision_of_url(md: str, url: str) -> str | None:
    """Inverse of :func:`revision_url`; None for URLs this module did not make."""
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    service = host.split(".", 1)[0]
    prefix = f"{md}-"
    return (
        service[len(prefix) :]
        if service.startswith(prefix) and len(service) > len(prefix)
        else None
    )


def track_service(owner: Owner, track: str, revision: str) -> Obj:
    """``{md}-stable`` / ``{md}-canary``: re-pointed by revision on promotion."""
    md = owner.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, f"{md}-{track}", labels(md, "model-server", track=track)),
        "spec": {
            "type": "ClusterIP",
            "selector": _server_selector(md, revision),
            "ports": [{"name": "http", "port": SERVING_PORT, "targetPort": "http"}],
        },
    }


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


def pod_disruption_budget(owner: Owner) -> Obj:
    """At most one model server of the deployment evicted at a time, over all revisions."""
    md = owner.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, md, labels(md, "model-server")),
        "spec": {
            "maxUnavailable": 1,
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": md,
                    "app.kubernetes.io/component": "model-server",
                }
            },
        },
    }


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


def _plain(value: Any) -> Any:
    """Copy nested mappings into plain dicts (specs may arrive as pydantic dumps or proxies)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
