"""Routing table: parsing, validation, generations and the per-request choice."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlrollout.services.router.table import (
    BUCKETS,
    TableError,
    check_successor,
    choose,
    parse_table,
    should_shadow,
    sticky_bucket,
)

GOOD: dict[str, Any] = {
    "generation": 3,
    "deployment": "fraud",
    "backends": {
        "stable": {"url": "http://127.0.0.1:8001", "version": "v1"},
        "canary": {"url": "http://model-v2.ns.svc:8000/base/", "version": "v2"},
    },
    "weights": {"stable": 90, "canary": 10},
    "stickyHeader": "X-User-Id",
    "shadowPercent": 0,
}


def table_with(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def test_good_table_parses() -> None:
    table = parse_table(json.dumps(GOOD).encode())
    assert table.generation == 3
    assert table.deployment == "fraud"
    assert table.weights == {"stable": 90, "canary": 10}
    assert table.sticky_header == "x-user-id"  # header names are case-insensitive
    canary = table.backends["canary"]
    assert (canary.host, canary.port, canary.prefix) == ("model-v2.ns.svc", 8000, "/base")
    assert table.backends["stable"].port == 8001
    assert table.raw == GOOD


def test_stable_only_table() -> None:
    doc = table_with(backends={"stable": GOOD["backends"]["stable"]}, weights={"stable": 100})
    table = parse_table(doc)
    assert list(table.backends) == ["stable"]
    assert table.canary_weight == 0


def test_canary_without_weight_gets_none() -> None:
    table = parse_table(table_with(weights={"stable": 100}, shadowPercent=25))
    assert table.canary_weight == 0
    assert table.shadow_percent == 25.0


def test_unknown_extra_keys_are_ignored() -> None:
    assert parse_table(table_with(futureKey={"a": 1})).generation == 3


BAD_BACKENDS = {"stable": GOOD["backends"]["stable"], "blue": GOOD["backends"]["stable"]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (table_with(generation=None), "generation must be an integer"),
        (table_with(generation=-1), "generation must be an integer"),
        (table_with(generation="3"), "generation must be an integer"),
        (table_with(generation=True), "generation must be an integer"),
        (
            table_with(weights={"stable": 110, "canary": -10}),
            "weights.stable must be an integer in 0..100",
        ),
        (table_with(weights={"stable": 90.5, "canary": 9.5}), "must be an integer in 0..100"),
        (table_with(weights={"stable": 90, "canary": 20}), "must add up to 100, got 110"),
        (table_with(weights={"stable": 90, "blue": 10}), "unknown backend 'blue'"),
        (table_with(weights=[90, 10]), "weights must be an object"),
        (table_with(backends=BAD_BACKENDS), "unknown backend 'blue'"),
        (table_with(backends={"canary": GOOD["backends"]["canary"]}), "must include stable"),
        (table_with(backends={}), "backends must be a non-empty object"),
        (
            table_with(backends={"stable": GOOD["backends"]["stable"]}),
            "weights.canary is 10 but there is no canary backend",
        ),
        (table_with(backends={"stable": {"url": "http://a:1"}}), "version must be a non-empty"),
        (table_with(backends={"stable": {"url": "https://a", "version": "v"}}), "only http://"),
        (table_with(backends={"stable": {"url": "http://a:x", "version": "v"}}), "malformed"),
        (table_with(backends={"stable": {"url": "http:///p", "version": "v"}}), "has no host"),
        (table_with(backends={"stable": "http://a"}), "must be an object with url"),
        (table_with(stickyHeader="x user"), "stickyHeader must be a header name"),
        (table_with(shadowPercent=101), "shadowPercent must be a number in 0..100"),
        (
            table_with(
                backends={"stable": GOOD["backends"]["stable"]},
                weights={"stable": 100},
                shadowPercent=5,
            ),
            "needs a canary backend",
        ),
        (table_with(deployment=7), "deployment must be a string"),
    ],
)
def test_bad_tables_are_rejected_with_a_reason(data: Any, message: str) -> None:
    with pytest.raises(TableError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_table(data)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(TableError) as err:
        parse_table(table_with(generation=-1, shadowPercent=200))
    assert "generation" in str(err.value) and "shadowPercent" in str(err.value)


@pytest.mark.parametrize(
    ("current_gen", "new_gen", "same_content", "expected"),
    [
        (None, 1, False, True),
        (3, 4, False, True),
        (3, 3, True, False),
        (3, 3, False, "already in force"),
        (3, 2, False, "lower than generation 3"),
    ],
)
def test_successor_rules(
    current_gen: int | None, new_gen: int, same_content: bool, expected: bool | str
) -> None:
    current = None if current_gen is None else parse_table(table_with(generation=current_gen))
    weights = GOOD["weights"] if same_content else {"stable": 50, "canary": 50}
    new = parse_table(table_with(generation=new_gen, weights=weights))
    if isinstance(expected, str):
        with pytest.raises(TableError, match=expected):
            check_successor(current, new)
    else:
        assert check_successor(current, new) is expected


def weighted(canary: int, **extra: Any) -> Any:
    return parse_table(table_with(weights={"stable": 100 - canary, "canary": canary}, **extra))


@pytest.mark.parametrize(
    ("canary", "sticky", "force", "rand", "expected"),
    [
        (10, None, None, 0.0, "canary"),
        (10, None, None, 0.0999, "canary"),
        (10, None, None, 0.1, "stable"),
        (10, None, None, 0.99, "stable"),
        (0, None, None, 0.0, "stable"),
        (100, None, None, 0.9999, "canary"),
        (0, "user-1", None, 0.0, "stable"),
        (100, "user-1", None, 0.9, "canary"),
        (0, None, "canary", 0.5, "canary"),
        (100, None, " Stable ", 0.5, "stable"),
        (50, "user-1", "stable", 0.0, "stable"),
    ],
)
def test_choose(
    canary: int, sticky: str | None, force: str | None, rand: float, expected: str
) -> None:
    assert choose(weighted(canary, trackHeader="always"), sticky, force, rand) == expected


def test_sticky_choice_follows_the_bucket_not_rand() -> None:
    table = weighted(50)
    for user in (f"user-{i}" for i in range(200)):
        want = "canary" if sticky_bucket(user) < 5000 else "stable"
        assert {choose(table, user, None, r) for r in (0.0, 0.5, 0.999)} == {want}


def test_forcing_an_absent_track_is_an_error() -> None:
    stable_only = parse_table(
        table_with(
            backends={"stable": GOOD["backends"]["stable"]},
            weights={"stable": 100},
            trackHeader="always",
        )
    )
    with pytest.raises(TableError, match="cannot force track 'canary'"):
        choose(stable_only, None, "canary", 0.5)
    with pytest.raises(TableError, match="cannot force track 'blue'"):
        choose(weighted(10, trackHeader="weighted"), None, "blue", 0.5)


@pytest.mark.parametrize(
    ("percent", "track", "rand", "expected"),
    [(0, "stable", 0.0, False), (20, "stable", 0.19, True), (20, "stable", 0.2, False),
     (100, "canary", 0.0, False), (100, "stable", 0.999, True)],
)  # fmt: skip
def test_should_shadow(percent: int, track: str, rand: float, expected: bool) -> None:
    table = weighted(0 if track == "stable" else 100, shadowPercent=percent)
    assert should_shadow(table, track, rand) is expected  # type: ignore[arg-type]


@given(
    # A blank value (whitespace only) is no user by design: it splits by weight.
    user=st.text(min_size=1, max_size=40).filter(lambda u: bool(u.strip())),
    a=st.integers(min_value=0, max_value=100),
    b=st.integers(min_value=0, max_value=100),
)
def test_raising_the_weight_moves_only_the_users_it_must(user: str, a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    before = choose(weighted(low), user, None, 0.5)
    after = choose(weighted(high), user, None, 0.5)
    bucket = sticky_bucket(user)
    moved = before != after
    assert moved == (low * 100 <= bucket < high * 100)
    if moved:
        assert (before, after) == ("stable", "canary")


def test_buckets_are_spread_evenly() -> None:
    counts = [0] * 10
    for i in range(20_000):
        counts[sticky_bucket(f"user-{i}") * 10 // BUCKETS] += 1
    # 2000 expected per decile; 5 standard deviations is about 210.
    assert all(abs(c - 2000) < 210 for c in counts), counts


def test_bucket_is_the_same_in_another_process() -> None:
    # Python's own hash() is salted per process; users must not move on a restart.
    code = "from mlrollout.services.router.table import sticky_bucket as b; print(b('alice'), b('bob'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(sticky_bucket("alice")), str(sticky_bucket("bob"))]
