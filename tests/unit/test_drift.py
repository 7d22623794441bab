"""Streaming drift: statistics against scipy, buffering, false-alarm rate, detection, metrics."""

from __future__ import annotations

import itertools
import math
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import mlrollout.services.drift as drift_module
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlrollout.services.drift import (
    DriftMonitor,
    DriftSnapshot,
    g_test,
    g_test_two_sample,
    pool_bins,
    psi,
)
from mlrollout.services.metrics import DriftCollector
from mlrollout.services.profile import Profile, bin_numeric, build_profile, load_profile
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

N_NUMERIC = 4
COLORS, COLOR_P = ["red", "green", "blue"], [0.6, 0.3, 0.1]
Batch = tuple[np.ndarray, list[list[Any]], np.ndarray]


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> Batch:
    """Draws from the training distribution; `shift` moves x1's mean by that many sigmas."""
    x = rng.normal(size=(n, N_NUMERIC))
    x[:, 1] += shift
    colors = rng.choice(COLORS, size=n, p=COLOR_P)
    return x, [[c] for c in colors], (x[:, 0] > 0).astype(np.int64)


def _profile(rows: int, seed: int = 0) -> Profile:
    x, cat, pred = _rows(np.random.default_rng(seed), rows)
    columns: dict[str, np.ndarray] = {f"x{i}": x[:, i] for i in range(N_NUMERIC)}
    columns["color"] = np.array([c[0] for c in cat], dtype=object)
    kinds = {name: "numeric" for name in columns} | {"color": "categorical"}
    return load_profile(build_profile(columns, kinds, pred, "class", classes=["0", "1"]))


@pytest.fixture(scope="module")
def profile() -> Profile:
    return _profile(20_000)


# --------------------------------------------------------------------------- pure helpers


def test_g_test_equals_scipy() -> None:
    rng = np.random.default_rng(3)
    for k in (2, 5, 11):
        props = rng.dirichlet(np.ones(k))
        counts = rng.multinomial(700, props)
        stat, p = g_test(props, counts)
        ref = stats.power_divergence(counts, props * 700, lambda_="log-likelihood")
        assert stat == pytest.approx(ref.statistic, rel=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=1e-9)
        assert p == pytest.approx(stats.chi2.sf(stat, k - 1), rel=1e-9)


def test_g_test_drops_empty_expected_bins_unless_they_have_counts() -> None:
    props, counts = np.array([0.5, 0.0, 0.5]), np.array([40, 0, 60])
    ref = stats.power_divergence([40, 60], [50, 50], lambda_="log-likelihood")
    assert g_test(props, counts) == pytest.approx((ref.statistic, ref.pvalue))
    assert g_test(props, np.array([40, 1, 60])) == (math.inf, 0.0)


def test_two_sample_g_test_equals_scipy_contingency() -> None:
    rng = np.random.default_rng(4)
    props = rng.dirichlet(np.ones(6))
    a, b = rng.multinomial(900, props), rng.multinomial(300, props)
    a[5] = b[5] = 0  # a bin neither sample reached carries no degree of freedom
    ref = stats.chi2_contingency(np.vstack([a, b])[:, :5], lambda_="log-likelihood")
    assert g_test_two_sample(a, b) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
    with pytest.raises(ValueError, match="counts_b: has no mass"):
        g_test_two_sample(a, np.zeros(6))


