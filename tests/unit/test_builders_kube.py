"""Pure parts of the Kubernetes effect layer: paths, no-op detection, readiness, mapping."""

from __future__ import annotations

from typing import Any

import pytest
from mlrollout.operator import k8s_runtime as kr
from mlrollout.operator.kube import Resource, is_subset, resource_of
from mlrollout.operator.model import Serving


@pytest.mark.parametrize(
    ("resource", "args", "path"),
    [
        (
            Resource("v1", "configmaps"),
            ("ml", "fraud-routes"),
            "/api/v1/namespaces/ml/configmaps/fraud-routes",
        ),
        (
            Resource("apps/v1", "deployments"),
            ("ml", None),
            "/apis/apps/v1/namespaces/ml/deployments",
        ),
        (
            resource_of("ModelDeployment"),
            ("ml", "fraud", "status"),
            "/apis/mlrollout.io/v1alpha1/namespaces/ml/modeldeployments/fraud/status",
        ),
        (Resource("v1", "namespaces", namespaced=False), (None, "ml"), "/api/v1/namespaces/ml"),
    ],
)
def test_resource_paths(resource: Resource, args: tuple[Any, ...], path: str) -> None:
    assert resource.path(*args) == path


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'Pod' is not one the operator manages"):
        resource_of("Pod")


@pytest.mark.parametrize(
    ("desired", "actual", "same"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # server-added fields do not count
        ({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": 1}, {}, False),
        ({"l": [1, 2]}, {"l": [1, 2, 3]}, False),  # lists are replaced whole by merge-patch
        ({"l": [{"n": 1}]}, {"l": [{"n": 1, "default": True}]}, True),
        ({"a": {"x": 1}}, {"a": "x"}, False),
    ],
)
def test_is_subset(desired: Any, actual: Any, same: bool) -> None:
    assert is_subset(desired, actual) is same


def dep(generation: int, observed: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "readyReplicas": ready},
    }


@pytest.mark.parametrize(
    ("obj", "want", "ready", "message"),
    [
        (dep(2, 2, 2), 2, True, "2/2 replicas ready"),
        (dep(2, 2, 1), 2, False, "1/2 replicas ready"),
        (dep(3, 2, 2), 2, False, "waiting for the Deployment controller"),
        (dep(1, 1, 0), 0, False, "scaled to zero"),
        ({"metadata": {"generation": 1}}, 1, False, "waiting for the Deployment controller"),
    ],
)
def test_deployment_ready(obj: dict[str, Any], want: int, ready: bool, message: str) -> None:
    assert kr.deployment_ready(obj, want) == (ready, message)


def test_to_serving_maps_the_spec() -> None:
    serving = Serving.model_validate(
        {
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
            "env": [{"name": "A", "value": "1"}],
            "image": "img:1",
        }
    )
    out = kr.to_serving(serving, router_image="router:1")
    assert out.image == "img:1" and out.router_image == "router:1"
    assert out.autoscaling is not None and (
        out.autoscaling.min_replicas,
        out.autoscaling.max_replicas,
    ) == (2, 4)
    assert out.env == {"A": "1"}
    assert out.resources == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
