"""The live progress block: what it says, and when a non-terminal display prints."""

from __future__ import annotations

import io

import pytest
from mlrollout.operator.local.display import LiveDisplay, _num, render
from mlrollout.operator.local.timeline import CheckPoint, TimelineEntry

ENTRY = TimelineEntry(
    0.0,
    "Progressing",
    {"stable": 90, "canary": 10},
    step=0,
    stable_version="v1",
    canary_version="v2",
    checks=(
        CheckPoint("errorRate", 0.0123, 0.05, "pass", "<="),
        CheckPoint("predictionDrift", None, 0.2, "noData", "<="),
    ),
    reason="waiting for samples",
)


@pytest.mark.parametrize(
    ("value", "text"), [(None, "n/a"), (0, "0"), (0.05, "0.05"), (12.0, "12"), (0.00012, "0.00012")]
)
def test_numbers(value: float | None, text: str) -> None:
    assert _num(value) == text


def test_render_shows_phase_step_weights_and_each_check() -> None:
    lines = render(ENTRY, "fraud", total_steps=3)
    assert lines[0] == "fraud  Progressing  step 1/3  stable v1 90% | canary v2 10%"
    assert "errorRate" in lines[1] and "0.0123" in lines[1] and "<= 0.05" in lines[1]
    assert lines[1].endswith("pass")
    assert "n/a" in lines[2] and lines[2].endswith("noData")
    assert lines[-1] == "  waiting for samples"


def test_render_without_canary() -> None:
    entry = TimelineEntry(0.0, "Healthy", {"stable": 100}, stable_version="v1")
    assert render(entry, "fraud") == ["fraud  Healthy  stable v1 100%"]


def test_colour_only_when_asked() -> None:
    assert "\x1b[" not in "".join(render(ENTRY, "fraud"))
    assert "\x1b[32mpass" in "".join(render(ENTRY, "fraud", colour=True))


def test_pipe_output_prints_only_changes() -> None:
    out = io.StringIO()
    display = LiveDisplay(out, tty=False)
    display.show(ENTRY, render(ENTRY, "fraud"))
    first = out.getvalue()
    display.show(ENTRY, render(ENTRY, "fraud"))  # same phase/step/weights/verdicts
    assert out.getvalue() == first
    moved = TimelineEntry(1.0, "Progressing", {"stable": 50, "canary": 50}, step=1)
    display.show(moved, render(moved, "fraud"))
    assert out.getvalue() != first
    assert "\x1b[" not in out.getvalue()


def test_terminal_output_redraws_in_place() -> None:
    out = io.StringIO()
    display = LiveDisplay(out, tty=True)
    display.show(ENTRY, render(ENTRY, "fraud"))
    display.show(ENTRY, render(ENTRY, "fraud"))
    n = len(render(ENTRY, "fraud"))
    assert out.getvalue().count(f"\x1b[{n}F\x1b[J") == 1
    display.note("promoted v2")
    assert out.getvalue().count(f"\x1b[{n}F\x1b[J") == 2
    assert out.getvalue().endswith("promoted v2\n")


def test_limits_are_shown_as_the_spec_wrote_them_with_units() -> None:
    """Issue 13: `feedbackAccuracy 0.9896 vs 0.02` showed maxDecrease as if it were the
    limit; latency had no unit; `errorRateVsStable 0 vs 0` said nothing."""
    from mlrollout.operator.ctl.limits import check_limits
    from mlrollout.operator.model import Analysis

    analysis = Analysis.model_validate(
        {"metrics": {"feedbackAccuracy": {"minAccuracy": 0.9}, "latency": {"maxSeconds": 0.5}}}
    )
    entry = TimelineEntry(
        0.0,
        "Progressing",
        {"stable": 90, "canary": 10},
        step=0,
        stable_version="v1",
        canary_version="v2",
        checks=(
            CheckPoint("feedbackAccuracy", 0.9896, 0.02, "pass"),
            CheckPoint("latency", 0.0123, 0.5, "pass"),
            CheckPoint("errorRateVsStable", 0.0, 0.0, "pass"),
        ),
    )
    lines = render(entry, "fraud", 2, limits=check_limits(analysis))
    text = "\n".join(lines)
    assert "vs 0.02" not in text
    assert ">= 0.9, drop vs stable <= 0.02" in lines[1]
    assert "12.3ms" in lines[2] and "p95 <= 500ms" in lines[2]
    assert "no increase over stable" in lines[3] and "+0 " in lines[3]
