"""The decision-quality simulator (bench/decision.py) drives the real engine: the stated
alpha holds on it, and it tells good canaries from bad ones where the baselines cannot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import decision as d

FAST = d.World(rps=150.0, jitter=0.25, burst_rate=0.002, gap_rate=0.001)


def _engine(sc: d.Scenario, n: int, alpha: float = 0.01, **analysis: object) -> list[d.Outcome]:
    spec = d.base_spec({"alpha": alpha, **analysis})
    return [d.run_engine(sc, spec, seed, horizon=900) for seed in range(n)]


def test_healthy_canaries_are_rolled_back_at_most_alpha_of_the_time() -> None:
    # alpha 0.05 so that a violation would show in 120 rollouts (expected <= 6); noisy
    # latency, shared error bursts and Prometheus gaps included.
    outs = _engine(d.Scenario("healthy", d.Version(), FAST), 120, alpha=0.05)
    rolled = sum(o.decision == "rolledBack" for o in outs)
    assert rolled / len(outs) <= 0.05, [o.reason for o in outs if o.decision == "rolledBack"]
    assert sum(o.decision == "promoted" for o in outs) >= 0.9 * len(outs)


def test_a_baseline_on_the_same_worlds_does_roll_healthy_canaries_back() -> None:
    # The check above can fail: per-interval thresholds false-alarm in these worlds.
    sc = d.Scenario("healthy", d.Version(), replace(FAST, jitter=0.4, burst_rate=0.004))
    outs = [d.run_baseline(d.BASELINES[1], sc, seed) for seed in range(120)]
    assert sum(o.decision == "rolledBack" for o in outs) / len(outs) > 0.05


def test_one_percent_errors_against_none_is_never_promoted() -> None:
    sc = d.Scenario("1%", d.Version(error=0.01), d.World(rps=60.0), stable=d.Version(error=0.0))
    outs = _engine(sc, 30)
    assert not [o for o in outs if o.decision == "promoted"]
    assert sum(o.decision == "rolledBack" for o in outs) >= 27


def test_half_failing_canary_is_rolled_back_on_the_first_run_with_few_bad_answers() -> None:
    sc = d.Scenario("50%", d.Version(error=0.5), d.World(rps=40.0, scrape=1.0))
    outs = _engine(sc, 20, interval="1s")
    assert all(o.decision == "rolledBack" for o in outs)
    assert max(o.seconds for o in outs) <= 5
    assert sorted(o.served_bad for o in outs)[len(outs) // 2] <= 10


def test_wrong_answers_with_right_marginals_are_rolled_back_without_labels() -> None:
    sc = d.Scenario("41%", d.Version(disagree=0.41), d.World(rps=60.0))
    spec = d.base_spec({"metrics": {"agreement": {}}}, agreement=True)
    outs = [d.run_engine(sc, spec, seed, horizon=600) for seed in range(20)]
    assert all(o.decision == "rolledBack" for o in outs)
    assert all("agreement" in o.reason for o in outs)


@pytest.mark.parametrize("qn", [0.5, 0.95, 0.99])
def test_histogram_quantile_interpolates_like_prometheus(qn: float) -> None:
    import numpy as np

    buckets = np.zeros(len(d._EDGES) + 1)
    buckets[10], buckets[11] = 50, 50  # half in each of two adjacent buckets
    value = d.histogram_quantile(qn, buckets)
    assert d._EDGES[9] <= value <= d._EDGES[11]