@pytest.mark.parametrize(
    ("expected", "counts", "message"),
    [
        ([0.5, 0.5], [1, 2, 3], "counts must have 2 bins"),
        ([0.5, -0.5], [1, 2], "expected_props: must be finite and non-negative"),
        ([0.5, 0.5], [0, 0], "counts: has no mass"),
        ([], [], "non-empty"),
    ],
)
def test_g_test_rejects_bad_input(expected: list, counts: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        g_test(np.array(expected), np.array(counts))


def test_psi_matches_its_definition_and_accepts_counts() -> None:
    e, a = np.array([0.2, 0.3, 0.5, 0.0]), np.array([0.25, 0.25, 0.4, 0.1])
    by_hand = sum(
        (max(ai, 1e-4) - max(ei, 1e-4)) * math.log(max(ai, 1e-4) / max(ei, 1e-4))
        for ei, ai in zip(e, a, strict=True)
    )
    assert psi(e, a) == pytest.approx(by_hand)
    assert psi(e * 1000, a * 37) == pytest.approx(by_hand)  # counts are normalised
    assert psi(e, a) == pytest.approx(psi(a, e))
    assert psi(a, a) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        psi(e, a[:3])


@pytest.mark.parametrize(
    ("props", "window", "cells", "cell_props"),
    [
        # all cells expect >= 5 rows: one cell per bin
        ([0.25, 0.25, 0.5], 100, [0, 1, 2], [0.25, 0.25, 0.5]),
        # two rare bins (2 + 4 rows) pool into a cell that expects 6
        ([0.48, 0.46, 0.02, 0.04], 100, [0, 1, 2, 2], [0.48, 0.46, 0.06]),
        # a never-seen bin joins the smallest regular cell: no empty degree of freedom
        ([0.7, 0.3, 0.0], 100, [0, 1, 1], [0.7, 0.3]),
    ],
)
def test_pool_bins(props: list, window: int, cells: list, cell_props: list) -> None:
    got_cells, got_props = pool_bins(np.array(props), window)
    assert got_cells.tolist() == cells
    assert got_props == pytest.approx(cell_props)


# --------------------------------------------------------------------------- monitor


def _feed(monitor: DriftMonitor, batch: Batch, size: int) -> None:
    x, cat, pred = batch
    for start in range(0, len(pred), size):
        stop = start + size
        monitor.observe(x[start:stop], cat[start:stop], pred[start:stop])


def test_window_statistics_equal_scipy_on_the_same_counts(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=1000)
    monitor.observe(*_rows(np.random.default_rng(5), 1000, shift=0.2))
    snap = monitor.snapshot()
    inflation = 1 + 1000 / profile.rows
    assert snap.windows == 1
    series = [
        *zip(profile.features, snap.features, strict=True),
        (profile.prediction, snap.prediction),
    ]
    for prof, got in series:
        counts, props = np.array(got.bin_counts), np.array(prof.proportions)
        cells, cell_props = pool_bins(props, 1000)
        cell_counts = np.bincount(cells, weights=counts)
        ref = stats.power_divergence(cell_counts, cell_props * 1000, lambda_="log-likelihood")
        assert got.statistic == pytest.approx(ref.statistic / inflation, rel=1e-9), prof.name
        assert got.df == len(cell_props) - 1
        assert got.p_value == pytest.approx(stats.chi2.sf(got.statistic, got.df), rel=1e-9)
        assert got.psi == pytest.approx(psi(props, counts), rel=1e-9)


def test_counts_match_direct_binning(profile: Profile) -> None:
    x, cat, pred = batch = _rows(np.random.default_rng(6), 2500)
    x[::17, 2] = np.nan
    monitor = DriftMonitor(profile, window=1000)
    _feed(monitor, batch, 100)
    snap = monitor.snapshot()
    assert (snap.windows, snap.rows) == (2, 2500)  # the half window is counted, not tested
    for i in range(N_NUMERIC):
        feat = profile.feature(f"x{i}")
        direct = np.bincount(bin_numeric(np.asarray(feat.edges), x[:, i]), minlength=feat.n_bins)
        assert snap.features[i].bin_counts == tuple(direct)
    color = [c[0] for c in cat]
    assert snap.features[N_NUMERIC].bin_counts == (*[color.count(c) for c in COLORS], 0, 0)
    assert snap.prediction.bin_counts == (int((pred == 0).sum()), int((pred == 1).sum()), 0, 0)


@pytest.mark.parametrize("batch_size", [1, 7, 333])
def test_batching_does_not_change_results(profile: Profile, batch_size: int) -> None:
    x, cat, pred = batch = _rows(np.random.default_rng(7), 2100, shift=0.3)
    whole = DriftMonitor(profile, window=500, chunk=64)
    whole.observe(x, np.array(cat, dtype=object), pred)  # the server passes an object array
    pieces = DriftMonitor(profile, window=500, chunk=64)
    _feed(pieces, batch, batch_size)
    assert pieces.snapshot() == whole.snapshot()


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 700), max_size=12),
    chunk=st.integers(1, 200),
    window=st.integers(50, 300),
)
def test_any_split_and_chunk_size_gives_the_same_snapshot(
    profile: Profile, cuts: list[int], chunk: int, window: int
) -> None:
    x, cat, pred = _rows(np.random.default_rng(19), 700, shift=0.4)
    reference = DriftMonitor(profile, window=window, chunk=window)
    reference.observe(x, cat, pred)
    split = DriftMonitor(profile, window=window, chunk=chunk)
    bounds = [0, *sorted(cuts), 700]
    for lo, hi in itertools.pairwise(bounds):  # empty batches included
        split.observe(x[lo:hi], cat[lo:hi], pred[lo:hi])
    assert split.snapshot() == reference.snapshot()


