"""Pure builders of the Kubernetes objects behind one ModelDeployment, as plain dicts.

In parts: ``common`` (names, labels, inputs), ``revision`` (a model revision's objects),
``router`` (the objects in front of them); every public name is importable from here.

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

from mlrollout.operator.builders.common import (
    CACHE_DIR,
    DRAIN,
    DRAIN_SECONDS,
    GUARD_KEY,
    LABEL_DEPLOYMENT,
    LABEL_REVISION,
    LABEL_TRACK,
    MANAGER,
    MAX_OWNER_NAME,
    NON_ROOT_UID,
    OWNER_NAME_PATTERN,
    PART_OF,
    REVISION_ID_LENGTH,
    ROUTER_PORT,
    SERVING_PORT,
    TABLE_KEY,
    TMP_DIR,
    Autoscaling,
    BuildError,
    ModelRef,
    Obj,
    Owner,
    Serving,
    check_name,
    check_owner_name,
    labels,
    revision_name,
)
from mlrollout.operator.builders.revision import (
    CACHE_HEADROOM_MI,
    DEFAULT_MAX_ARTIFACT_BYTES,
    MAX_ARTIFACT_BYTES_ENV,
    TMP_SIZE_LIMIT,
    cache_size_limit,
    pod_disruption_budget,
    revision_deployment,
    revision_hpa,
    revision_of_url,
    revision_service,
    revision_url,
    track_service,
)
from mlrollout.operator.builders.router import (
    ROUTER_CONFIGMAP_VERBS,
    http_route,
    public_service,
    router_objects,
    routes_configmap,
    routes_configmap_name,
)

__all__ = [
    "CACHE_DIR",
    "CACHE_HEADROOM_MI",
    "DEFAULT_MAX_ARTIFACT_BYTES",
    "DRAIN",
    "DRAIN_SECONDS",
    "GUARD_KEY",
    "LABEL_DEPLOYMENT",
    "LABEL_REVISION",
    "LABEL_TRACK",
    "MANAGER",
    "MAX_ARTIFACT_BYTES_ENV",
    "MAX_OWNER_NAME",
    "NON_ROOT_UID",
    "OWNER_NAME_PATTERN",
    "PART_OF",
    "REVISION_ID_LENGTH",
    "ROUTER_CONFIGMAP_VERBS",
    "ROUTER_PORT",
    "SERVING_PORT",
    "TABLE_KEY",
    "TMP_DIR",
    "TMP_SIZE_LIMIT",
    "Autoscaling",
    "BuildError",
    "ModelRef",
    "Obj",
    "Owner",
    "Serving",
    "cache_size_limit",
    "check_name",
    "check_owner_name",
    "http_route",
    "labels",
    "pod_disruption_budget",
    "public_service",
    "revision_deployment",
    "revision_hpa",
    "revision_name",
    "revision_of_url",
    "revision_service",
    "revision_url",
    "router_objects",
    "routes_configmap",
    "routes_configmap_name",
    "track_service",
]
