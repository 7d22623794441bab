"""The rollout engine, scenario by scenario (pure: fake readiness and traffic, fake clock).

Every tick stores the status as JSON and reloads it, so each scenario also proves that a
rollout resumes from stored status alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from mlrollout.operator.model import ModelDeploymentStatus

from tests.doubles.decide import Scenario, TrackTraffic

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def spec(**analysis: Any) -> dict[str, Any]:
    return {
        "model": {"name": "fraud", "version": "v1", "uri": "https://models.example/v1.tar.gz"},
        "rollout": {
            "steps": [{"weight": 10}, {"weight": 50}],
            "progressDeadline": "5m",
            "analysis": {"interval": "30s", "minSamples": 100, "failureLimit": 2, **analysis},
        },
    }


def healthy_v1(**analysis: Any) -> Scenario:
    s = Scenario(spec(**analysis), T0)
    s.healthy_traffic()
    s.tick()
    assert s.phase == "Healthy"
    return s


def start_canary(s: Scenario, version: str = "v2") -> None:
    s.set_model(version)
    s.tick()


def test_new_deployment_becomes_healthy() -> None:
    s = Scenario(spec(), T0)
    s.not_ready = {"v1"}
    d = s.tick()
    assert s.phase == "Initializing"
    assert d.routing is None  # nothing has served yet: no routing table
    assert [w.track for w in d.wanted.values()] == ["stable"]
    s.not_ready = set()
    d = s.tick(5)
    assert s.phase == "Healthy"
    assert d.routing is not None and dict(d.routing.weights) == {"stable": 100}
    assert s.status["history"][-1]["outcome"] == "deployed"
    assert _condition(s, "Ready") == "True"
    assert "Deployed" in s.reasons()


def test_first_deployment_not_ready_past_deadline_is_degraded() -> None:
    s = Scenario(spec(), T0)
    s.not_ready = {"v1"}
    s.tick()
    s.run(300, every=30)
    assert s.phase == "Degraded"
    assert "ProgressDeadlineExceeded" in s.reasons()
    assert _condition(s, "Ready") == "False"


def test_good_version_walks_the_steps_and_is_promoted() -> None:
    s = healthy_v1()
    v1 = s.status["stable"]["id"]
    start_canary(s)
    assert s.phase == "Progressing"
    assert s.status["weights"] == {"stable": 90, "canary": 10}
    assert s.status["currentStep"] == 0
    d = s.tick(30)
    assert s.status["currentStep"] == 1
    assert s.status["weights"] == {"stable": 50, "canary": 50}
    assert d.routing is not None and dict(d.routing.weights) == {"stable": 50, "canary": 50}
    s.tick(30)
    assert s.phase == "Healthy"
    assert s.status["stable"]["version"] == "v2"
    assert s.status["stable"]["track"] == "canary"  # keeps its start-up track label
    assert "canary" not in s.status
    assert set(s.wanted) == {s.status["stable"]["id"]}
    assert v1 not in s.wanted  # old stable is stopped after the routes moved
    assert [h["outcome"] for h in s.status["history"]] == ["deployed", "promoted"]
    assert {"StepAdvanced", "Promoted"} <= set(s.reasons())
    assert any(c.name.endswith("promotions_total") for c in s.last.counters)  # type: ignore[union-attr]


def test_high_error_rate_rolls_back_and_stays_rolled_back() -> None:
    s = healthy_v1()
    s.canary = TrackTraffic(requests=1000, errors=100)
    start_canary(s)
    assert s.phase == "Progressing"  # a step that starts now has no traffic to judge
    s.tick(30)
    assert s.phase == "RolledBack"  # a sequential test crossed: at once, no failureLimit
    assert s.status["weights"] == {"stable": 100, "canary": 0}
    rejected = s.status["rejectedRevisions"]
    assert [r["version"] for r in rejected] == ["v2"]
    assert "errorRate" in rejected[0]["reason"]
    assert set(s.wanted) == {s.status["stable"]["id"]}
    verdict = next(v for v in s.status["analysis"]["verdicts"] if v["check"] == "errorRate")
    assert verdict["outcome"] == "fail" and verdict["value"] == 0.1
    assert verdict["threshold"] == 0.05 and verdict["samples"] == 1000
    assert verdict["lower"] > 0.05  # the anytime-valid bound is what crossed
    assert verdict["test"] == "rate confidence sequence"
    assert "100/1000" in verdict["message"]
    # Sticky: the same spec never restarts the canary.
    s.canary = TrackTraffic(requests=1000)
    s.run(120)
    assert s.phase == "RolledBack"
    assert "canary" not in s.status
    assert "retry" in s.status["message"]


def test_error_rate_increase_over_stable_fails_by_count_test() -> None:
    s = healthy_v1()
    # 3% is under the absolute 5% maximum, but stable runs at 0.1% on 9x the traffic.
    s.stable = TrackTraffic(requests=9000, errors=9)
    s.canary = TrackTraffic(requests=1000, errors=30)
    start_canary(s)
    s.tick(30)
    assert s.phase == "RolledBack"
    outcomes = {v["check"]: v["outcome"] for v in s.status["analysis"]["verdicts"]}
    assert outcomes["errorRate"] != "fail"
    assert outcomes["errorRateVsStable"] == "fail"
    vs = next(v for v in s.status["analysis"]["verdicts"] if v["check"] == "errorRateVsStable")
    assert vs["test"] == "error split e-process" and "e-value" in vs["message"]
    assert "30/1000" in vs["message"] and "9/9000" in vs["message"]


def test_small_error_difference_within_noise_is_held_then_passes_on_evidence() -> None:
    s = healthy_v1()
    s.stable = TrackTraffic(requests=1800, errors=10)
    s.canary = TrackTraffic(requests=200, errors=2)
    start_canary(s)
    s.run(90)
    # Neither rolled back (no evidence of harm) nor promoted (no evidence of safety).
    assert s.phase == "Progressing" and s.status["currentStep"] == 0
    vs = next(v for v in s.status["analysis"]["verdicts"] if v["check"] == "errorRateVsStable")
    assert vs["outcome"] == "inconclusive" and vs["needed"] > 0
    assert "more requests" in s.status["message"]
    s.stable = TrackTraffic(requests=18000, errors=100)
    s.canary = TrackTraffic(requests=5000, errors=30)
    s.tick(30)
    s.tick(30)
    assert s.phase == "Healthy"
    assert s.status["stable"]["version"] == "v2"


def test_drifting_predictions_roll_back() -> None:
    s = healthy_v1(metrics={"predictionDrift": {"maxPsi": 0.2}})
    s.stable = TrackTraffic(requests=1000, prediction_bins={"0": 900, "1": 100})
    s.canary = TrackTraffic(requests=1000, prediction_bins={"0": 300, "1": 700})
    start_canary(s)
    s.tick(30)
    assert s.phase == "RolledBack"
    drift = next(v for v in s.status["analysis"]["verdicts"] if v["check"] == "predictionDrift")
    assert drift["outcome"] == "fail" and drift["value"] > 0.2


def test_canary_drifting_from_own_profile_more_than_stable_rolls_back() -> None:
    s = healthy_v1(metrics={"inputDrift": {"maxPsiIncrease": 0.1}})
    s.stable = TrackTraffic(requests=1000, input_psi={"amount": 0.05})
    s.canary = TrackTraffic(requests=1000, input_psi={"amount": 0.4}, drift_windows=3)
    start_canary(s)
    s.tick(30)
    assert s.phase == "Progressing"  # a window check: failureLimit 2 runs in a row
    s.tick(30)
    assert s.phase == "RolledBack"


def test_shared_input_drift_does_not_fail_canary_but_sets_condition() -> None:
    s = healthy_v1(metrics={"inputDrift": {"maxPsiIncrease": 0.1}})
    drift = {"amount": 0.5}
    s.stable = TrackTraffic(requests=5000, input_psi=drift, drift_alarm={"amount": 1})
    s.canary = TrackTraffic(requests=5000, input_psi=drift, drift_windows=3)
    start_canary(s)
    s.tick(30)
    s.tick(30)
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"
    assert _condition(s, "InputDrift") == "True"
    assert "InputDrift" in s.reasons()


def test_too_little_traffic_holds_the_step() -> None:
    s = healthy_v1()
    s.stable = TrackTraffic(requests=900)
    s.canary = TrackTraffic(requests=50)
    start_canary(s)
    s.run(600)
    assert s.phase == "Progressing"
    assert s.status["currentStep"] == 0
    assert s.status["weights"]["canary"] == 10
    outcomes = {v["check"]: v["outcome"] for v in s.status["analysis"]["verdicts"]}
    assert set(outcomes.values()) <= {"noData", "inconclusive"}
    assert _condition(s, "AnalysisHealthy") == "Unknown"
    s.canary = TrackTraffic(requests=5000)
    s.tick(30)
    assert s.status["currentStep"] == 1


@pytest.mark.parametrize(
    ("action", "phase_after"), [("hold", "Degraded"), ("rollback", "RolledBack")]
)
def test_prometheus_down_holds_then_acts_after_max_hold(action: str, phase_after: str) -> None:
    s = healthy_v1(onProviderError={"action": action, "maxHold": "2m"})
    start_canary(s)
    s.failing = frozenset({"freshness", "requests.canary", "requests.stable", "errors.canary"})
    s.run(90)
    assert s.phase == "Progressing"
    assert s.status["currentStep"] == 0  # held, not advanced
    assert "holdSince" in s.status["analysis"]
    s.run(60)
    assert s.phase == phase_after
    assert s.status["stable"]["version"] == "v1"  # never promoted blind
    if action == "hold":
        assert s.status["weights"]["canary"] == 10
        s.failing = frozenset()
        s.tick(30)
        assert s.phase == "Progressing" and s.status["currentStep"] == 1


def test_stale_metrics_count_as_provider_error() -> None:
    s = healthy_v1()
    s.age = 600.0
    start_canary(s)
    s.run(300)
    assert s.status["stable"]["version"] == "v1"
    assert {v["outcome"] for v in s.status["analysis"]["verdicts"]} == {"providerError"}


def test_restart_mid_rollout_resumes_at_the_same_step() -> None:
    s = healthy_v1()
    start_canary(s)
    s.tick(30)
    assert s.status["currentStep"] == 1
    wanted = set(s.wanted)
    # A new operator process: only the stored status survives.
    restarted = Scenario(s.spec, s.now)
    restarted.status = ModelDeploymentStatus.model_validate(s.status).to_json()
    restarted.healthy_traffic()
    d = restarted.tick(5)  # before the next analysis is due
    assert restarted.status["currentStep"] == 1
    assert set(d.wanted or {}) == wanted  # same revisions: nothing duplicated
    assert restarted.status["weights"] == {"stable": 50, "canary": 50}
    assert not [e for e in d.events if e.reason in ("RolloutStarted", "Deploying")]


def test_invalid_spec_sets_condition_and_changes_nothing_else() -> None:
    s = healthy_v1()
    start_canary(s)
    before = dict(s.status)
    s.spec = {**s.spec, "rollout": {"steps": [{"weight": 50}, {"weight": 10}]}}
    d = s.tick(30)
    assert s.phase == "InvalidSpec"
    assert d.wanted is None and d.routing is None
    assert "non-decreasing" in s.status["message"]
    assert _condition(s, "SpecValid") == "False"
    ignore = {"phase", "message", "conditions"}
    assert {k: v for k, v in s.status.items() if k not in ignore} == {
        k: v for k, v in before.items() if k not in ignore
    }
    s.tick(30)
    assert [e.reason for e in s.events].count("InvalidSpec") == 1  # no event spam
    s.spec = spec()
    s.set_model("v2")
    s.tick(30)
    assert s.phase == "Progressing" and _condition(s, "SpecValid") == "True"


def test_abort_rolls_back_once_and_retry_tries_again() -> None:
    s = healthy_v1()
    start_canary(s)
    s.set_control("abort", "a1")
    s.tick(5)
    assert s.phase == "RolledBack"
    assert s.status["history"][-1]["outcome"] == "aborted"
    s.set_control("retry", "r1")
    s.tick(5)
    assert s.phase == "Progressing" and s.status["canary"]["version"] == "v2"
    s.tick(5)  # the abort token is unchanged: not acted on again
    assert s.phase == "Progressing"
    assert s.status["controls"]["abort"] == "a1" and s.status["controls"]["retry"] == "r1"


def test_promote_skips_steps_but_waits_for_a_ready_canary() -> None:
    s = healthy_v1()
    s.not_ready = {"v2"}
    start_canary(s)
    s.set_control("promote", "p1")
    s.tick(5)
    assert s.phase == "Progressing" and s.status["controls"]["promotePending"] is True
    assert s.status["weights"]["canary"] == 0
    s.not_ready = set()
    s.tick(5)
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"
    s.set_model("v3")
    s.tick(5)  # the old promote token does not promote v3
    assert s.phase == "Progressing" and s.status["canary"]["version"] == "v3"


def test_manual_pause_waits_for_resume() -> None:
    s = healthy_v1()
    s.spec["rollout"] = {**s.spec["rollout"], "steps": [{"weight": 20, "pause": "manual"}]}
    start_canary(s)
    s.run(300)
    assert s.phase == "Paused" and s.status["weights"]["canary"] == 20
    s.set_control("resume", "go")
    s.tick(30)
    assert s.phase == "Healthy" and s.status["stable"]["version"] == "v2"


def test_timed_pause_holds_the_step_for_its_duration() -> None:
    s = healthy_v1()
    s.spec["rollout"] = {
        **s.spec["rollout"],
        "steps": [{"weight": 20, "pause": "2m"}, {"weight": 60}],
    }
    start_canary(s)
    s.tick(30)
    assert s.phase == "Paused" and s.status["currentStep"] == 0
    s.tick(60)
    assert s.status["currentStep"] == 0
    s.tick(30)
    assert s.status["currentStep"] == 1


def test_new_model_during_rollout_supersedes_the_canary() -> None:
    s = healthy_v1()
    start_canary(s)
    s.tick(30)
    old = s.status["canary"]["id"]
    s.set_model("v3")
    s.tick(5)
    assert s.status["canary"]["version"] == "v3"
    assert s.status["currentStep"] == 0 and s.status["analysis"]["consecutiveFailures"] == 0
    assert old not in s.wanted
    assert s.status["history"][-1] == {
        **s.status["history"][-1],
        "outcome": "superseded",
        "version": "v2",
    }
    s.set_model("v1")  # back to stable's model: the rollout is cancelled
    s.tick(5)
    assert "canary" not in s.status and s.phase == "Healthy"


def test_canary_never_ready_is_rolled_back_after_progress_deadline() -> None:
    s = healthy_v1()
    s.not_ready = {"v2"}
    start_canary(s)
    s.run(240)
    assert s.phase == "Progressing" and s.status["weights"]["canary"] == 0
    s.run(90)
    assert s.phase == "RolledBack"
    assert "progressDeadline" in s.status["rejectedRevisions"][0]["reason"]


def test_failure_below_limit_then_pass_resets_the_count() -> None:
    custom = [{"name": "p99ok", "query": 'up{job="{{deployment}}"}', "min": 1}]
    s = healthy_v1(failureLimit=3, metrics={"custom": custom})
    s.custom = {"p99ok": 0.0}
    start_canary(s)
    s.tick(30)
    s.tick(30)
    assert s.status["analysis"]["consecutiveFailures"] == 2
    assert s.status["analysis"]["failureStreaks"] == {"p99ok": 2}
    s.custom = {"p99ok": 1.0}
    s.tick(30)
    assert s.status["analysis"]["consecutiveFailures"] == 0
    assert s.phase != "RolledBack"


def test_custom_check_gates_the_canary() -> None:
    custom = [{"name": "p99ok", "query": 'up{job="{{deployment}}"}', "min": 1}]
    s = healthy_v1(metrics={"custom": custom})
    s.custom = {"p99ok": 0.0}
    start_canary(s)
    s.run(60)
    assert s.phase == "RolledBack"
    assert "p99ok" in s.status["rejectedRevisions"][0]["reason"]


def _condition(s: Scenario, type_: str) -> str | None:
    for cond in s.status.get("conditions", []):
        if cond["type"] == type_:
            return str(cond["status"])
    return None


def test_stable_stays_stable_when_history_is_trimmed() -> None:
    s = healthy_v1()
    for i in range(25):  # more outcomes than the history keeps
        s.set_model(f"v{i + 2}")
        s.set_control("abort", f"a{i}")
        s.tick(5)
    assert len(s.status["history"]) == 20
    assert len(s.status["rejectedRevisions"]) == 20
    s.set_model("v99")
    s.tick(5)
    assert s.status["stable"]["version"] == "v1"
    assert s.status["canary"]["version"] == "v99"


def test_stable_not_ready_is_degraded_and_recovers() -> None:
    s = healthy_v1()
    s.not_ready = {"v1"}
    s.tick(30)
    assert s.phase == "Degraded" and _condition(s, "Ready") == "False"
    assert "StableNotReady" in s.reasons()
    s.not_ready = set()
    s.tick(30)
    assert s.phase == "Healthy" and _condition(s, "Ready") == "True"


def test_weight_zero_step_runs_on_shadow_traffic() -> None:
    s = healthy_v1()
    s.spec["rollout"] = {**s.spec["rollout"], "steps": [{"weight": 0}, {"weight": 30}]}
    s.spec["traffic"] = {"shadowPercent": 100}
    start_canary(s)
    d = s.tick(0)
    assert s.status["weights"] == {"stable": 100, "canary": 0}
    assert d.routing is not None and d.routing.revisions.keys() == {"stable", "canary"}
    s.tick(30)
    assert s.status["weights"] == {"stable": 70, "canary": 30}


def test_steady_state_is_quiet() -> None:
    s = healthy_v1()
    s.run(120)
    before, seen = dict(s.status), len(s.events)
    d = s.tick(5)  # no analysis due: nothing to change or say
    assert s.status == before
    assert len(s.events) == seen and d.events == ()


# --------------------------------------------------------------------------- issue 11


def test_one_checks_nodata_neither_breaks_nor_extends_anothers_streak() -> None:
    # Issue 11: failures of different checks in alternate runs added up to failureLimit
    # (and another check's noData kept a streak alive). Each window check counts its own.
    custom = [
        {"name": "a", "query": "a", "min": 1},
        {"name": "b", "query": "b", "min": 1},
    ]
    s = healthy_v1(metrics={"custom": custom})
    s.custom = {"a": 0.0, "b": 1.0}
    start_canary(s)
    s.tick(30)
    s.custom = {"b": 0.0}  # a: noData, b: fail
    s.tick(30)
    assert s.phase != "RolledBack"
    assert s.status["analysis"]["failureStreaks"] == {"a": 1, "b": 1}
    s.custom = {"a": 1.0, "b": 0.0}  # a passes (its streak ends), b fails again
    s.tick(30)
    assert s.phase == "RolledBack"
    assert "(b)" in s.status["rejectedRevisions"][0]["reason"]


def test_a_canary_whose_process_is_gone_is_rolled_back_at_once() -> None:
    # Issue 11: a killed canary was rolled back only when progressDeadline ran out (~77 s).
    s = healthy_v1()
    start_canary(s)
    s.tick(30)
    s.gone = {"v2"}
    s.tick(5)
    assert s.phase == "RolledBack"
    assert "gone" in s.status["rejectedRevisions"][0]["reason"]


def test_a_canary_that_is_merely_not_ready_still_gets_its_deadline() -> None:
    s = healthy_v1()
    start_canary(s)
    s.not_ready = {"v2"}
    s.run(60, every=5)
    assert s.phase == "Progressing"


def test_one_percent_errors_against_none_is_rolled_back_not_promoted() -> None:
    # Issue 11: `1/113 vs stable 0/488 ... Fisher p=0.188` passed: absence of evidence
    # counted as a pass. Now such a window is inconclusive, and errors accumulate.
    s = healthy_v1()
    s.stable = TrackTraffic(requests=488)
    s.canary = TrackTraffic(requests=113, errors=1)
    start_canary(s)
    s.run(120)
    assert s.phase == "Progressing" and s.status["currentStep"] == 0  # not promoted
    s.stable = TrackTraffic(requests=4500)
    s.canary = TrackTraffic(requests=500, errors=5)
    s.tick(30)
    assert s.phase == "RolledBack"
    reason = s.status["rejectedRevisions"][0]["reason"]
    assert "errorRateVsStable" in reason and "e-value" in reason and "5/500" in reason


def test_inconclusive_step_holds_with_a_warning_at_its_deadline() -> None:
    # Issue 11: at 1 request/s a step held 240 s with no warning and no limit.
    s = healthy_v1(stepDeadline="2m")
    s.stable = TrackTraffic(requests=100)
    s.canary = TrackTraffic(requests=20)
    start_canary(s)
    s.run(90)
    assert "AnalysisInconclusive" not in [e.reason for e in s.events if e.type == "Warning"]
    s.run(60)
    warnings = [e for e in s.events if e.type == "Warning" and e.reason == "AnalysisInconclusive"]
    assert len(warnings) == 1 and "more requests" in warnings[0].message
    assert s.phase == "Progressing" and "stepDeadline" in s.status["message"]
    s.run(120)  # warned once, still holding
    assert [e.reason for e in s.events].count("AnalysisInconclusive") >= 1
    assert (
        sum(1 for e in s.events if e.type == "Warning" and e.reason == "AnalysisInconclusive") == 1
    )


@pytest.mark.parametrize(
    ("policy", "phase"), [("rollback", "RolledBack"), ("promote", "Progressing")]
)
def test_on_inconclusive_decides_at_the_step_deadline(policy: str, phase: str) -> None:
    s = healthy_v1(stepDeadline="1m", onInconclusive=policy)
    s.stable = TrackTraffic(requests=100)
    s.canary = TrackTraffic(requests=20)
    start_canary(s)
    s.run(60)
    assert s.phase == phase
    if policy == "promote":
        assert s.status["currentStep"] == 1  # passed the step anyway, with a Warning
        assert "AnalysisInconclusive" in s.reasons()


def test_a_pass_needs_min_samples_requests_at_the_step_not_rows() -> None:
    # Issue 11: 8-row batches were judged after 13 requests (104 rows >= minSamples 100).
    s = healthy_v1(
        metrics={
            "predictionDrift": {},
            "errorRate": {"maxIncrease": 0.5},
            "latency": {"enabled": False},
        }
    )
    bins = {"0": 52.0, "1": 52.0}
    s.stable = TrackTraffic(requests=5000, prediction_bins={"0": 2500.0, "1": 2500.0})
    s.canary = TrackTraffic(requests=13, prediction_bins=bins)
    start_canary(s)
    s.run(90)
    assert s.status["currentStep"] == 0


def test_wrong_answers_with_right_marginals_are_rolled_back_without_labels() -> None:
    # Issue 11: a canary disagreeing with stable on 41% of rows but with the same positive
    # rate was promoted (prediction PSI 0.002-0.03).
    s = Scenario(
        {
            **spec(metrics={"predictionDrift": {}, "agreement": {"min": 0.95}}),
            "traffic": {"agreement": {"percent": 10}},
        },
        T0,
    )
    s.healthy_traffic()
    s.tick()
    bins = {"0": 700.0, "1": 300.0}
    s.stable = TrackTraffic(requests=5000, prediction_bins=bins)
    s.canary = TrackTraffic(
        requests=500, prediction_bins=bins, agreement={"agree": 59, "disagree": 41}
    )
    start_canary(s)
    s.tick(30)
    assert s.phase == "RolledBack"
    assert "agreement" in s.status["rejectedRevisions"][0]["reason"]


def test_evidence_carries_across_steps() -> None:
    # The split test's e-value at the end of a step multiplies into the next step's.
    s = healthy_v1(metrics={"errorRate": {"maxIncrease": 0.05}})
    s.stable = TrackTraffic(requests=9000, errors=9)
    s.canary = TrackTraffic(requests=5000, errors=12)
    start_canary(s)
    s.tick(30)
    assert s.status["currentStep"] == 1
    carried = s.status["analysis"]["carriedEvidence"]["errorRateVsStable"]
    assert carried > 0
    vs = next(v for v in s.status["analysis"]["verdicts"] if v["check"] == "errorRateVsStable")
    assert vs["logEvidence"] == pytest.approx(vs["stepLogEvidence"])
    s.tick(30)
    vs = next(v for v in s.status["analysis"]["verdicts"] if v["check"] == "errorRateVsStable")
    assert vs["logEvidence"] == pytest.approx(carried + vs["stepLogEvidence"])