@pytest.mark.parametrize("as_array", [False, True])
def test_categorical_values_unseen_missing_and_odd_types(profile: Profile, as_array: bool) -> None:
    monitor = DriftMonitor(profile, window=1000)
    values: list[Any] = ["red", "purple", None, math.nan, ["unhashable"], 3]
    rows: Any = [[v] for v in values]
    if as_array:
        rows = np.empty((len(values), 1), dtype=object)
        for i, v in enumerate(values):
            rows[i, 0] = v
    x = np.zeros((len(values), N_NUMERIC))
    monitor.observe(x, rows, np.zeros(len(values), dtype=np.int64))
    color = monitor.snapshot().features[N_NUMERIC]
    # red | green | blue | other (purple, list, 3) | missing (None, NaN)
    assert color.bin_counts == (1, 0, 0, 3, 2)


def test_class_predictions_out_of_range_count_as_other(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=1000)
    pred = np.array([0, 1, 1, 2, -1])
    monitor.observe(np.zeros((5, N_NUMERIC)), [["red"]] * 5, pred)
    assert monitor.snapshot().prediction.bin_counts == (1, 2, 2, 0)


def test_numeric_predictions_use_the_profile_edges() -> None:
    rng = np.random.default_rng(8)
    train = rng.normal(size=3000)
    prof = load_profile(build_profile({"x": train}, {"x": "numeric"}, 2 * train, "numeric"))
    monitor = DriftMonitor(prof, window=1000)
    y = np.append(rng.normal(size=99), np.nan)
    monitor.observe(y[:, None] / 2, None, y)
    expected = np.bincount(bin_numeric(np.asarray(prof.prediction.edges), y), minlength=11)
    assert monitor.snapshot().prediction.bin_counts == tuple(expected)


def test_before_the_first_window_there_is_no_verdict(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=1000)
    monitor.observe(*_rows(np.random.default_rng(9), 999, shift=3.0))
    snap = monitor.snapshot()
    assert snap.windows == 0 and snap.rows == 999
    assert all(f.psi is None and f.statistic is None and not f.alarm for f in snap.features)
    monitor.observe(*_rows(np.random.default_rng(9), 1, shift=3.0))
    assert monitor.snapshot().features[1].alarm


