"""The ModelDeployment models: defaults, validation with clear messages, CEL mirrors, status."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from mlrollout.operator import model as m
from pydantic import ValidationError

MODEL = {"name": "fraud", "version": "v1", "uri": "https://models.example/v1.tar.gz"}


def with_(**parts: Any) -> dict[str, Any]:
    return {"model": MODEL, **parts}


def test_minimal_spec_gets_sensible_defaults() -> None:
    spec = m.ModelDeploymentSpec.model_validate({"model": MODEL})
    assert spec.serving.effective_replicas == 1
    assert [s.weight for s in spec.rollout.steps] == [10, 50]
    assert spec.rollout.analysis.on_provider_error.action == "hold"
    assert spec.rollout.analysis.metrics.error_rate.enabled
    assert spec.rollout.analysis.metrics.input_drift is None
    assert spec.traffic.router == "builtin" and spec.traffic.shadow_percent == 0


# (spec, message fragment, CEL rule message mirrored by the same validator or None)
BAD: list[tuple[dict[str, Any], str, str | None]] = [
    (
        with_(serving={"replicas": 2, "autoscaling": {}}),
        "either replicas or autoscaling",
        "set either replicas or autoscaling, not both",
    ),
    (
        with_(serving={"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "minReplicas must be <=",
        "minReplicas must be <= maxReplicas",
    ),
    (
        with_(rollout={"steps": [{"weight": 50}, {"weight": 20}]}),
        "non-decreasing",
        "steps weights must be non-decreasing",
    ),
    (
        with_(rollout={"steps": [{"weight": 0}]}),
        "shadowPercent > 0",
        "a step with weight 0 needs traffic.shadowPercent > 0",
    ),
    (
        with_(notifications={"webhooks": [{"url": "http://127.0.0.1:9/h", "timeout": "2m"}]}),
        "timeout must be in (0s, 30s]",
        "timeout must be in (0s, 30s]",
    ),
    (
        with_(traffic={"router": "gatewayAPI"}),
        "gateway is required",
        "gateway is required when router is gatewayAPI",
    ),
    (
        with_(
            traffic={
                "router": "gatewayAPI",
                "gateway": {"parentRefs": [{"name": "gw"}]},
                "shadowPercent": 5,
            }
        ),
        "needs the builtin router",
        "shadowPercent needs the builtin router",
    ),
    (
        with_(
            traffic={
                "router": "gatewayAPI",
                "gateway": {"parentRefs": [{"name": "gw"}]},
                "agreement": {"percent": 10},
            }
        ),
        "traffic.agreement needs the builtin router",
        "agreement needs the builtin router",
    ),
    (
        with_(
            traffic={
                "router": "gatewayAPI",
                "gateway": {"parentRefs": [{"name": "gw"}]},
                "trackHeader": "weighted",
            }
        ),
        "traffic.trackHeader needs the builtin router",
        "trackHeader needs the builtin router",
    ),
    (with_(traffic={"agreement": {"percent": 101}}), "less than or equal to 100", None),
    (with_(traffic={"agreement": {"source": "both"}}), "'canary' or 'stable'", None),
    (with_(traffic={"guard": {"alpha": 0}}), "greater than 0", None),
    (with_(traffic={"guard": {"maxRatio": 0.5}}), "greater than or equal to 1", None),
    (
        with_(rollout={"analysis": {"metrics": {"custom": [{"name": "x", "query": "up"}]}}}),
        "set min, max or both",
        "set min, max or both",
    ),
    (
        with_(
            rollout={
                "analysis": {
                    "metrics": {"custom": [{"name": "x", "query": "up", "min": 2, "max": 1}]}
                }
            }
        ),
        "min must be <= max",
        "min must be <= max",
    ),
    # Zero durations: a hot analysis loop, queries over nothing, every canary rolled back.
    (
        with_(rollout={"analysis": {"interval": "0s"}}),
        "analysis.interval must be longer than 0s",
        "interval must be longer than 0s",
    ),
    (
        with_(rollout={"analysis": {"window": "0ms"}}),
        "analysis.window must be longer than 0s",
        "window must be longer than 0s",
    ),
    (
        with_(rollout={"analysis": {"stepDeadline": "0s"}}),
        "analysis.stepDeadline must be longer than 0s",
        "stepDeadline must be longer than 0s",
    ),
    # The agreement gate tests rows the router mirrors: without mirroring it would hold
    # every step for ever.
    (
        with_(rollout={"analysis": {"metrics": {"agreement": {"min": 0.9}}}}),
        "needs traffic.agreement.percent > 0",
        "the agreement gate needs traffic.agreement.percent > 0",
    ),
    (
        with_(rollout={"analysis": {"maxStaleness": "0m"}}),
        "analysis.maxStaleness must be longer than 0s",
        "maxStaleness must be longer than 0s",
    ),
    (
        with_(rollout={"progressDeadline": "0s"}),
        "rollout.progressDeadline must be longer than 0s",
        "progressDeadline must be longer than 0s",
    ),
    (with_(rollout={"steps": [{"weight": 101}]}), "less than or equal to 100", None),
    (with_(rollout={"steps": []}), "at least 1 item", None),
    (with_(model={**MODEL, "sha256": "abc"}), "pattern", None),
    (with_(serving={"replica": 2}), "Extra inputs are not permitted", None),
    # Issue 13: a bad duration says what to write, not the regex.
    (with_(rollout={"analysis": {"interval": "30 seconds"}}), "use e.g. 30s, 5m, 1h30m", None),
    (with_(rollout={"progressDeadline": "10min"}), "use e.g. 30s, 5m, 1h30m", None),
    (with_(rollout={"steps": [{"weight": 10, "pause": "soon"}]}), "or 'manual'", None),
    (with_(notifications={"webhooks": [{"url": "ftp://x"}]}), "pattern", None),
    (
        with_(notifications={"webhooks": [{"url": "http://x", "events": ["started"]}]}),
        "'rolloutStarted', 'promoted', 'rolledBack' or 'stableDrift'",
        None,
    ),
    ({"model": {"name": "fraud"}}, "Field required", None),
    (
        with_(rollout={"analysis": {"onProviderError": {"action": "ignore"}}}),
        "'hold' or 'rollback'",
        None,
    ),
    (
        with_(serving={"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}),
        "A given twice",
        None,  # the API server refuses it through x-kubernetes-list-type: map
    ),
    # Issue 12 item 7: what the API server accepted and only the operator refused, and
    # durations Go cannot hold.
    (
        with_(serving={"resources": {"requests": {"gpu": "1"}}}),
        "unknown resource name 'gpu'",
        "requests: unknown resource name (use cpu, memory, ephemeral-storage, "
        "hugepages-<size> or a domain-qualified name)",
    ),
    (
        with_(serving={"resources": {"limits": {"gpus": "1"}}}),
        "unknown resource name 'gpus'",
        "limits: unknown resource name (use cpu, memory, ephemeral-storage, "
        "hugepages-<size> or a domain-qualified name)",
    ),
    (
        with_(serving={"resources": {"requests": {"cpu": -1}}}),
        "invalid quantity '-1'",
        "requests: a quantity may not be negative",
    ),
    (
        with_(serving={"resources": {"limits": {"cpu": -2}}}),
        "invalid quantity '-2'",
        "limits: a quantity may not be negative",
    ),
    (
        with_(serving={"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}),
        "requests.cpu 2 is more than limits.cpu 1500m",
        "a request may not exceed its limit",
    ),
    (
        with_(rollout={"steps": [{"weight": 10, "pause": "2562048h"}]}),
        "longer than Go allows",
        f"pause must be a duration Go can hold (at most {m.MAX_DURATION_TEXT})",
    ),
    (
        with_(rollout={"analysis": {"onProviderError": {"maxHold": "99999999999h"}}}),
        "longer than Go allows",
        f"maxHold must be a duration Go can hold (at most {m.MAX_DURATION_TEXT})",
    ),
    (with_(rollout={"steps": [{"weight": "10"}]}), "valid integer", None),
    (with_(rollout={"steps": [{"weight": True}]}), "valid integer", None),
    (
        with_(rollout={"analysis": {"metrics": {"errorRate": {"enabled": "yes"}}}}),
        "valid boolean",
        None,
    ),
    (with_(rollout={"progressDeadline": "2562048h"}), "longer than Go allows", None),
]


@pytest.mark.parametrize(("raw", "fragment", "_cel"), BAD)
def test_bad_specs_are_rejected_with_a_clear_message(
    raw: dict[str, Any], fragment: str, _cel: str | None
) -> None:
    with pytest.raises(ValidationError) as info:
        m.ModelDeploymentSpec.model_validate(raw)
    assert fragment in str(info.value)


def test_every_cel_rule_has_a_matching_python_validator_case() -> None:
    cel_messages = {rule["message"] for rules in m.CEL_RULES.values() for rule in rules}
    covered = {cel for _, _, cel in BAD if cel is not None}
    assert cel_messages == covered


def test_spec_is_frozen_and_accepts_python_names() -> None:
    spec = m.ModelDeploymentSpec.model_validate(
        {"model": MODEL, "traffic": {"sticky_header": "x-user-id"}}
    )
    assert spec.traffic.sticky_header == "x-user-id"
    with pytest.raises(ValidationError):
        spec.traffic.shadow_percent = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5m", 90)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert m.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "-1s", "1d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        m.parse_duration(text)


def test_revision_id_follows_the_model_spec_only() -> None:
    base = m.ModelRef.model_validate(MODEL)
    assert m.revision_id(base) == m.revision_id(m.ModelRef.model_validate(dict(MODEL)))
    changed = [
        {**MODEL, "version": "v2"},
        {**MODEL, "uri": "https://models.example/other.tar.gz"},
        {**MODEL, "sha256": "a" * 64},
    ]
    ids = {m.revision_id(m.ModelRef.model_validate(c)) for c in changed}
    assert len(ids) == 3 and m.revision_id(base) not in ids
    assert len(m.revision_id(base)) == 10


def test_status_round_trips_through_json() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rev = m.Revision.of(m.ModelRef.model_validate(MODEL), "canary")
    status = m.ModelDeploymentStatus(
        phase=m.Phase.PROGRESSING,
        canary=rev,
        stable=rev.model_copy(update={"id": "x", "track": "stable"}),
        step_started_at=now,
        analysis=m.AnalysisStatus(
            last_run_at=now,
            verdicts=[
                m.Verdict(check="errorRate", outcome="fail", value=0.1, threshold=0.05, samples=9)
            ],
        ),
        history=[m.HistoryEntry(revision="x", version="v0", outcome="promoted", at=now)],
    )
    stored = status.to_json()
    assert stored["stepStartedAt"] == "2026-01-01T00:00:00Z"
    assert m.ModelDeploymentStatus.model_validate(stored) == status


def test_status_from_another_operator_version_still_loads() -> None:
    loaded = m.ModelDeploymentStatus.model_validate({"phase": "Healthy", "futureField": {"a": 1}})
    assert loaded.phase is m.Phase.HEALTHY


def test_non_finite_verdict_numbers_are_not_stored() -> None:
    v = m.Verdict(check="custom", outcome="fail", value=float("inf"), threshold=float("nan"))
    assert (
        "value"
        not in m.ModelDeploymentStatus(analysis=m.AnalysisStatus(verdicts=[v])).to_json()[
            "analysis"
        ]["verdicts"][0]
    )


# --------------------------------------------------------------------------- CEL


def _cel_failures(raw: dict[str, Any]) -> set[str]:
    """Messages of the CRD's CEL rules that fail on ``raw`` after API-server defaulting."""
    pytest.importorskip("celpy", reason="cel-python (test extra) evaluates CEL rules")
    from mlrollout.operator import crd

    from tests.doubles.apiserver import cel_failures, ints_for_cel, prune_nulls

    schema = crd.schema_of(m.ModelDeploymentSpec)
    obj = copy.deepcopy(raw)
    prune_nulls(schema, obj)
    obj = crd.apply_defaults(schema, obj)
    # "path: message (evaluation error: ...)" -> the rule's message
    return {
        f.split(": ", 1)[1].split(" (evaluation error", 1)[0]
        for f in cel_failures(schema, ints_for_cel(schema, obj))
    }


