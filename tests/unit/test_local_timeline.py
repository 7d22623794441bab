"""The decision log (JSON) and the timeline plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlrollout.operator.local.timeline import (
    CheckPoint,
    Timeline,
    TimelineEntry,
    panel_for,
    plot,
    series,
)


def _timeline() -> Timeline:
    tl = Timeline("fraud")
    tl.append(TimelineEntry(100.0, "Stable", {"stable": 100}, stable_version="v1"))
    tl.append(
        TimelineEntry(
            101.0,
            "Progressing",
            {"stable": 90, "canary": 10},
            step=0,
            stable_version="v1",
            canary_version="v2",
            checks=(CheckPoint("errorRate", 0.01, 0.05, "pass", "<="),),
            event="rollout_started",
            reason="model version changed",
        )
    )
    tl.append(
        TimelineEntry(
            103.5,
            "RolledBack",
            {"stable": 100},
            checks=(
                CheckPoint("errorRate", 0.4, 0.05, "fail", "<="),
                CheckPoint("featureDrift", None, 0.2, "inconclusive"),
            ),
            event="rolled_back",
            reason="errorRate 0.4 > 0.05",
        )
    )
    return tl


def test_json_round_trip(tmp_path: Path) -> None:
    tl = _timeline()
    path = tmp_path / "log" / "decisions.json"
    tl.write_json(path)
    doc = json.loads(path.read_text())
    assert doc["deployment"] == "fraud"
    assert [e["phase"] for e in doc["entries"]] == ["Stable", "Progressing", "RolledBack"]
    assert doc["entries"][2]["checks"][0] == {
        "name": "errorRate",
        "value": 0.4,
        "threshold": 0.05,
        "verdict": "fail",
        "comparison": "<=",
    }
    assert Timeline.read_json(path) == tl
    assert [e.event for e in tl.events()] == ["rollout_started", "rolled_back"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        Timeline.from_json({"format": 99, "deployment": "x", "entries": []})


@pytest.mark.parametrize(
    ("name", "panel"),
    [
        ("errorRate", "error rate"),
        ("feedbackAccuracy", "other"),
        ("featureDrift", "drift score"),
        ("predictionPSI", "drift score"),
        ("latency", "latency (s)"),
        ("inputDrift", "drift score"),
        ("p95", "latency (s)"),
        ("throughput", "other"),
    ],
)
def test_panel_for(name: str, panel: str) -> None:
    assert panel_for(name) == panel


def test_series_is_relative_to_start_and_keeps_gaps() -> None:
    data = series(_timeline().entries, t0=100.0)
    assert data["canary weight (%)"]["canary"] == [[0.0, 1.0, 3.5], [0, 10, 0]]
    assert data["error rate"]["errorRate"] == [[1.0, 3.5], [0.01, 0.4]]
    assert data["error rate"]["errorRate threshold"][1] == [0.05, 0.05]
    drift_x, drift_y = data["drift score"]["featureDrift"]
    assert drift_x == [3.5] and math.isnan(drift_y[0])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    plot(_timeline(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_plot_of_an_empty_run_still_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    plot(Timeline("fraud"), path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_lines_break_across_gaps_and_relative_thresholds_are_not_drawn() -> None:
    """Issue 13: threshold lines were drawn across gaps (no canary in between), and the
    feedbackAccuracy line showed maxDecrease (a difference) next to an accuracy."""
    tl = Timeline("fraud")
    checks = (
        CheckPoint("errorRate", 0.01, 0.05, "pass"),
        CheckPoint("feedbackAccuracy", 0.98, 0.02, "pass"),
        CheckPoint("errorRateVsStable", 0.0, 0.0, "pass"),
    )
    canary = {"stable": 90, "canary": 10}
    tl.append(TimelineEntry(1.0, "Progressing", canary, canary_version="v2", checks=checks))
    tl.append(TimelineEntry(2.0, "Healthy", {"stable": 100}))
    tl.append(TimelineEntry(3.0, "Progressing", canary, canary_version="v3", checks=checks))
    data = series(tl.entries, t0=0.0)
    xs, ys = data["error rate"]["errorRate threshold"]
    assert xs == [1.0, 2.0, 3.0] and math.isnan(ys[1]) and ys[0] == ys[2] == 0.05
    assert math.isnan(data["error rate"]["errorRate"][1][1])
    assert "feedbackAccuracy threshold" not in data["other"]
    assert "errorRateVsStable threshold" not in data["error rate"]
