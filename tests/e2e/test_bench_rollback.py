"""Smoke size of the rollback benchmark: one faulty canary in local mode, rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import SMOKE_ROLLBACK
from bench.rollback import failed_checks, run_rollback

pytestmark = pytest.mark.e2e


def test_faulty_canary_is_rolled_back_and_its_errors_counted(tmp_path: Path) -> None:
    section = run_rollback(tmp_path, SMOKE_ROLLBACK)
    (trial,) = section["trials"]
    assert trial["outcome"] == "rolledBack"
    assert trial["peak_weight"] > 0  # it did take traffic, so the fault was live
    assert "errorRate" in failed_checks(trial["reason"])
    assert 0 < trial["seconds_to_zero"] < SMOKE_ROLLBACK.timeout_s
    # Half the canary's answers fail: some, but not all, reach clients as 5xx.
    assert 0 < trial["bad_answers"] <= trial["canary_requests"]
    bad = sum(n for code, n in section["loadgen"]["statuses"].items() if code.startswith("5"))
    assert bad >= trial["bad_answers"]
    assert any("| short |" in line for line in section["markdown"])


def test_failed_checks_reads_the_engine_reason() -> None:
    reason = "analysis failed 2 times in a row (errorRate, errorRateVsStable)"
    assert failed_checks(reason) == ["errorRate", "errorRateVsStable"]
    assert failed_checks("progressDeadline passed") == ["progressDeadline passed"]
