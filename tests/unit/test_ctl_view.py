"""What `mlrollout get|status|history|promote|...` show and decide, on statuses the engine wrote."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mlrollout.operator.ctl import controls, view
from mlrollout.operator.ctl.limits import check_limits, format_value
from mlrollout.operator.model import Analysis

from tests.doubles.decide import Scenario, TrackTraffic

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def spec(feedback: bool = False, **analysis: Any) -> dict[str, Any]:
    metrics = {"feedbackAccuracy": {"minAccuracy": 0.9, "maxDecrease": 0.02}} if feedback else {}
    return {
        "model": {"name": "fraud", "version": "v1", "uri": "https://models.example/v1.tar.gz"},
        "rollout": {
            "steps": [{"weight": 10}, {"weight": 50, "pause": "manual"}],
            "progressDeadline": "5m",
            "analysis": {
                "interval": "30s",
                "minSamples": 100,
                "failureLimit": 2,
                "metrics": metrics,
                **analysis,
            },
        },
    }


def snap(s: Scenario, generation: int | None = None) -> view.Snapshot:
    events = tuple(
        view.EventRecord(e.type, e.reason, e.message, s.now - timedelta(seconds=i))
        for i, e in enumerate(reversed(s.events))
    )[::-1]
    return view.Snapshot("fraud", "default", s.spec, s.status, generation, events)


def healthy(feedback: bool = False) -> Scenario:
    s = Scenario(spec(feedback), T0)
    s.healthy_traffic()
    s.tick()
    assert s.phase == "Healthy"
    return s


def canary_running(version: str = "v2", feedback: bool = False) -> Scenario:
    s = healthy(feedback)
    s.set_model(version)
    s.tick()
    s.run(60, every=30)
    assert (s.status.get("canary") or {}).get("version") == version
    return s


def test_get_shows_phase_step_weights_versions_checks_and_events() -> None:
    s = canary_running(feedback=True)
    lines = "\n".join(view.render_get(snap(s), s.now))
    assert "Phase:       ◌ Progressing" in lines or "Paused" in lines
    assert f"Step:        {int(s.status['currentStep']) + 1}/2" in lines
    stable_w, canary_w = s.status["weights"]["stable"], s.status["weights"]["canary"]
    assert f"stable {stable_w}%   canary {canary_w}%" in lines
    assert "Stable:      v1  (revision" in lines and "Canary:      v2  (revision" in lines
    # Each check with its value, the limit as written (units), samples and verdict.
    assert "errorRate" in lines and "<= 0.05 (errors/requests)" in lines
    assert "p95 <= 1s and <= 1.5x stable" in lines
    assert ">= 0.9, drop vs stable <= 0.02" in lines  # not "vs 0.02" alone
    samples = {v["samples"] for v in s.status["analysis"]["verdicts"] if v.get("samples")}
    assert any(f"  {n}  " in lines for n in samples)
    assert "Events:" in lines and "RolloutStarted" in lines


def test_verdict_rows_read_unknown_checks_generically() -> None:
    s = canary_running()
    status = dict(s.status)
    status["analysis"] = {
        "verdicts": [
            {
                "check": "fancyNewCheck",
                "outcome": "fail",
                "value": 3.0,
                "threshold": 2.0,
                "samples": 7,
                "message": "too fancy",
                "extra": "kept",
            }
        ]
    }
    rows = view.verdict_rows(replace(snap(s), status=status))
    assert rows == [
        {
            "check": "fancyNewCheck",
            "value": "3",
            "threshold": "2",
            "limit": "",
            "samples": "7",
            "verdict": "fail",
            "message": "too fancy",
        }
    ]
    text = "\n".join(view.render_get(replace(snap(s), status=status), s.now))
    assert "vs 2" in text and "fancyNewCheck: too fancy" in text


def test_limits_have_units_and_name_the_rule() -> None:
    limits = check_limits(Analysis.model_validate({"metrics": {"latency": {"maxSeconds": 0.25}}}))
    assert limits["latency"] == "p95 <= 250ms and <= 1.5x stable"
    assert limits["errorRateVsStable"] == (
        "no increase over stable; passes at a bound <= +0.01 (alpha 0.01 per rollout)"
    )
    assert format_value("latency", 0.0123) == "12.3ms"
    assert format_value("errorRateVsStable", 0.0) == "+0"


def test_status_outcomes() -> None:
    s = healthy()
    assert view.rollout_outcome(snap(s)) == view.Outcome(
        True, view.EXIT_OK, "healthy: v1 serves all traffic"
    )
    # A spec generation the operator has not seen is not an outcome yet.
    s.status["observedGeneration"] = 1
    assert not view.rollout_outcome(snap(s, generation=2)).done

    s = canary_running()
    assert not view.rollout_outcome(snap(s)).done
    s.canary = TrackTraffic(requests=1000, errors=300, latency=0.05)
    s.run(120, every=30)
    assert s.phase == "RolledBack"
    out = view.rollout_outcome(snap(s))
    assert out.done and out.code == view.EXIT_ROLLED_BACK and out.message.startswith("rolled back")

    degraded = replace(snap(s), status={**s.status, "phase": "Degraded", "message": "x"})
    assert view.rollout_outcome(degraded).code == view.EXIT_DEGRADED
    invalid = replace(snap(s), status={**s.status, "phase": "InvalidSpec"})
    assert view.rollout_outcome(invalid).code == view.EXIT_DEGRADED


def test_promote_ends_the_pause_and_full_promotes_now() -> None:
    s = canary_running()
    one = controls.plan_control(snap(s), "promote", s.now)
    token = one.patch["spec"]["controls"]["resume"]
    assert token.startswith("promote-")
    assert "Use --full" in one.message
    full = controls.plan_control(snap(s), "promote", s.now, full=True)
    assert set(full.patch["spec"]["controls"]) == {"promote"}
    assert "becomes stable" in full.message
    # The engine does what the message said.
    s.set_control("promote", full.patch["spec"]["controls"]["promote"])
    s.tick(1)
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"


def test_pause_holds_the_step_and_resume_continues() -> None:
    s = healthy()
    s.set_model("v2")
    s.tick()
    step = s.status["currentStep"]
    assert s.status["step"] == "1/2"  # the STEP column of `kubectl get md`
    action = controls.plan_control(snap(s), "pause", s.now)
    assert action.patch == {"spec": {"controls": {"paused": True}}}
    s.spec = {**s.spec, "controls": {"paused": True}}
    s.run(300, every=30)
    assert s.phase == "Paused" and s.status["currentStep"] == step
    assert "paused by spec.controls.paused" in s.status["message"]
    assert "can still roll it back" in action.message
    resume = controls.plan_control(snap(s), "resume", s.now)
    assert resume.patch["spec"]["controls"]["paused"] is False
    s.spec = {**s.spec, "controls": resume.patch["spec"]["controls"]}
    s.run(120, every=30)
    assert s.status["currentStep"] > step


def test_paused_canary_is_still_rolled_back_when_it_fails() -> None:
    s = canary_running()
    s.spec = {**s.spec, "controls": {"paused": True}}
    s.canary = TrackTraffic(requests=1000, errors=300, latency=0.05)
    s.run(120, every=30)
    assert s.phase == "RolledBack"


@pytest.mark.parametrize("action", ["promote", "abort", "pause"])
def test_controls_without_a_canary_are_refused(action: str) -> None:
    s = healthy()
    with pytest.raises(controls.Refused, match="no canary"):
        controls.plan_control(snap(s), action, s.now)


def test_resume_refused_when_nothing_is_paused_and_retry_when_nothing_failed() -> None:
    s = healthy()
    with pytest.raises(controls.Refused, match="not paused"):
        controls.plan_control(snap(s), "resume", s.now)
    with pytest.raises(controls.Refused, match="nothing to retry"):
        controls.plan_control(snap(s), "retry", s.now)


def test_abort_then_retry() -> None:
    s = canary_running()
    abort = controls.plan_control(snap(s), "abort", s.now)
    s.set_control("abort", abort.patch["spec"]["controls"]["abort"])
    s.tick(1)
    assert s.phase == "RolledBack"
    retry = controls.plan_control(snap(s), "retry", s.now)
    assert "a new canary starts" in retry.message
    s.set_control("retry", retry.patch["spec"]["controls"]["retry"])
    s.tick(1)
    assert s.status["canary"]["version"] == "v2"


def promoted_twice() -> Scenario:
    s = healthy()
    for version in ("v2", "v3"):
        s.set_model(version)
        s.tick()
        s.set_control("promote", f"p-{version}")
        s.tick(1)
        assert s.status["stable"]["version"] == version
    return s


def test_history_numbers_revisions_and_keeps_uris() -> None:
    s = promoted_twice()
    rows = view.history_rows(snap(s))
    assert [(r["number"], r["version"], r["outcome"]) for r in rows] == [
        (1, "v1", "deployed"),
        (2, "v2", "promoted"),
        (3, "v3", "promoted"),
    ]
    assert rows[1]["uri"] == "https://models.example/v2.tar.gz"
    text = view.render_history(snap(s), s.now)
    assert "REVISION" in text and "https://models.example/v1.tar.gz" in text


def test_undo_goes_back_to_the_previous_stable_through_the_spec() -> None:
    s = promoted_twice()
    action = controls.plan_undo(snap(s), s.now)
    model = action.patch["spec"]["model"]
    assert (model["version"], model["uri"]) == ("v2", "https://models.example/v2.tar.gz")
    assert "rolls out as a canary against stable v3" in action.message
    to_one = controls.plan_undo(snap(s), s.now, "1")
    assert to_one.patch["spec"]["model"]["version"] == "v1"
    with pytest.raises(controls.Refused, match="no revision 9"):
        controls.plan_undo(snap(s), s.now, "9")
    # Through the engine: the spec change starts a canary of v2.
    s.spec = {**s.spec, "model": model}
    s.tick(1)
    assert s.status["canary"]["version"] == "v2"


def test_undo_to_a_rolled_back_revision_also_retries() -> None:
    s = canary_running("v2")
    s.canary = TrackTraffic(requests=1000, errors=300, latency=0.05)
    s.run(120, every=30)
    s.healthy_traffic()
    s.set_model("v3")
    s.tick()
    s.set_control("promote", "p3")
    s.tick(1)
    action = controls.plan_undo(snap(s), s.now, "2")
    assert action.patch["spec"]["model"]["version"] == "v2"
    assert "retry" in action.patch["spec"]["controls"]


def test_list_table() -> None:
    s = canary_running()
    text = view.render_list([snap(s), snap(healthy())], s.now)
    header, first, second = text.splitlines()
    assert header.split() == ["NAME", "PHASE", "STEP", "STABLE", "CANARY", "WEIGHT", "MESSAGE"]
    assert first.split()[3:5] == ["v1", "v2"]
    assert second.split()[1:5] == ["Healthy", "-", "v1", "-"]
