"""The rollout loop end to end in local mode: real servers, router, Prometheus and engine.

One stack (stable v1 plus steady traffic) serves the module; each test rolls out one
canary and checks the outcome. The Prometheus test stops Prometheus, so it runs last.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from mlrollout.operator.local.session import outcome_of

from tests.doubles.local import (
    FAST_ANALYSIS,
    Stack,
    finished,
    kill_tree,
    start_loadgen,
    stop_loadgen,
    variant,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _router_fallbacks(router_url: str) -> float:
    with urllib.request.urlopen(f"{router_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlrollout_router_fallbacks_total")
    )


def _history_reason(status: dict, version: str) -> str:
    entries = [h for h in status.get("history", []) if h.get("version") == version]
    return entries[-1].get("reason", "") if entries else ""


def test_good_canary_is_promoted(stack: Stack) -> None:
    stack.rollout("v2", stack.examples / "v2", steps=[{"weight": 30}, {"weight": 60}])
    status = stack.drive(finished("v2"), 150, "v2 outcome")
    assert outcome_of(status, "v2") == "promoted", _history_reason(status, "v2")
    assert status["stable"]["version"] == "v2" and not status.get("canary")
    table = stack.session.router.get_routes()
    assert table is not None and table.weights == {"stable": 100}
    assert table.backends["stable"].version == "v2"
    # the canary walked both steps before promotion
    weights = [e.weights.get("canary", 0) for e in stack.session.timeline.entries]
    assert 30 in weights and 60 in weights


# The operator's own analysis, without the router guard (which would act first).
NO_GUARD = {"guard": {"enabled": False}}


def test_canary_with_injected_errors_is_rolled_back(stack: Stack) -> None:
    uri = variant(stack.examples, "v2", "v2-faulty")
    env = {"MLROLLOUT_FAULT_ERROR_RATE": "0.5"}
    stack.rollout("v2-faulty", uri, env=env, traffic=NO_GUARD)
    status = stack.drive(finished("v2-faulty"), 150, "v2-faulty outcome")
    assert outcome_of(status, "v2-faulty") == "rolledBack"
    assert "errorRate" in _history_reason(status, "v2-faulty")
    table = stack.session.router.get_routes()
    assert table is not None and table.weights == {"stable": 100}


def test_router_guard_takes_a_failing_canary_off_and_the_operator_records_it(
    stack: Stack,
) -> None:
    # The default spec: the router guard is on. The router takes the canary to weight 0
    # at its guard's crossing; the operator reads the trip from GET /-/table and records it.
    uri = variant(stack.examples, "v2", "v2-guarded")
    stack.rollout("v2-guarded", uri, env={"MLROLLOUT_FAULT_ERROR_RATE": "0.5"})
    status = stack.drive(finished("v2-guarded"), 60, "v2-guarded outcome")
    assert outcome_of(status, "v2-guarded") == "rolledBack"
    assert _history_reason(status, "v2-guarded").startswith("router guard: canary v2-guarded")
    verdicts = status["analysis"]["verdicts"]
    assert [v["check"] for v in verdicts] == ["routerGuard"]
    assert verdicts[0]["value"] >= verdicts[0]["threshold"]
    table = stack.session.router.get_routes()
    assert table is not None and table.weights == {"stable": 100}


def test_drifting_canary_is_rolled_back(stack: Stack) -> None:
    stack.rollout("v3", stack.examples / "v3")
    status = stack.drive(finished("v3"), 150, "v3 outcome")
    assert outcome_of(status, "v3") == "rolledBack"
    reason = _history_reason(status, "v3")
    assert "inputDrift" in reason or "predictionDrift" in reason, reason


def test_killed_canary_loses_no_request_and_is_rolled_back(stack: Stack) -> None:
    session = stack.session
    uri = variant(stack.examples, "v1", "v1-killed")
    # A long pause: the canary is still mid-rollout (at 50 %) when it is killed.
    steps = [{"weight": 50, "pause": "10m"}]
    # Without the router guard: this checks the engine's own handling of a dead process
    # (with the guard, the unreachable answers would trip it first).
    stack.rollout("v1-killed", uri, steps=steps, progress_deadline="15s", traffic=NO_GUARD)
    stack.drive(
        lambda st: (st.get("weights") or {}).get("canary", 0) == 50, 120, "canary taking traffic"
    )
    probe, report_path = start_loadgen(session, stack.examples, "probe", rate=30)
    time.sleep(3)  # the probe's requests now reach both tracks
    fallbacks_before = _router_fallbacks(session.router_url)
    canary = session.runtime.process(session.status["canary"]["id"])
    assert canary is not None
    kill_tree(canary.pid)
    # The engine is not driven for a moment, so the table still sends half the traffic to
    # the dead canary: the router must retry those requests on stable.
    time.sleep(2)
    assert _router_fallbacks(session.router_url) > fallbacks_before
    status = stack.drive(finished("v1-killed"), 90, "killed canary outcome")
    report = stop_loadgen(session, probe, report_path)
    assert outcome_of(status, "v1-killed") == "rolledBack"
    # Issue 11: rolled back at once (the process is gone), not at progressDeadline.
    assert "gone" in _history_reason(status, "v1-killed")
    assert report["sent"] > 100
    assert report["failed"] == 0, report


def test_prometheus_down_holds_then_rolls_back_after_max_hold(stack: Stack) -> None:
    session = stack.session
    uri = variant(stack.examples, "v1", "v1-blind")
    analysis = {**FAST_ANALYSIS, "onProviderError": {"action": "rollback", "maxHold": "8s"}}
    steps = [{"weight": 40, "pause": "10m"}]
    stack.rollout("v1-blind", uri, steps=steps, analysis=analysis)
    stack.drive(lambda st: (st.get("weights") or {}).get("canary", 0) == 40, 120, "canary at 40%")
    assert session.prometheus is not None and session.prometheus.process is not None
    os.killpg(session.prometheus.process.pid, signal.SIGKILL)
    held = stack.drive(
        lambda st: any(
            v.get("outcome") == "providerError" for v in st.get("analysis", {}).get("verdicts", [])
        ),
        30,
        "provider errors seen",
    )
    assert held["weights"]["canary"] == 40  # holding: neither promoted nor moved
    assert outcome_of(held, "v1-blind") is None
    status = stack.drive(finished("v1-blind"), 60, "rollback after maxHold")
    assert outcome_of(status, "v1-blind") == "rolledBack"
