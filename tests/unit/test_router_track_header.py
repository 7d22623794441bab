"""Issue 12 item 5 (router half): forcing a track with ``x-mlrollout-track`` is opt-in.

Off unless the table (from ``spec.traffic.trackHeader``) says so; even then a canary at
weight 0 (before its first step, rolled back, or taken out by the guard) is reachable
only with ``always``. Feedback is pinned to the track that made the prediction, which
for a canary is one with weight > 0.
"""

from __future__ import annotations

from typing import Any

import pytest
from mlrollout.services.router.table import TableError, choose, forced_track, parse_table


def table(canary_weight: int, mode: str | None = None, canary: bool = True) -> Any:
    backends = {"stable": {"url": "http://127.0.0.1:1", "version": "v1"}}
    weights = {"stable": 100 - canary_weight}
    if canary:
        backends["canary"] = {"url": "http://127.0.0.1:2", "version": "v2"}
        weights["canary"] = canary_weight
    doc: dict[str, Any] = {"generation": 1, "backends": backends, "weights": weights}
    if mode is not None:
        doc["trackHeader"] = mode
    return parse_table(doc)


@pytest.mark.parametrize("weight", [0, 10, 50])
def test_forcing_is_off_by_default(weight: int) -> None:
    t = table(weight)
    assert t.track_header == "off"
    assert forced_track(t, "canary") is None
    assert forced_track(t, "stable") is None
    assert forced_track(t, "blue") is None  # ignored, not an error: the header means nothing
    assert choose(t, None, "canary", 0.99) == "stable"  # the weights decide


def test_a_weight_zero_canary_cannot_be_forced_unless_the_spec_says_always() -> None:
    assert forced_track(table(0, "off"), "canary") is None
    assert forced_track(table(0, "weighted"), "canary") is None
    assert choose(table(0, "weighted"), None, "canary", 0.0) == "stable"
    assert forced_track(table(0, "always"), "canary") == "canary"


def test_weighted_reaches_a_canary_that_has_traffic_and_always_stable() -> None:
    assert forced_track(table(10, "weighted"), "canary") == "canary"
    assert choose(table(10, "weighted"), None, " Canary ", 0.99) == "canary"
    assert forced_track(table(10, "weighted"), "stable") == "stable"
    assert forced_track(table(0, "weighted"), "stable") == "stable"


def test_a_rolled_back_canary_is_not_in_the_table_so_never_reachable() -> None:
    rolled_back = table(0, "always", canary=False)
    with pytest.raises(TableError, match="cannot force track 'canary'"):
        forced_track(rolled_back, "canary")


def test_when_forcing_is_on_an_unknown_track_is_an_error() -> None:
    with pytest.raises(TableError, match="cannot force track 'blue'"):
        forced_track(table(10, "weighted"), "blue")


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_value_is_no_choice(blank: str) -> None:
    assert forced_track(table(10, "always"), blank) is None


@pytest.mark.parametrize("mode", ["off", "weighted", "always"])
def test_feedback_is_pinned_to_a_canary_with_traffic_whatever_the_mode(mode: str) -> None:
    assert forced_track(table(10, mode), "canary", feedback=True) == "canary"
    assert forced_track(table(10, mode), "stable", feedback=True) == "stable"
    if mode == "off":
        assert forced_track(table(10, mode), "blue", feedback=True) is None


def test_feedback_does_not_reach_a_weight_zero_canary_unless_always() -> None:
    assert forced_track(table(0, "off"), "canary", feedback=True) is None
    assert forced_track(table(0, "weighted"), "canary", feedback=True) is None
    assert forced_track(table(0, "always"), "canary", feedback=True) == "canary"


@pytest.mark.parametrize("value", ["on", True, 1, "Always", ""])
def test_track_header_must_be_off_weighted_or_always(value: object) -> None:
    doc = {
        "generation": 1,
        "backends": {"stable": {"url": "http://127.0.0.1:1", "version": "v1"}},
        "weights": {"stable": 100},
        "trackHeader": value,
    }
    with pytest.raises(TableError, match="trackHeader must be one of off, weighted, always"):
        parse_table(doc)
