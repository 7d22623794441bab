"""What every builder shares (pure): names and labels, the owner reference, the builders'
inputs (``ModelRef``, ``Serving``, ``Autoscaling``) and the pod security settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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


# A pod being deleted keeps serving for a few seconds: the router drops a retired revision
# from its table within a second of the ConfigMap change (and Service endpoints take a
# moment to follow), so requests already on their way still find a live server. The
# serving image is python:slim based and has `sleep`.
DRAIN_SECONDS = 5


DRAIN: Obj = {"preStop": {"exec": {"command": ["sleep", str(DRAIN_SECONDS)]}}}