def test_bad_batches_are_refused_and_change_nothing(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=1000)
    x, cat, pred = _rows(np.random.default_rng(10), 3)
    before = monitor.snapshot()
    with pytest.raises(ValueError, match=r"numeric: expected shape \(3, 4\)"):
        monitor.observe(x[:, :3], cat, pred)
    with pytest.raises(ValueError, match="categorical: expected 3 rows"):
        monitor.observe(x, None, pred)
    with pytest.raises(ValueError, match="every row needs 1 values"):
        monitor.observe(x, [["red", "x"]] * 3, pred)
    with pytest.raises(ValueError, match=r"categorical: expected shape \(3, 1\), got \(3, 2\)"):
        monitor.observe(x, np.full((3, 2), "red", dtype=object), pred)
    assert monitor.snapshot() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"window": 10}, "window"), ({"arl_windows": 0.5}, "arl_windows"), ({"chunk": 0}, "chunk")],
)
def test_bad_settings_are_refused(profile: Profile, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftMonitor(profile, **kwargs)


def test_memory_does_not_grow_with_rows(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=200)
    rng = np.random.default_rng(11)
    batches = [_rows(rng, 1000) for _ in range(2)]  # made up front: only the monitor is traced
    _feed(monitor, batches[0], 50)
    tracemalloc.start()
    try:
        for _ in range(20):  # 20,000 more rows in 100 windows
            _feed(monitor, batches[1], 50)
        monitor.snapshot()
        # Only what the monitor's own code allocated and still holds: other tests' background
        # threads (metrics servers, ...) allocate too while tracing is on.
        held = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, drift_module.__file__)]
        )
    finally:
        tracemalloc.stop()
    assert monitor.snapshot().rows == 21_000
    # A few small objects, nothing per row (per-row storage would be >= 1 MB here).
    assert sum(trace.size for trace in held.traces) < 32_000


def test_concurrent_observe_and_snapshot_lose_no_rows(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=300, chunk=32)
    x, cat, pred = _rows(np.random.default_rng(12), 1)
    done = threading.Event()
    snaps: list[DriftSnapshot] = []

    def scrape() -> None:
        while not done.is_set() and len(snaps) < 10_000:
            snaps.append(monitor.snapshot())

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(6000):
            monitor.observe(x, cat, pred)
    finally:
        done.set()
        scraper.join(timeout=30)
    final = monitor.snapshot()
    assert final.rows == 6000 and final.windows == 20
    assert all(sum(f.bin_counts) == final.rows for f in final.features)
    assert [s.rows for s in snaps] == sorted(s.rows for s in snaps)


# --------------------------------------------------------------------------- statistics


def _alarmed_windows(monitor: DriftMonitor, make: Callable[[], Batch], windows: int) -> list[set]:
    """Names of the series that alarmed, per window."""
    out = []
    for _ in range(windows):
        monitor.observe(*make())
        snap = monitor.snapshot()
        names = {f.name for f in (*snap.features, snap.prediction) if f.alarm}
        assert snap.any_alarm == bool(names)
        out.append(names)
    return out


def test_false_alarm_rate_on_null_streams_matches_the_stated_run_length() -> None:
    # 1,000 windows of 500 rows drawn from the training distribution, arl_windows=20:
    # at most 1/20 of windows may alarm (Bonferroni over 6 series: 1-(1-0.05/6)^6 = 4.89%).
    # Binomial(1000, 0.049) has sd 6.8; +-4 sd is [21, 77], so a correct monitor fails
    # this with p < 1e-4, while no split (26% of windows) or a wrong df falls outside.
    # The profile comes from 100 x window rows so its own sampling error is small.
    rng = np.random.default_rng(13)
    monitor = DriftMonitor(_profile(50_000, seed=14), window=500, arl_windows=20)
    alarms = _alarmed_windows(monitor, lambda: _rows(rng, 500), 1000)
    assert monitor.snapshot().alpha == pytest.approx(0.05 / 6)
    assert 21 <= sum(bool(a) for a in alarms) <= 77


def test_small_profiles_keep_the_stated_rate_on_average() -> None:
    # A 1,000-row profile tested with 500-row windows: the profile's own sampling error
    # inflates G by 1 + 500/1000. Over 400 independent profiles (one window each,
    # alpha 0.1: the constant prediction has one cell and is not tested) the corrected
    # rate must be near 0.1; uncorrected it would be ~0.37. Binomial(400, 0.1): sd 6,
    # accepted [16, 64] (+-4 sd).
    rng = np.random.default_rng(18)
    alarms = 0
    for _ in range(400):
        train = rng.normal(size=1000)
        prof = load_profile(
            build_profile({"x": train}, {"x": "numeric"}, np.zeros(1000), "numeric")
        )
        monitor = DriftMonitor(prof, window=500, arl_windows=10)
        monitor.observe(rng.normal(size=(500, 1)), None, np.zeros(500))
        snap = monitor.snapshot()
        assert snap.prediction.statistic is None and snap.alpha == pytest.approx(0.1)
        alarms += snap.any_alarm
    assert 16 <= alarms <= 64


