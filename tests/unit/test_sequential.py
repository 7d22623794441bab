"""The anytime-valid mixture tests (services/sequential.py): exactness, validity, power."""

from __future__ import annotations

import math
import random

import pytest
from mlrollout.services import sequential as sq


def _brute_e(hits: int, misses: int, p0: float, ratios: tuple[float, ...]) -> float:
    """The mixture e-value straight from its definition: mean over r of the product of LRs."""
    total = 0.0
    for r in ratios:
        pr = r * p0 / (r * p0 + 1 - p0)
        total += (pr / p0) ** hits * ((1 - pr) / (1 - p0)) ** misses
    return total / len(ratios)


@pytest.mark.parametrize(
    ("hits", "misses", "p0"), [(0, 0, 0.1), (3, 0, 0.1), (5, 20, 0.3), (1, 50, 0.02)]
)
def test_closed_form_matches_definition(hits: int, misses: int, p0: float) -> None:
    got = math.exp(sq.log_e_value(hits, misses, p0))
    assert got == pytest.approx(_brute_e(hits, misses, p0, sq.DEFAULT_RATIOS), rel=1e-12)


def test_incremental_matches_closed_form_in_any_order() -> None:
    rng = random.Random(7)
    events = [True] * 6 + [False] * 40
    rng.shuffle(events)
    test = sq.SequentialTest()
    for hit in events:
        test.observe(hit, 0.2)
    assert test.hits == 6 and test.misses == 40
    assert test.log_e == pytest.approx(sq.log_e_value(6, 40, 0.2), abs=1e-12)


def test_no_evidence_is_e_one_and_misses_only_lower_it() -> None:
    assert sq.log_e_value(0, 0, 0.3) == 0.0
    assert sq.log_e_value(0, 10, 0.3) < 0.0
    assert sq.log_e_value(4, 0, 0.3) > sq.log_e_value(4, 1, 0.3)


def test_error_split_null_follows_share_and_ratio() -> None:
    assert sq.split_null(0.1) == pytest.approx(0.1)
    # A tolerated doubling of the canary's rate: at 10 % traffic 2 x 0.1 / (0.2 + 0.9).
    assert sq.split_null(0.1, 2.0) == pytest.approx(0.2 / 1.1)


def test_guard_grid_needs_three_canary_errors_at_ten_percent() -> None:
    # A canary failing most requests while stable fails none: every error is the canary's.
    assert sq.hits_needed(0.1, 0.01, sq.GUARD_RATIOS) == 3
    assert sq.hits_needed(0.1, 0.0025, sq.GUARD_RATIOS) == 3
    # 50 % traffic: at most 2x per error, so 2^k / 3 >= 100 at best: 8 by the definition.
    assert sq.hits_needed(0.5, 0.01, sq.GUARD_RATIOS) == 8
    assert _brute_e(8, 0, 0.5, sq.GUARD_RATIOS) >= 100 > _brute_e(7, 0, 0.5, sq.GUARD_RATIOS)


def test_stable_errors_cancel_canary_errors() -> None:
    # Errors split as the traffic does: no evidence against the canary whatever the count.
    assert sq.error_split_log_e(10, 90, 0.1) < 0
    assert sq.error_split_log_e(30, 30, 0.1) > sq.threshold(0.01)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, float("nan")])
def test_bad_arguments_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        sq.log_e_value(1, 1, bad)
    with pytest.raises(ValueError):
        sq.threshold(bad)
    with pytest.raises(ValueError):
        sq.disagreement_log_e(1, 1, bad)
    with pytest.raises(ValueError):
        sq.SequentialTest().observe(True, bad)


def test_bad_grids_and_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        sq.SequentialTest(ratios=())
    with pytest.raises(ValueError):
        sq.log_e_value(1, 1, 0.5, ratios=(0.5, 2.0))
    with pytest.raises(ValueError):
        sq.log_e_value(-1, 1, 0.5)
    with pytest.raises(ValueError):
        sq.split_null(0.1, 0.5)


def _false_alarm_rate(p_true: float, p0_of: object, runs: int, events: int, alpha: float) -> float:
    rng = random.Random(20261201)
    crossed = 0
    for _ in range(runs):
        test = sq.SequentialTest()
        for i in range(events):
            p0 = p0_of(i) if callable(p0_of) else float(p0_of)  # type: ignore[arg-type]
            truth = min(p_true, p0) if p_true >= 0 else p0
            test.observe(rng.random() < truth, p0)
            if test.crossed(alpha):  # looked at after every single event
                crossed += 1
                break
    return crossed / runs


def test_false_alarms_stay_below_alpha_when_looked_at_after_every_event() -> None:
    # On the null boundary (hit probability exactly p0): the hardest case for validity.
    alpha, runs = 0.05, 1500
    rate = _false_alarm_rate(-1, 0.1, runs, 400, alpha)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_false_alarms_stay_below_alpha_with_a_changing_share() -> None:
    # The canary's share steps 5 % -> 20 % -> 50 % (weights advancing) mid-stream.
    alpha, runs = 0.05, 1500

    def share(i: int) -> float:
        return 0.05 if i < 100 else 0.2 if i < 250 else 0.5

    rate = _false_alarm_rate(-1, share, runs, 400, alpha)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_power_a_canary_twice_as_bad_is_found() -> None:
    rng = random.Random(3)
    found = 0
    for _ in range(200):
        test = sq.SequentialTest()
        q = sq.split_null(0.2, 2.0)  # true attribution for rho = 2 at 20 % traffic
        for _ in range(400):
            test.observe(rng.random() < q, 0.2)
            if test.crossed(0.01):
                found += 1
                break
    assert found >= 180  # 400 errors are plenty to tell a doubled error rate


def test_agreement_test_crosses_only_below_min() -> None:
    assert sq.disagreement_log_e(950, 50, 0.95) < sq.threshold(0.01)
    assert sq.disagreement_log_e(59, 41, 0.95) > sq.threshold(0.01)


def test_counts_at_once_equal_events_one_by_one() -> None:
    one, batch = sq.SequentialTest(), sq.SequentialTest()
    for hit in [True] * 4 + [False] * 9:
        one.observe(hit, 0.05)
    batch.observe_counts(4, 9, 0.05)
    assert batch.log_e == pytest.approx(one.log_e, abs=1e-12)
    assert (batch.hits, batch.misses) == (4, 9)
    big = sq.SequentialTest()
    big.observe_counts(10**9, 10**9, 0.5)  # a hostile batch costs the same as a small one
    assert math.isfinite(big.log_e)
    with pytest.raises(ValueError):
        big.observe_counts(-1, 0, 0.5)
