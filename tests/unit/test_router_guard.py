"""The router guard's state machine (services/router/guard.py) and its table options."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from mlrollout.services.router.guard import Guard
from mlrollout.services.router.table import TableError, parse_table, should_shadow

BASE: dict[str, Any] = {
    "generation": 1,
    "deployment": "fraud",
    "backends": {
        "stable": {"url": "http://127.0.0.1:8001", "version": "v1"},
        "canary": {"url": "http://127.0.0.1:8002", "version": "v2"},
    },
    "weights": {"stable": 90, "canary": 10},
    "guard": {"alpha": 0.01},
}


def doc(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    out.update(changes)
    return out


def guard_for(**changes: Any) -> Guard:
    guard = Guard()
    guard.table_applied(parse_table(doc(**changes)))
    return guard


def test_a_failing_canary_trips_after_three_of_its_errors_at_ten_percent() -> None:
    guard = guard_for()
    for _ in range(50):
        assert not guard.observe("stable", "ok", 0.0)
    assert not guard.observe("canary", "server_error", 1.0)
    assert not guard.observe("canary", "ok", 1.1)
    assert not guard.observe("canary", "unreachable", 1.2)
    assert guard.observe("canary", "server_error", 1.3)
    report = guard.report()
    assert report["state"] == "tripped"
    trip = report["trip"]
    assert trip["test"] == "errors" and trip["canaryVersion"] == "v2" and trip["at"] == 1.3
    assert trip["evidence"]["canaryErrors"] == 3 and trip["evidence"]["stableErrors"] == 0
    assert trip["eValue"] >= trip["threshold"] == pytest.approx(100)
    assert "errors 3/4 vs stable 0/50 at 10% canary traffic" in trip["message"]


def test_a_trip_takes_the_canary_to_zero_and_never_raises_a_weight() -> None:
    table = parse_table(doc(shadowPercent=5, agreement={"percent": 20}))
    guard = Guard()
    guard.table_applied(table)
    assert guard.effective(table) is table  # nothing crossed: the table as written
    for _ in range(3):
        guard.observe("canary", "server_error", 0.0)
    served = guard.effective(table)
    assert served.weights == {"stable": 100, "canary": 0}
    assert served.shadow_percent == 0 and served.agreement is None
    # A later table for the same canary asking for more weight is served at 0 too.
    later = parse_table(doc(generation=2, weights={"stable": 50, "canary": 50}))
    guard.table_applied(later)
    assert guard.effective(later).weights == {"stable": 100, "canary": 0}
    assert guard.report()["state"] == "tripped"


def test_a_new_canary_or_none_clears_the_trip() -> None:
    guard = guard_for()
    for _ in range(3):
        guard.observe("canary", "server_error", 0.0)
    assert guard.tripped
    no_canary = doc(generation=2, weights={"stable": 100})
    del no_canary["backends"]["canary"]
    guard.table_applied(parse_table(no_canary))
    assert not guard.tripped and guard.report()["state"] == "idle"
    again = parse_table(doc(generation=3))
    guard.table_applied(again)
    assert not guard.tripped and guard.effective(again).weights["canary"] == 10
    other = doc(generation=4)
    other["backends"]["canary"] = {"url": "http://127.0.0.1:8003", "version": "v3"}
    for _ in range(3):
        guard.observe("canary", "server_error", 0.0)
    guard.table_applied(parse_table(other))
    assert not guard.tripped


def test_errors_split_like_the_traffic_never_trip() -> None:
    rng = random.Random(1)
    guard = guard_for()
    for _ in range(20_000):
        track = "canary" if rng.random() < 0.1 else "stable"
        outcome = "server_error" if rng.random() < 0.05 else "ok"
        assert not guard.observe(track, outcome, 0.0)
    ev = guard.report()["evidence"]
    assert ev["canaryErrors"] > 50 and ev["stableErrors"] > 500


def test_client_errors_are_not_the_canarys_fault() -> None:
    guard = guard_for()
    for _ in range(20):
        assert not guard.observe("canary", "client_error", 0.0)


def test_without_guard_or_without_share_nothing_trips_but_counts_are_kept() -> None:
    off = guard_for(guard=None)
    for _ in range(10):
        assert not off.observe("canary", "server_error", 0.0)
    assert off.report() == {"state": "off"}
    full = guard_for(weights={"stable": 0, "canary": 100})
    for _ in range(10):
        assert not full.observe("canary", "server_error", 0.0)  # no stable to compare with


def test_sticky_share_follows_what_was_routed() -> None:
    guard = guard_for(stickyHeader="x-user-id")
    assert guard.share() == pytest.approx(0.1)
    for _ in range(450):
        guard.observe("stable", "ok", 0.0)
    for _ in range(50):
        guard.observe("canary", "ok", 0.0)
    # 50 of 500 routed plus the prior's 5 of 50: still 10 %.
    assert guard.share() == pytest.approx(0.1)
    for _ in range(500):
        guard.observe("canary", "ok", 0.0)
    assert guard.share() == pytest.approx((550 + 5) / 1050)


def test_agreement_trips_only_with_a_minimum() -> None:
    plain = guard_for()
    assert not plain.observe_agreement(0, 100, 0.0)
    guard = guard_for(guard={"alpha": 0.01, "minAgreement": 0.95})
    assert not guard.observe_agreement(95, 5, 0.0)
    assert not guard.observe_agreement(6, 4, 0.0)
    tripped = False
    for _ in range(20):
        tripped = guard.observe_agreement(6, 4, 1.0)
        if tripped:
            break
    assert tripped
    trip = guard.report()["trip"]
    assert trip["test"] == "agreement"
    assert "agreed with stable on" in trip["message"]


@pytest.mark.parametrize(
    ("guard", "agreement", "message"),
    [
        ({"alpha": 0}, None, "guard.alpha must be a number in (0, 1)"),
        ({"alpha": True}, None, "guard.alpha"),
        ({"maxRatio": 0.5}, None, "guard.maxRatio must be a number in 1..1e6"),
        ({"minAgreement": 1}, None, "guard.minAgreement"),
        ("on", None, "guard must be an object"),
        (None, {"percent": 101}, "agreement.percent must be a number in 0..100"),
        (None, {"percent": 10, "source": "both"}, "agreement.source must be canary or stable"),
        (None, {"percent": 10, "relTol": -1}, "agreement.relTol"),
        (None, [10], "agreement must be an object"),
    ],
)
def test_bad_options_are_refused_with_the_reason(guard: Any, agreement: Any, message: str) -> None:
    with pytest.raises(TableError) as err:
        parse_table(doc(guard=guard, agreement=agreement))
    assert message in str(err.value)


def test_agreement_needs_a_canary() -> None:
    stable_only = doc(agreement={"percent": 10}, weights={"stable": 100})
    del stable_only["backends"]["canary"]
    with pytest.raises(TableError, match=r"agreement\.percent > 0 needs a canary backend"):
        parse_table(stable_only)


@pytest.mark.parametrize(
    ("agreement", "shadow", "track", "rand", "expected"),
    [
        ({"percent": 20}, 0, "canary", 0.19, True),
        ({"percent": 20}, 0, "canary", 0.2, False),
        ({"percent": 20}, 0, "stable", 0.0, False),  # source canary: stable's are not mirrored
        ({"percent": 20, "source": "stable"}, 0, "stable", 0.19, True),
        ({"percent": 20, "source": "stable"}, 0, "canary", 0.0, False),
        ({"percent": 20, "source": "stable"}, 30, "stable", 0.29, True),  # the larger share
        (None, 30, "canary", 0.0, False),
    ],
)
def test_which_requests_are_mirrored(
    agreement: Any, shadow: int, track: str, rand: float, expected: bool
) -> None:
    table = parse_table(doc(agreement=agreement, shadowPercent=shadow))
    assert should_shadow(table, track, rand) is expected  # type: ignore[arg-type]


def test_a_trip_reported_elsewhere_is_adopted_for_the_same_canary_only() -> None:
    first = guard_for()
    for _ in range(3):
        first.observe("canary", "server_error", 5.0)
    report = first.report()
    replica = guard_for()
    assert replica.adopt(report)
    trip = replica.report()["trip"]
    assert trip["adopted"] is True and trip["test"] == "errors" and trip["at"] == 5.0
    assert replica.effective(parse_table(doc())).weights["canary"] == 0
    assert not replica.adopt(report)  # already tripped
    other = Guard()
    other.table_applied(parse_table(doc(backends={**BASE["backends"], "canary": {
        "url": "http://127.0.0.1:8002", "version": "v3"}})))  # fmt: skip
    assert not other.adopt(report)
    for junk in (None, [], {"trip": "x"}, {"state": "watching"}):
        assert not guard_for().adopt(junk)


def test_an_answer_is_judged_at_the_share_it_was_routed_with() -> None:
    # Routed at 50 %, answered after the weight fell to 10 %: judged at 50 % (three canary
    # errors are then no evidence yet), not at 10 % (where three would trip).
    guard = guard_for(weights={"stable": 50, "canary": 50})
    routed = guard.share()
    assert routed == pytest.approx(0.5)
    guard.table_applied(parse_table(doc(generation=2)))
    for _ in range(3):
        assert not guard.observe("canary", "server_error", 0.0, routed)
    assert not guard.tripped
