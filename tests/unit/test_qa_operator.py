"""Acceptance findings on the operator: each test pins a defect that was fixed."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from mlrollout.operator import builders as b
from mlrollout.operator import crd
from mlrollout.operator import handlers as h
from mlrollout.operator.interfaces import Event, Sample
from mlrollout.operator.kube import Kube
from mlrollout.operator.model import ModelDeploymentSpec, Resources
from mlrollout.operator.reconcile import reconcile
from mlrollout.operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LONGEST = "m" * b.MAX_OWNER_NAME

# Every child is named {md}-{10-hex revision} at most, and Services (named after the
# ModelDeployment) must be DNS-1035 labels: at most 63 characters, starting with a letter.
NAMES = [
    ("fraud", True),
    ("fraud-detector-2", True),
    (LONGEST, True),
    (LONGEST + "m", False),
    ("1fraud", False),
    ("fraud.v2", False),
    ("fraud-", False),
]


@pytest.mark.parametrize(("name", "ok"), NAMES)
def test_owner_name_must_fit_every_child_name(name: str, ok: bool) -> None:
    if ok:
        assert b.check_owner_name(name) == name
        owner = b.Owner(name=name, namespace="ml", uid="u")
        assert b.revision_name(name, "0123456789")
        assert b.revision_service(owner, "0123456789")["metadata"]["name"][0].isalpha()
    else:
        with pytest.raises(b.BuildError, match="ModelDeployment name"):
            b.check_owner_name(name)


@pytest.mark.parametrize(("name", "ok"), NAMES)
def test_crd_rejects_names_the_children_cannot_carry(name: str, ok: bool) -> None:
    root = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rule = root["properties"]["metadata"]["properties"]["name"]
    passed = len(name) <= rule["maxLength"] and re.match(rule["pattern"], name) is not None
    assert passed is ok


class _Runtime:
    def __init__(self) -> None:
        self.calls = 0

    def ensure_revisions(self, deployment: Any, wanted: Any) -> dict[str, Any]:
        self.calls += 1
        return {}

    def record(self, deployment: Any, event: Event) -> None:
        raise AssertionError("events go through emit")


class _Plugins:
    def __init__(self) -> None:
        self.runtimes: list[_Runtime] = []

    def runtime(self, owner: b.Owner, traffic: Any, emit: h.Emit) -> _Runtime:
        self.runtimes.append(_Runtime())
        return self.runtimes[-1]

    def router(self, owner: b.Owner, traffic: Any) -> Any:
        raise AssertionError("no router for an object whose children cannot be named")


class _NoMetrics:
    def query(self, promql: str, now: datetime) -> list[Sample]:
        return []

    def is_online(self) -> bool:
        return True


def test_bad_object_name_is_an_invalid_spec_not_an_endless_retry() -> None:
    plugins = _Plugins()
    deps = h.Deps(
        settings=OperatorSettings(),
        plugins=plugins,
        metrics=_NoMetrics(),
        reconcile=reconcile,
        clock=lambda: NOW,
        monotonic=lambda: 0.0,
    )
    events: list[Event] = []
    body = {
        "metadata": {"name": "fraud.v2", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"model": {"name": "fraud", "version": "1", "uri": "http://m/1.tgz"}},
        "status": {},
    }
    patch = kopf.Patch()
    h.reconcile_object(deps, body=body, patch=patch, emit=events.append, reason="create")
    status = patch["status"]
    assert status["phase"] == "InvalidSpec"
    assert "fraud.v2" in status["message"]
    (cond,) = [c for c in status["conditions"] if c["type"] == "SpecValid"]
    assert cond["status"] == "False"
    assert [e.reason for e in events] == ["InvalidSpec"]
    assert all(r.calls == 0 for r in plugins.runtimes)
    # The next tick repeats nothing: same status, no second event.
    again = kopf.Patch()
    body["status"] = status
    h.reconcile_object(deps, body=body, patch=again, emit=events.append, reason="timer")
    assert again == {}
    assert len(events) == 1


# --- container resources: what the API server would refuse must not reach it -------------


def _serving(resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {"name": "fraud", "version": "1", "uri": "http://m/1.tgz"},
        "serving": {"resources": resources},
    }


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        # The default limit (memory 1Gi) still applies when only requests are given.
        ({"requests": {"memory": "2Gi"}}, "requests.memory 2Gi is more than limits.memory 1Gi"),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}, "requests.cpu 2 is more than"),
        ({"requests": {"cpu": "lots"}}, "quantity"),
        ({"limits": {"memory": "1 Gi"}}, "quantity"),
        ({"requests": {"gpu": "1"}}, "resource name"),
    ],
)
def test_resources_the_api_server_would_refuse_are_invalid_spec(
    resources: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ModelDeploymentSpec.model_validate(_serving(resources))


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"cpu": "500m", "memory": "1Gi"}},
        {"requests": {"memory": "1024Mi"}, "limits": {"memory": "1Gi"}},
        {"requests": {"cpu": "0.5", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
        {"requests": {"ephemeral-storage": "1e9"}, "limits": {"memory": "2G"}},
        {"requests": {"hugepages-2Mi": "100Mi"}, "limits": {"hugepages-2Mi": "100Mi"}},
    ],
)
def test_sensible_resources_are_accepted(resources: dict[str, Any]) -> None:
    ModelDeploymentSpec.model_validate(_serving(resources))


def test_crd_refuses_malformed_quantities() -> None:
    schema = crd.schema_of(Resources)
    pattern = schema["properties"]["requests"]["additionalProperties"]["pattern"]
    assert re.match(pattern, "500m") and re.match(pattern, "1.5Gi")
    assert not re.match(pattern, "lots") and not re.match(pattern, "1 Gi")


def test_integer_quantities_are_accepted_as_in_any_deployment() -> None:
    spec = ModelDeploymentSpec.model_validate(
        _serving({"requests": {"cpu": 1, "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}})
    )
    assert spec.serving.resources.requests == {"cpu": "1", "nvidia.com/gpu": "1"}
    value_schema = crd.schema_of(Resources)["properties"]["limits"]["additionalProperties"]
    assert value_schema["x-kubernetes-int-or-string"] is True


# --- status from another operator version -------------------------------------------------


def test_one_unreadable_status_field_does_not_promote_the_canary_blind() -> None:
    from datetime import timedelta

    from mlrollout.operator.interfaces import DeploymentKey

    from tests.doubles.decide import FakeMetrics, FakeRouter, FakeRuntime

    def model(version: str) -> dict[str, Any]:
        return {"model": {"name": "fraud", "version": version, "uri": f"https://m/{version}"}}

    runtime, router, metrics = FakeRuntime(), FakeRouter(), FakeMetrics()
    key, now, status = DeploymentKey("ml", "fraud"), NOW, None
    for raw in (model("v1"), model("v2")):
        now += timedelta(seconds=30)
        status = reconcile(
            key, raw, status, now, runtime=runtime, router=router, metrics=metrics
        ).status
    assert status is not None and status["canary"]["version"] == "v2"
    # A newer operator wrote a phase this one does not know (e.g. after a downgrade).
    status = {**status, "phase": "Verifying"}
    result = reconcile(
        key,
        model("v2"),
        status,
        now + timedelta(seconds=30),
        runtime=runtime,
        router=router,
        metrics=metrics,
    )
    assert result.status["stable"]["version"] == "v1"
    assert result.status["canary"]["version"] == "v2"
    assert {s.model.version for s in runtime.running.values()} == {"v1", "v2"}


# --- Kube.apply: a field removed from the spec must leave the object -----------------------


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class _MemoryKube(Kube):
    """Kube over an in-memory store with merge-patch semantics and server-side defaults."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.patches = 0

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get(name)

    def create(self, obj: Any) -> dict[str, Any]:
        self.store[obj["metadata"]["name"]] = _defaults(obj)
        return self.store[obj["metadata"]["name"]]

    def merge_patch(self, kind: str, namespace: str, name: str, patch: Any, sub: Any = None) -> Any:
        self.patches += 1
        self.store[name] = _defaults(_merge(self.store[name], patch))
        return self.store[name]


