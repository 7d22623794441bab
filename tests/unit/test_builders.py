"""Every object the builders render is valid Kubernetes (kubernetes-validate --strict) and wired.

HTTPRoute is not a core type, so kubernetes-validate has no schema for it; it is checked
against the small schema below (the fields Gateway API v1 requires and we use).
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from mlrollout.operator import builders as b

K8S_VERSION = "1.30.0"
OWNER = b.Owner(name="fraud", namespace="ml", uid="1234-abcd")
MODEL = b.ModelRef(
    revision="v2-5f3a9c", name="fraud", version="2.0", uri="s3://m/v2.tar.gz", sha256="ab" * 32
)
SERVING = b.Serving(
    image="ghcr.io/mlrollout/serving:0.1.0",
    replicas=2,
    resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    env={"OMP_NUM_THREADS": "1"},
)
TABLE = {
    "generation": 3,
    "deployment": "fraud",
    "backends": {
        "stable": {"url": b.revision_url(OWNER, "v1-0a1b2c"), "version": "1.0"},
        "canary": {"url": b.revision_url(OWNER, MODEL.revision), "version": "2.0"},
    },
    "weights": {"stable": 90, "canary": 10},
    "stickyHeader": "x-user-id",
    "shadowPercent": 0,
}


def all_objects() -> list[dict[str, Any]]:
    autoscaled = b.Serving(image=SERVING.image, autoscaling=b.Autoscaling(2, 10, 60))
    return [
        b.revision_deployment(OWNER, MODEL, SERVING, "canary"),
        b.revision_deployment(OWNER, MODEL, autoscaled, "stable"),
        b.revision_hpa(OWNER, MODEL, b.Autoscaling(2, 10, 60)),
        b.track_service(OWNER, "stable", "v1-0a1b2c"),
        b.revision_service(OWNER, MODEL.revision),
        b.track_service(OWNER, "canary", MODEL.revision),
        b.public_service(OWNER),
        b.routes_configmap(OWNER, TABLE),
        *b.router_objects(OWNER, SERVING),
        b.pod_disruption_budget(OWNER),
    ]


@pytest.mark.parametrize("obj", all_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_rendered_object_is_valid_kubernetes(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("obj", all_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_every_object_is_owned_and_labelled(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    assert meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "mlrollout.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "fraud",
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    for key in ("name", "instance", "component", "part-of", "managed-by"):
        assert f"app.kubernetes.io/{key}" in meta["labels"]


def test_revision_deployment_runs_the_model_from_its_uri_hardened() -> None:
    dep = b.revision_deployment(OWNER, MODEL, SERVING, "canary")
    assert dep["metadata"]["name"] == "fraud-v2-5f3a9c"
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["args"] == [
        "mlrollout", "serve", "$(MODEL_URI)", "--host", "0.0.0.0", "--deployment", "fraud",
        "--track", "canary", "--port", "8080", "--sha256", "$(MLROLLOUT_MODEL_SHA256)",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MODEL_URI"] == "s3://m/v2.tar.gz"
    assert env["MLROLLOUT_MODEL_SHA256"] == "ab" * 32
    assert env["OMP_NUM_THREADS"] == "1"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    assert {b.CACHE_DIR, b.TMP_DIR} <= mounted
    assert c["resources"] == SERVING.resources
    assert dep["spec"]["replicas"] == 2
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    labels = pod["metadata"]["labels"]
    assert labels[b.LABEL_REVISION] == "v2-5f3a9c"
    assert labels[b.LABEL_TRACK] == "canary"
    assert labels["app.kubernetes.io/version"] == "2.0"
    # The selector must be a subset of the pod labels and must not contain the track.
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert b.LABEL_TRACK not in selector


def test_autoscaled_revision_leaves_replicas_to_the_hpa() -> None:
    serving = b.Serving(image="img", autoscaling=b.Autoscaling(2, 5))
    dep = b.revision_deployment(OWNER, MODEL, serving, "stable")
    assert "replicas" not in dep["spec"]
    hpa = b.revision_hpa(OWNER, MODEL, b.Autoscaling(2, 5))
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]


def test_track_services_select_by_revision() -> None:
    svc = b.track_service(OWNER, "stable", "v1-0a1b2c")
    assert svc["metadata"]["name"] == "fraud-stable"
    assert svc["spec"]["selector"][b.LABEL_REVISION] == "v1-0a1b2c"
    assert b.LABEL_TRACK not in svc["spec"]["selector"]


def test_revision_service_matches_its_deployment_and_url() -> None:
    dep = b.revision_deployment(OWNER, MODEL, SERVING, "canary")
    svc = b.revision_service(OWNER, MODEL.revision)
    assert svc["metadata"]["name"] == dep["metadata"]["name"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    url = b.revision_url(OWNER, MODEL.revision)
    assert url == "http://fraud-v2-5f3a9c.ml.svc:8080"
    assert b.revision_of_url("fraud", url) == MODEL.revision


@pytest.mark.parametrize(
    "url", ["http://other-x.ml.svc:8080", "http://fraud-.ml.svc", "http://127.0.0.1:8001"]
)
def test_revision_of_foreign_url_is_none(url: str) -> None:
    assert b.revision_of_url("fraud", url) is None


def test_routes_configmap_holds_the_table_as_json() -> None:
    cm = b.routes_configmap(OWNER, TABLE)
    assert cm["metadata"]["name"] == "fraud-routes"
    assert json.loads(cm["data"]["table.json"]) == TABLE


def test_router_can_read_and_patch_only_its_configmap() -> None:
    # patch: the guard's report goes into the same ConfigMap (key guard.json).
    account, role, binding, dep = b.router_objects(OWNER, SERVING)
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["fraud-routes"],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["containers"][0]["args"][:6] == [
        "mlrollout",
        "router",
        "--configmap",
        "ml/fraud-routes",
        "--host",
        "0.0.0.0",
    ]


def test_public_service_fronts_the_router() -> None:
    svc = b.public_service(OWNER)
    _, _, _, dep = b.router_objects(OWNER, SERVING)
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("fraud", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Fraud", False),
        ("-x", False),
        ("x_y", False),
    ],
)
def test_check_name(name: str, ok: bool) -> None:
    if ok:
        assert b.check_name(name) == name
    else:
        with pytest.raises(b.BuildError, match="not a valid Kubernetes name"):
            b.check_name(name)


def test_too_long_revision_name_is_a_clear_error() -> None:
    long_owner = b.Owner(name="m" * 60, namespace="ml", uid="u")
    with pytest.raises(b.BuildError, match="revision Deployment name"):
        b.revision_deployment(long_owner, MODEL, SERVING, "stable")


def test_version_label_is_sanitised() -> None:
    model = b.ModelRef(revision="r1", name="m", version="2024-01+rc/1", uri="file:///m")
    dep = b.revision_deployment(OWNER, model, SERVING, "stable")
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "2024-01_rc_1"
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


# The parts of Gateway API v1 HTTPRoute we emit, with its constraints (weights 0..1e6,
# at most 16 backendRefs, port required for Service backends).
HTTPROUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "hostnames": {"type": "array", "items": {"type": "string"}},
                "parentRefs": {
                    "type": "array",
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "namespace": {"type": "string"},
                            "sectionName": {"type": "string"},
                            "group": {"type": "string"},
                            "kind": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "rules": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matches": {"type": "array"},
                            "backendRefs": {
                                "type": "array",
                                "maxItems": 16,
                                "items": {
                                    "type": "object",
                                    "required": ["name", "port"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "kind": {"const": "Service"},
                                        "name": {"type": "string", "maxLength": 253},
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "weight": {
                                            "type": "integer",
                                            "minimum": 0,
                                            "maximum": 1000000,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_http_route_matches_gateway_api_shape() -> None:
    import jsonschema

    backends = {"stable": ("fraud-v1-0a1b2c", 80), "canary": ("fraud-v2-5f3a9c", 20)}
    parents = [{"name": "public", "namespace": "gw", "sectionName": None}]
    route = b.http_route(
        OWNER, backends, parents, ["fraud.example.com"], {"mlrollout.io/table": "{}"}
    )
    jsonschema.validate(route, HTTPROUTE_SCHEMA)
    refs = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
    assert refs == {"fraud-v1-0a1b2c": 80, "fraud-v2-5f3a9c": 20}
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gw"}]


def test_model_server_and_router_pods_drain_before_they_stop() -> None:
    """A retired revision keeps serving while the router moves off it (no dropped requests)."""
    from mlrollout.operator.builders import DRAIN_SECONDS

    objs = [o for o in all_objects() if o["kind"] == "Deployment"]
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs} >= {
        "model-server",
        "router",
    }
    for obj in objs:
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(DRAIN_SECONDS)]
        grace = obj["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace > DRAIN_SECONDS


def test_model_server_scratch_volumes_have_size_limits() -> None:
    """Issue 12 item 6: a hostile artifact must not fill the node's disk. The cache holds a
    download and its unpacked copy, each capped by the server (MLROLLOUT_MAX_ARTIFACT_BYTES)."""
    from mlrollout.operator.model import parse_quantity
    from mlrollout.services.model import artifact

    def limits(serving: b.Serving) -> dict[str, float]:
        dep = b.revision_deployment(OWNER, MODEL, serving, "canary")
        return {
            v["name"]: parse_quantity(v["emptyDir"]["sizeLimit"])
            for v in dep["spec"]["template"]["spec"]["volumes"]
        }

    default = limits(SERVING)
    assert default["cache"] >= 2 * artifact.DEFAULT_MAX_BYTES
    assert default["cache"] <= 2 * artifact.DEFAULT_MAX_BYTES + (1 << 30)
    assert 0 < default["tmp"] <= 1 << 30
    # A larger cap set through serving.env gets a cache that holds it.
    env = {**SERVING.env, "MLROLLOUT_MAX_ARTIFACT_BYTES": str(4 << 30)}
    bigger = limits(b.Serving(image="img", env=env))
    assert bigger["cache"] >= 2 * (4 << 30)