@pytest.mark.parametrize(("raw", "cel"), [(raw, cel) for raw, _, cel in BAD if cel is not None])
def test_cel_rule_rejects_what_the_validator_rejects(raw: dict[str, Any], cel: str) -> None:
    assert cel in _cel_failures(raw)


GOOD = [
    with_(),
    with_(serving={"autoscaling": {"minReplicas": 2, "maxReplicas": 2}}),
    with_(
        rollout={"steps": [{"weight": 0}, {"weight": 0}, {"weight": 100}]},
        traffic={"shadowPercent": 10},
    ),
    with_(traffic={"router": "gatewayAPI", "gateway": {"parentRefs": [{"name": "gw"}]}}),
    with_(
        rollout={
            "analysis": {"metrics": {"custom": [{"name": "x", "query": "up", "min": 1, "max": 1}]}}
        }
    ),
]


@pytest.mark.parametrize("raw", GOOD)
def test_cel_rules_accept_what_the_validators_accept(raw: dict[str, Any]) -> None:
    m.ModelDeploymentSpec.model_validate(raw)
    assert _cel_failures(raw) == set()


def test_named_lists_are_list_maps_in_the_crd() -> None:
    """Duplicate names are refused by the API server too, not kept last-wins."""
    from mlrollout.operator.crd import crd

    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    env = spec["properties"]["serving"]["properties"]["env"]
    custom = spec["properties"]["rollout"]["properties"]["analysis"]["properties"]["metrics"][
        "properties"
    ]["custom"]
    for field in (env, custom):
        assert field["x-kubernetes-list-type"] == "map"
        assert field["x-kubernetes-list-map-keys"] == ["name"]
        assert "name" in field["items"]["required"]


def test_a_bad_duration_never_shows_the_regex() -> None:
    with pytest.raises(ValidationError) as info:
        m.ModelDeploymentSpec.model_validate(with_(rollout={"analysis": {"window": "2 min"}}))
    assert "should match pattern" not in str(info.value)
