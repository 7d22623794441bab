"""The objects of one model revision (pure): its Deployment, HPA and Service, the track
Services re-pointed by revision, and the PodDisruptionBudget over all model servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlrollout.operator.builders.common import (
    CACHE_DIR,
    DRAIN,
    LABEL_REVISION,
    SERVING_PORT,
    TMP_DIR,
    Autoscaling,
    ModelRef,
    Obj,
    Owner,
    Serving,
    _container_security,
    _meta,
    _pod_security,
    labels,
    revision_name,
)

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


def _plain(value: Any) -> Any:
    """Copy nested mappings into plain dicts (specs may arrive as pydantic dumps or proxies)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
