"""The local session without processes: status -> timeline entry, outcomes, resuming."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from mlrollout.operator.interfaces import Event
from mlrollout.operator.local.display import LiveDisplay
from mlrollout.operator.local.manifest import Manifest, parse_manifest
from mlrollout.operator.local.session import LocalSession, SessionOptions, outcome_of
from mlrollout.operator.local.timeline import entry_from_status, snake
from mlrollout.operator.model import ModelDeploymentStatus

STATUS = {
    "phase": "Progressing",
    "message": "step 1/3 at 20%: waiting for analysis to pass",
    "stable": {"id": "r1", "name": "m", "version": "v1", "uri": "file:///m/v1"},
    "canary": {"id": "r2", "name": "m", "version": "v2", "uri": "file:///m/v2"},
    "currentStep": 0,
    "weights": {"stable": 80, "canary": 20},
    "analysis": {
        "verdicts": [
            {"check": "errorRate", "outcome": "pass", "value": 0.01, "threshold": 0.05},
            {"check": "predictionDrift", "outcome": "noData"},
        ]
    },
    "history": [
        {"revision": "r1", "version": "v1", "outcome": "deployed", "at": "2026-01-01T12:00:00Z"},
        {"revision": "r2", "version": "v2", "outcome": "rolledBack", "at": "2026-01-01T12:05:00Z"},
        {"revision": "r2", "version": "v2", "outcome": "promoted", "at": "2026-01-01T12:09:00Z"},
    ],
}


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        ("RolledBack", "rolled_back"),
        ("Promoted", "promoted"),
        ("RolloutStarted", "rollout_started"),
    ],
)
def test_snake(reason: str, name: str) -> None:
    assert snake(reason) == name


def test_entry_carries_phase_weights_versions_and_checks() -> None:
    entry = entry_from_status(ModelDeploymentStatus.model_validate(STATUS), (), 12.5)
    assert (entry.t, entry.phase, entry.step) == (12.5, "Progressing", 0)
    assert dict(entry.weights) == {"stable": 80, "canary": 20}
    assert (entry.stable_version, entry.canary_version) == ("v1", "v2")
    assert [(c.name, c.value, c.threshold, c.verdict) for c in entry.checks] == [
        ("errorRate", 0.01, 0.05, "pass"),
        ("predictionDrift", None, None, "noData"),
    ]
    assert entry.event is None and entry.reason == STATUS["message"]


def test_the_most_important_event_is_marked() -> None:
    events = (
        Event("Warning", "AnalysisFailed", "run 2/2: errorRate 0.3 > 0.05"),
        Event("Warning", "RolledBack", "canary v2: analysis failed"),
    )
    entry = entry_from_status(ModelDeploymentStatus.model_validate(STATUS), events, 0.0)
    assert entry.event == "rolled_back"
    assert "errorRate 0.3" in entry.reason and "analysis failed" in entry.reason


def test_no_canary_means_no_step_and_no_checks() -> None:
    status = {**STATUS, "canary": None, "weights": {"stable": 100, "canary": 0}, "phase": "Healthy"}
    entry = entry_from_status(ModelDeploymentStatus.model_validate(status), (), 0.0)
    assert entry.step is None and entry.checks == () and entry.canary_version is None


def test_empty_status() -> None:
    entry = entry_from_status(ModelDeploymentStatus(), (), 0.0)
    assert entry.phase == "Initializing" and dict(entry.weights) == {"stable": 100, "canary": 0}
    assert entry.stable_version is None and entry.checks == ()


@pytest.mark.parametrize(("version", "outcome"), [("v2", "promoted"), ("v1", None), ("v9", None)])
def test_outcome_of_is_the_latest_final_outcome(version: str, outcome: str | None) -> None:
    assert outcome_of(STATUS, version) == outcome
    assert outcome_of(None, version) is None


def _manifest(tmp_path: Path, version: str) -> Manifest:
    text = (
        "apiVersion: mlrollout.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: fraud}\n"
        f"spec:\n  model: {{name: fraud, version: {version}, uri: ./{version}}}\n"
    )
    return parse_manifest(text, tmp_path / "fraud.yaml")


def _state(run_dir: Path, spec: dict, deployment: str = "fraud") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": 1,
        "deployment": deployment,
        "generation": 3,
        "spec": spec,
        "status": {"phase": "Progressing", "stable": {"version": "v1"}},
    }
    (run_dir / "state.json").write_text(json.dumps(doc))


def test_a_restart_resumes_the_saved_status(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "v2")
    _state(tmp_path / "run", manifest.raw_spec)
    session = LocalSession(manifest, SessionOptions(run_dir=tmp_path / "run"))
    try:
        assert session.status == {"phase": "Progressing", "stable": {"version": "v1"}}
        assert session.generation == 3  # same spec: same generation
    finally:
        session.supervisor.close()


def test_a_file_changed_while_stopped_is_a_new_generation(tmp_path: Path) -> None:
    _state(tmp_path / "run", _manifest(tmp_path, "v1").raw_spec)
    session = LocalSession(_manifest(tmp_path, "v2"), SessionOptions(run_dir=tmp_path / "run"))
    try:
        assert session.generation == 4
        assert session.apply(_manifest(tmp_path, "v3")) and session.generation == 5
        assert not session.apply(_manifest(tmp_path, "v3")) and session.generation == 5
    finally:
        session.supervisor.close()


@pytest.mark.parametrize("content", ["{broken", None])
def test_state_of_another_deployment_or_unreadable_is_ignored(
    tmp_path: Path, content: str | None
) -> None:
    manifest = _manifest(tmp_path, "v1")
    if content is None:
        _state(tmp_path / "run", manifest.raw_spec, deployment="other")
    else:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "state.json").write_text(content)
    notes = io.StringIO()
    session = LocalSession(
        manifest, SessionOptions(run_dir=tmp_path / "run"), display=LiveDisplay(notes, tty=False)
    )
    try:
        assert session.status is None and session.generation == 1
        assert "ignoring" in notes.getvalue()
    finally:
        session.supervisor.close()


def test_tick_before_start_is_a_clear_error(tmp_path: Path) -> None:
    session = LocalSession(_manifest(tmp_path, "v1"), SessionOptions(run_dir=tmp_path / "run"))
    try:
        with pytest.raises(RuntimeError, match=r"start\(\)"):
            session.tick()
    finally:
        session.supervisor.close()


def test_one_analysis_record_per_run_with_the_step_and_weight_it_measured() -> None:
    from mlrollout.operator.rundir import analysis_record

    before = {
        "phase": "Progressing",
        "stable": {"version": "v1"},
        "canary": {"version": "v2"},
        "currentStep": 1,
        "weights": {"stable": 50, "canary": 50},
        "analysis": {"lastRunAt": "2026-01-01T12:00:00Z"},
    }
    failed = {"check": "errorRate", "outcome": "fail", "value": 0.3, "threshold": 0.05,
              "samples": 400, "message": "canary error rate 0.3 > 0.05"}  # fmt: skip
    # The run that rolls the canary back: status after it has no canary and no lastRunAt.
    after = {"phase": "RolledBack", "stable": {"version": "v1"}, "weights": {"stable": 100},
             "analysis": {"verdicts": [failed]}}  # fmt: skip
    events = (
        Event("Warning", "AnalysisFailed", "errorRate fail"),
        Event("Warning", "RolledBack", "canary v2: ..."),
    )
    record = analysis_record(before, after, events, 1767268830.0, 2, {"errorRate": "<= 0.05"})
    assert record is not None
    assert (record["canary"], record["step"], record["weight"]) == ("v2", "2/2", 50)
    assert record["outcome"] == "fail" and record["phaseAfter"] == "RolledBack"
    assert record["checks"] == [
        {"check": "errorRate", "value": 0.3, "threshold": 0.05, "limit": "<= 0.05",
         "samples": 400, "verdict": "fail", "message": "canary error rate 0.3 > 0.05"}
    ]  # fmt: skip
    assert record["time"].startswith("2026-01-01T")
    # No run in this decision (a step deadline warning is not a run): no record.
    deadline = (Event("Warning", "AnalysisInconclusive", "no decision after 600s"),)
    assert analysis_record(before, before, deadline, 0.0, 2, {}) is None
    assert analysis_record(before, before, (), 0.0, 2, {}) is None