def _defaults(obj: dict[str, Any]) -> dict[str, Any]:
    # The API server fills in container fields nobody sent, as a real one does.
    out = copy.deepcopy(obj)
    for c in out["spec"]["template"]["spec"]["containers"]:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
    return out


def _revision(limits: dict[str, str]) -> dict[str, Any]:
    owner = b.Owner(name="fraud", namespace="ml", uid="u")
    model = b.ModelRef("0123456789", "fraud", "1", "https://m/1.tgz")
    serving = b.Serving(image="img", resources={"limits": limits})
    return b.revision_deployment(owner, model, serving, "stable")


def test_a_limit_removed_from_the_spec_leaves_the_deployment() -> None:
    kube = _MemoryKube()
    kube.apply(_revision({"cpu": "2", "memory": "1Gi"}))
    kube.apply(_revision({"memory": "1Gi"}))
    (container,) = kube.store["fraud-0123456789"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    # ... and an unchanged object is still not written again.
    before = kube.patches
    kube.apply(_revision({"memory": "1Gi"}))
    assert kube.patches == before


@pytest.mark.parametrize("url", ["http://", "http://:9090", "https:///api"])
def test_prometheus_url_without_a_host_is_refused_at_start(url: str) -> None:
    from mlrollout.operator.settings import SettingsError

    with pytest.raises(SettingsError, match="MLROLLOUT_PROMETHEUS_URL"):
        OperatorSettings.from_env({"MLROLLOUT_PROMETHEUS_URL": url})


# --- controls with nothing to act on say so, once ---------------------------------------


@pytest.mark.parametrize(
    ("control", "reason"), [("promote", "PromoteIgnored"), ("resume", "ResumeIgnored")]
)
def test_a_control_with_no_canary_is_reported_once(control: str, reason: str) -> None:
    from tests.doubles.decide import Scenario

    s = Scenario({"model": {"name": "fraud", "version": "v1", "uri": "https://m/v1"}}, NOW)
    s.healthy_traffic()
    s.tick()
    assert s.phase == "Healthy"
    s.set_control(control, "t1")
    s.tick(30)
    s.tick(30)
    assert s.reasons().count(reason) == 1
    assert s.status["controls"][control] == "t1"
    assert s.phase == "Healthy"


# --- a final step at 100% leaves stable without traffic to compare with -------------------


def test_prediction_drift_does_not_hold_a_full_weight_step_forever() -> None:
    from tests.doubles.decide import Scenario, TrackTraffic

    s = Scenario(
        {
            "model": {"name": "fraud", "version": "v1", "uri": "https://m/v1"},
            "rollout": {
                "steps": [{"weight": 50}, {"weight": 100}],
                "analysis": {"interval": "30s", "metrics": {"predictionDrift": {}}},
            },
        },
        NOW,
    )
    s.healthy_traffic()
    s.tick()
    bins = {"0": 5000.0, "1": 5000.0}
    s.stable = TrackTraffic(requests=5000, prediction_bins=bins)
    s.canary = TrackTraffic(requests=5000, prediction_bins=bins)
    s.set_model("v2")
    s.tick()
    s.tick(30)
    assert s.status["currentStep"] == 1
    # 100% canary: stable serves nothing at this step (its predictions since the rollout
    # began still count).
    s.stable = TrackTraffic(prediction_bins=bins)
    s.run(120)
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"
    verdicts = {v["check"]: v for v in s.status["analysis"]["verdicts"]}
    assert verdicts["predictionDrift"]["outcome"] == "pass"
    assert verdicts["latency"]["outcome"] == "pass"
    assert "stable served no requests at this step" in verdicts["latency"]["message"]


def _prediction_verdict(results: dict[str, Any]) -> Any:
    from mlrollout.operator.decide import checks
    from mlrollout.operator.model import Analysis

    cfg = Analysis.model_validate({"metrics": {"predictionDrift": {}}})
    ctx = checks.Context(cfg, "fraud", "default", "v1", "v2")
    return checks.PredictionDrift().judge(ctx, results, checks.Risk(0.01, 0.05))


def test_prediction_drift_still_needs_canary_predictions() -> None:
    from mlrollout.operator import queries as q

    few = [Sample(labels={"bin": "0"}, value=5.0)]
    many = [Sample(labels={"bin": "0"}, value=500.0)]
    canary_few = {
        q.PREDICTION_BINS.format(track="canary"): few,
        q.PREDICTION_BINS.format(track="stable"): many,
    }
    assert _prediction_verdict(canary_few).outcome == "inconclusive"  # never a pass


def test_prediction_drift_holds_when_a_busy_stable_exports_no_predictions() -> None:
    from mlrollout.operator import queries as q

    results = {
        q.PREDICTION_BINS.format(track="canary"): [Sample(labels={"bin": "0"}, value=500.0)],
        q.PREDICTION_BINS.format(track="stable"): [],
    }
    verdict = _prediction_verdict(results)
    assert verdict.outcome == "noData" and "nothing to compare" in verdict.message


def test_model_servers_download_into_the_cache_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from mlrollout.services.model.artifact import default_cache_dir

    dep = _revision({"memory": "1Gi"})
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert Path(b.CACHE_DIR) in default_cache_dir().parents


def test_a_stable_that_stops_being_ready_after_a_rollback_is_degraded() -> None:
    from tests.doubles.decide import Scenario, TrackTraffic

    s = Scenario({"model": {"name": "fraud", "version": "v1", "uri": "https://m/v1"}}, NOW)
    s.healthy_traffic()
    s.tick()
    s.canary = TrackTraffic(requests=1000, errors=500)
    s.set_model("v2")
    s.run(90)
    assert s.phase == "RolledBack"
    s.not_ready = {"v1"}
    s.tick(30)
    assert s.phase == "Degraded" and "StableNotReady" in s.reasons()
    assert "rolled back" in s.status["message"]  # the rejection is still said
    s.not_ready = set()
    s.tick(30)
    assert s.phase == "RolledBack"
