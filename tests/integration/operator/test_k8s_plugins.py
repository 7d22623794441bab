"""The Kubernetes plug-ins (runtime, ConfigMap and HTTPRoute routers) against the emulator.

No operator process here: these call ``k8s_runtime`` directly, so each write can be
counted. A steady deployment must cost reads only.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest
from mlrollout.operator import builders as b
from mlrollout.operator import k8s_routers as routers
from mlrollout.operator import k8s_runtime as kr
from mlrollout.operator.interfaces import DeploymentKey, Event, RevisionSpec
from mlrollout.operator.kube import Kube
from mlrollout.operator.model import ModelRef, Serving, Traffic
from mlrollout.services.router.table import RoutingTable, parse_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kube(cluster: Any) -> Kube:
    config = kubernetes.client.Configuration()
    config.host = cluster.url
    return Kube(config, timeout=5)


def _doc(table: RoutingTable | None) -> dict[str, Any] | None:
    """The document a router pod reads back (tables cross the TrafficRouter typed)."""
    return None if table is None else table.to_doc()


def owner_in(kube: Kube, ns: str) -> b.Owner:
    md = kube.create(
        {
            "apiVersion": "mlrollout.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": ns},
            "spec": {"model": {"name": "m", "version": "1", "uri": "https://x/m.tgz"}},
        }
    )
    return b.Owner("m", ns, md["metadata"]["uid"])


def spec(version: str, track: str = "stable") -> RevisionSpec:
    model = ModelRef(name="m", version=version, uri=f"https://x/m-{version}.tgz")
    return RevisionSpec(
        revision=f"r{version}", track=track, model=model, serving=Serving(replicas=2)
    )  # type: ignore[arg-type]


def writes(cluster: Any, ns: str) -> dict[str, int]:
    return cluster.call(
        lambda e: {
            k: v
            for k, v in e.counts.items()
            if k.endswith(f" {ns}") and "modeldeployments" not in k
        }
    )


def test_runtime_is_idempotent_and_stops_unwanted_revisions(cluster: Any, kube: Kube) -> None:
    ns = "plugins-runtime"
    owner = owner_in(kube, ns)
    events: list[Event] = []
    runtime = kr.KubeRuntime(kube, owner, Traffic(), events.append)
    key = DeploymentKey(ns, "m")

    states = runtime.ensure_revisions(key, {"r1": spec("1")})
    assert states["r1"].ready and states["r1"].url == "http://m-r1.plugins-runtime.svc:8080"
    first = writes(cluster, ns)
    runtime.ensure_revisions(key, {"r1": spec("1")})
    assert writes(cluster, ns) == first  # nothing re-written

    cluster.call(lambda e: e.unready.add("m-r2"))
    states = runtime.ensure_revisions(key, {"r1": spec("1"), "r2": spec("2", "canary")})
    assert not states["r2"].ready and "waiting" in states["r2"].message
    canary = kube.get("Deployment", ns, "m-r2")
    assert canary is not None and canary["metadata"]["labels"][b.LABEL_TRACK] == "canary"

    # Promotion: r2 is wanted as the only revision; it keeps the track it started with.
    runtime.ensure_revisions(key, {"r2": spec("2", "stable")})
    assert cluster.names("apps/v1/deployments", ns) == {"m-r2", "m-router"}
    assert {"m-r2", "m"} <= cluster.names("v1/services", ns)
    assert "m-r1" not in cluster.names("v1/services", ns)
    assert kube.get("Deployment", ns, "m-r2")["metadata"]["labels"][b.LABEL_TRACK] == "canary"


def test_configmap_router_round_trips_and_points_track_services(cluster: Any, kube: Kube) -> None:
    ns = "plugins-cm"
    owner = owner_in(kube, ns)
    router = routers.ConfigMapRouter(kube, owner)
    assert router.get_routes() is None
    table = {
        "generation": 1,
        "deployment": "m",
        "backends": {
            "stable": {"url": b.revision_url(owner, "r1"), "version": "1"},
            "canary": {"url": b.revision_url(owner, "r2"), "version": "2"},
        },
        "weights": {"stable": 80, "canary": 20},
        "stickyHeader": None,
        "shadowPercent": 0,
    }
    router.set_routes(parse_table(table))
    assert _doc(router.get_routes()) == table
    assert kube.get("Service", ns, "m-canary")["spec"]["selector"][b.LABEL_REVISION] == "r2"

    promoted = {
        **table,
        "generation": 2,
        "backends": {"stable": table["backends"]["canary"]},
        "weights": {"stable": 100},
    }
    router.set_routes(parse_table(promoted))
    assert _doc(router.get_routes()) == promoted
    assert kube.get("Service", ns, "m-stable")["spec"]["selector"][b.LABEL_REVISION] == "r2"
    assert kube.get("Service", ns, "m-canary") is None


def test_configmap_router_ignores_a_corrupt_table(cluster: Any, kube: Kube) -> None:
    ns = "plugins-corrupt"
    owner = owner_in(kube, ns)
    cm = b.routes_configmap(owner, {})
    cm["data"]["table.json"] = "{not json"
    kube.create(cm)
    assert routers.ConfigMapRouter(kube, owner).get_routes() is None


def test_gateway_router_sets_weights_on_the_http_route(cluster: Any, kube: Kube) -> None:
    ns = "plugins-gw"
    owner = owner_in(kube, ns)
    traffic = Traffic.model_validate(
        {
            "router": "gatewayAPI",
            "gateway": {
                "parentRefs": [{"name": "public", "namespace": "gw"}],
                "hostnames": ["m.example.com"],
            },
        }
    )
    router = routers.make_router(kube, owner, traffic)
    assert isinstance(router, routers.HTTPRouteRouter)
    table = {
        "generation": 4,
        "deployment": "m",
        "backends": {
            "stable": {"url": b.revision_url(owner, "r1"), "version": "1"},
            "canary": {"url": b.revision_url(owner, "r2"), "version": "2"},
        },
        "weights": {"stable": 90, "canary": 10},
    }
    router.set_routes(parse_table(table))
    route = kube.get("HTTPRoute", ns, "m")
    refs = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
    assert refs == {"m-r1": 90, "m-r2": 10}
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gw"}]
    assert _doc(router.get_routes()) == table
    router.set_routes(
        parse_table(
            {
                **table,
                "generation": 5,
                "backends": {"stable": table["backends"]["canary"]},
                "weights": {"stable": 100},
            }
        )
    )
    route = kube.get("HTTPRoute", ns, "m")
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [
        ("m-r2", 100)
    ]
    assert json.loads(route["metadata"]["annotations"][routers.TABLE_ANNOTATION])["generation"] == 5


def test_autoscaling_adds_an_hpa_and_switching_it_off_removes_it(cluster: Any, kube: Kube) -> None:
    ns = "plugins-hpa"
    owner = owner_in(kube, ns)
    runtime = kr.KubeRuntime(kube, owner, Traffic(), lambda e: None)
    key = DeploymentKey(ns, "m")
    auto = Serving.model_validate({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}})
    wanted = {"r1": RevisionSpec("r1", "stable", spec("1").model, auto)}
    runtime.ensure_revisions(key, wanted)
    hpa = kube.get("HorizontalPodAutoscaler", ns, "m-r1")
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert "replicas" not in kube.get("Deployment", ns, "m-r1")["spec"]
    runtime.ensure_revisions(key, {"r1": spec("1")})
    assert kube.get("HorizontalPodAutoscaler", ns, "m-r1") is None
    assert kube.get("Deployment", ns, "m-r1")["spec"]["replicas"] == 2


def test_apply_recovers_from_a_create_race_and_errors_are_typed(cluster: Any, kube: Kube) -> None:
    from mlrollout.operator.kube import Conflict, KubeError, NotFound

    ns = "plugins-kube"
    owner = owner_in(kube, ns)
    svc = b.public_service(owner)
    kube.create(svc)
    with pytest.raises(Conflict, match="already exists"):
        kube.create(svc)
    changed = {
        **svc,
        "spec": {**svc["spec"], "ports": [{"name": "http", "port": 81, "targetPort": "http"}]},
    }
    # ``current`` is deliberately stale (None): the create answers 409, apply patches instead.
    kube.apply(changed, current=None)
    assert kube.get("Service", ns, "m")["spec"]["ports"][0]["port"] == 81
    with pytest.raises(NotFound):
        kube.merge_patch("Service", ns, "missing", {"metadata": {"labels": {"a": "b"}}})
    assert kube.delete("Service", ns, "missing") is False
    with pytest.raises(KubeError, match=r"415 UnsupportedMediaType"):
        kube.request(
            "PATCH",
            "/api/v1/namespaces/plugins-kube/services/m",
            body={},
            content_type="application/strategic-merge-patch+json",
        )


def test_unreachable_api_is_a_clear_error() -> None:
    from mlrollout.operator.kube import KubeError
    from mlrollout.services.netutil import free_port

    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KubeError, match="Unreachable") as info:
        Kube(config, timeout=1).get("Service", "ns", "x")
    assert info.value.status == 0


def test_operator_refuses_bad_settings_with_one_line(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    kopf = Path(sys.executable).parent / "kopf"
    env = {**os.environ, "MLROLLOUT_API_TIMEOUT": "often"}
    out = subprocess.run(
        [str(kopf), "run", "--standalone", "-m", "mlrollout.operator.main", "--namespace", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "MLROLLOUT_API_TIMEOUT='often' is not a number" in out.stderr


def test_switching_the_router_type_removes_the_other_path(cluster: Any, kube: Kube) -> None:
    # Left behind, an HTTPRoute keeps sending gateway traffic with frozen weights (to
    # Services that a later promotion deletes); a router keeps a stale table.
    ns = "plugins-switch"
    owner = owner_in(kube, ns)
    key = DeploymentKey(ns, "m")
    gateway = Traffic.model_validate(
        {"router": "gatewayAPI", "gateway": {"parentRefs": [{"name": "public"}]}}
    )
    table = {
        "generation": 1,
        "deployment": "m",
        "backends": {"stable": {"url": b.revision_url(owner, "r1"), "version": "1"}},
        "weights": {"stable": 100},
        "stickyHeader": None,
        "shadowPercent": 0,
    }
    shared = {"Deployment": "m-router", "Service": "m", "ServiceAccount": "m-router"}

    kr.KubeRuntime(kube, owner, Traffic(), lambda e: None).ensure_revisions(key, {"r1": spec("1")})
    routers.make_router(kube, owner, Traffic()).set_routes(parse_table(table))
    assert all(kube.get(kind, ns, name) for kind, name in shared.items())

    kr.KubeRuntime(kube, owner, gateway, lambda e: None).ensure_revisions(key, {"r1": spec("1")})
    routers.make_router(kube, owner, gateway).set_routes(parse_table(table))
    assert kube.get("HTTPRoute", ns, "m") is not None
    assert not any(kube.get(kind, ns, name) for kind, name in shared.items())
    assert kube.get("ConfigMap", ns, "m-routes") is None

    kr.KubeRuntime(kube, owner, Traffic(), lambda e: None).ensure_revisions(key, {"r1": spec("1")})
    assert kube.get("HTTPRoute", ns, "m") is None
    assert all(kube.get(kind, ns, name) for kind, name in shared.items())
