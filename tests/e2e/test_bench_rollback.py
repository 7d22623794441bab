"""Smoke size of the rollback benchmark: one faulty canary in local mode, rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import SMOKE_ROLLBACK
from bench.rollback import failed_checks, run_rollback

pytestmark = pytest.mark.e2e


def test_faulty_canary_is_rolled_back_and_its_errors_counted(tmp_path: Path) -> None:
    section = run_rollback(tmp_path, SMOKE_ROLLBACK)
    trial, guarded = section["trials"]
    for t in (trial, guarded):
        assert t["outcome"] == "rolledBack"
        assert t["peak_weight"] > 0  # it did take traffic, so the fault was live
        assert 0 < t["seconds_to_zero"] < SMOKE_ROLLBACK.timeout_s
        # Half the canary's answers fail: some, but not all, reach clients as 5xx.
        assert 0 < t["bad_answers"] <= t["canary_requests"]
    # Half the canary's answers fail: the absolute limit or the test against stable
    # (whichever crosses first) rolls it back.
    assert trial["variant"] == "short"
    assert {"errorRate", "errorRateVsStable"} & set(failed_checks(trial["reason"]))
    assert guarded["variant"] == "guard" and failed_checks(guarded["reason"]) == ["routerGuard"]
    bad = sum(n for code, n in section["loadgen"]["statuses"].items() if code.startswith("5"))
    assert bad >= trial["bad_answers"] + guarded["bad_answers"]
    assert any("| short |" in line for line in section["markdown"])
    assert any("| guard |" in line for line in section["markdown"])


def test_failed_checks_reads_the_engine_reason() -> None:
    reason = "analysis failed 2 times in a row (errorRate, errorRateVsStable)"
    assert failed_checks(reason) == ["errorRate", "errorRateVsStable"]
    assert failed_checks("progressDeadline passed") == ["progressDeadline passed"]
    assert failed_checks("router guard: canary v2 errors 3/5 (H0: ...)") == ["routerGuard"]
    crossed = "sequential test crossed: errorRate (rate confidence sequence): 5/9 ..."
    assert failed_checks(crossed) == ["errorRate"]