def test_a_half_sigma_shift_in_one_feature_alarms_in_the_first_window(profile: Profile) -> None:
    # Power at 1,000 rows, 10 decile bins and alpha = 1/(500*6) is ~1 - 1e-15 (noncentrality
    # ~230 against a critical value ~26): the very first shifted window must alarm on x1.
    rng = np.random.default_rng(15)
    monitor = DriftMonitor(profile, window=1000, arl_windows=500)
    assert _alarmed_windows(monitor, lambda: _rows(rng, 1000), 3) == [set()] * 3
    shifted = _alarmed_windows(monitor, lambda: _rows(rng, 1000, shift=0.5), 2)
    assert shifted == [{"x1"}, {"x1"}]
    # Its effect size is large too; the unshifted features stay near zero.
    psis = {f.name: f.psi or 0.0 for f in monitor.snapshot().features}
    assert psis.pop("x1") > 0.1 > max(psis.values())


# --------------------------------------------------------------------------- prometheus

LABELS = {"deployment": "fraud", "model": "m", "version": "v2", "track": "canary"}


def _scrape(monitor: DriftMonitor) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor, LABELS))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_collector_exposes_the_contracted_families(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=500)
    monitor.observe(*_rows(np.random.default_rng(16), 1200, shift=1.0))
    fams = _scrape(monitor)
    snap = monitor.snapshot()
    expected = {
        "mlrollout_drift_bin": ("counter", {"feature", "bin"}),
        "mlrollout_drift_psi": ("gauge", {"feature"}),
        "mlrollout_drift_statistic": ("gauge", {"feature"}),
        "mlrollout_drift_alarm": ("gauge", {"feature"}),
        "mlrollout_drift_windows": ("counter", set()),
        "mlrollout_prediction_bin": ("counter", {"bin"}),
        "mlrollout_prediction_psi": ("gauge", set()),
        "mlrollout_prediction_drift_alarm": ("gauge", set()),
    }
    assert set(fams) == set(expected)
    for name, (kind, extra) in expected.items():
        assert fams[name].type == kind, name
        for sample in fams[name].samples:
            assert set(sample.labels) == set(LABELS) | extra, name
            assert {k: sample.labels[k] for k in LABELS} == LABELS
    bins = {
        (s.labels["feature"], int(s.labels["bin"])): s.value
        for s in fams["mlrollout_drift_bin"].samples
        if s.name.endswith("_total")
    }
    for f in snap.features:
        assert [bins[(f.name, b)] for b in range(len(f.bin_counts))] == list(f.bin_counts)
    alarms = {s.labels["feature"]: s.value for s in fams["mlrollout_drift_alarm"].samples}
    assert alarms == {f.name: float(f.alarm) for f in snap.features} and alarms["x1"] == 1.0
    windows = [s for s in fams["mlrollout_drift_windows"].samples if s.name.endswith("_total")]
    assert [s.value for s in windows] == [2.0]


def test_collector_before_the_first_window_has_no_window_gauges(profile: Profile) -> None:
    monitor = DriftMonitor(profile, window=500)
    monitor.observe(*_rows(np.random.default_rng(17), 10))
    fams = _scrape(monitor)
    assert fams["mlrollout_drift_psi"].samples == []
    assert fams["mlrollout_prediction_psi"].samples == []
    assert [s.value for s in fams["mlrollout_prediction_drift_alarm"].samples] == [0.0]
    pred_total = sum(
        s.value for s in fams["mlrollout_prediction_bin"].samples if s.name.endswith("_total")
    )
    assert pred_total == 10


def test_collector_requires_the_contract_labels(profile: Profile) -> None:
    monitor = DriftMonitor(profile)
    with pytest.raises(ValueError, match="labels: need exactly"):
        DriftCollector(monitor, {"model": "m", "version": "v1"})
