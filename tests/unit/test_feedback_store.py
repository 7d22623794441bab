"""The feedback store (issue 12 item 3 and 5): bounded in bytes, server-issued ids, one label each.

Regression tests: before the fix the store was bounded by count (100,000 ids) and kept a
tuple of label strings per row, ~70 KB per 1,000-row prediction; ids were client-chosen,
so another client's id could be labelled, and a second label counted as ``unmatched``.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlrollout.services.model import feedback as fb
from mlrollout.services.model.artifact import load_artifact
from mlrollout.services.model.dataplane import FEEDBACK_ID_HEADER, Dataplane
from mlrollout.services.model.feedback import FeedbackStore, Lookup

from tests.doubles.model import numeric_artifact, numeric_data


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return numeric_artifact(tmp_path_factory.mktemp("fb") / "n")


def make(artifact: Path, **options: Any) -> Dataplane:
    dp = Dataplane(load_artifact(artifact), deployment="dep", track="stable", **options)
    dp.warm_up()
    return dp


def big_body(rows: int = 1000, seed: int = 0) -> bytes:
    X, _ = numeric_data(rows=rows, seed=seed)
    return json.dumps(X.tolist()).encode()


def test_ids_are_issued_by_the_server_and_unguessable(artifact: Path) -> None:
    dp = make(artifact)
    ids = set()
    for _ in range(200):
        reply = dp.predict(b"[[1, 2, 3, 4, 5]]", "client-chosen")
        fid = reply.payload["feedback_id"]
        assert reply.headers[FEEDBACK_ID_HEADER] == fid
        assert reply.payload["request_id"] == "client-chosen"  # still echoed for tracing
        assert fid != "client-chosen" and len(fid) == 32
        ids.add(fid)
    assert len(ids) == 200
    # The client's request id no longer names a prediction.
    reply = dp.feedback(json.dumps({"feedback_id": "client-chosen", "label": 1}).encode())
    assert reply.status == 404 and reply.payload["reason"] == "unknown_feedback_id"
    assert "x-mlrollout-feedback-id" in reply.payload["error"]


def test_request_id_in_feedback_is_refused_with_a_pointer_to_feedback_id(artifact: Path) -> None:
    dp = make(artifact)
    rid = dp.predict(b"[[1, 2, 3, 4, 5]]", "abc").payload["request_id"]
    reply = dp.feedback(json.dumps({"request_id": rid, "label": 1}).encode())
    assert reply.status == 422
    assert reply.payload["field"] == "feedback_id"
    assert "feedback_id" in reply.payload["error"] and "not by request_id" in reply.payload["error"]


def test_a_second_label_for_the_same_id_is_refused(artifact: Path) -> None:
    dp = make(artifact)
    fid = dp.predict(b"[[1, 2, 3, 4, 5]]", None).payload["feedback_id"]
    first = dp.feedback(json.dumps({"feedback_id": fid, "label": 1}).encode())
    assert first.status == 200 and first.payload["correct"] + first.payload["incorrect"] == 1
    second = dp.feedback(json.dumps({"feedback_id": fid, "label": 0}).encode())
    assert second.status == 409 and second.payload["reason"] == "duplicate_feedback"
    assert "already received" in second.payload["error"]
    # Twice in one list: refused, and nothing in the list is judged.
    fid2 = dp.predict(b"[[1, 2, 3, 4, 5]]", None).payload["feedback_id"]
    both = [{"feedback_id": fid2, "label": 1}, {"feedback_id": fid2, "label": 1}]
    assert dp.feedback(json.dumps(both).encode()).status == 409
    assert dp.feedback(json.dumps(both[0]).encode()).status == 200
    snap = dp.metrics.snapshot()
    assert sum(snap["feedback"].values()) == 2  # no unmatched from any refusal
    assert snap["violations"]["duplicate_feedback"] == 2


def test_forged_ids_are_refused_and_evicted_ones_count_as_unmatched(artifact: Path) -> None:
    dp = make(artifact, feedback_bytes=fb.MIN_CAPACITY_BYTES)
    first = dp.predict(big_body(1000), None).payload["feedback_id"]
    for seed in range(1, 80):  # far more than 64 KiB of 1000-row predictions
        dp.predict(big_body(1000, seed=seed % 3), None)
    assert dp.feedback_store.peek(first)[0] is Lookup.EVICTED
    reply = dp.feedback(json.dumps({"feedback_id": first, "labels": [0] * 1000}).encode())
    assert reply.status == 200 and reply.payload["unmatched"] == 1000
    forged = first[:-4] + ("AAAA" if not first.endswith("AAAA") else "BBBB")
    reply = dp.feedback(json.dumps({"feedback_id": forged, "labels": [0] * 1000}).encode())
    assert reply.status == 404


def test_store_keeps_only_the_predicted_class_per_row(artifact: Path) -> None:
    dp = make(artifact)
    dp.predict(big_body(1000), None)
    # One byte per row (two classes) plus the fixed per-entry overhead; not the rows.
    assert dp.feedback_store.used_bytes == 1000 + fb.ENTRY_OVERHEAD


def test_store_is_bounded_in_bytes_and_that_bound_is_real_memory(artifact: Path) -> None:
    """tracemalloc counts only allocations made by the store (feedback.py): with 1,000-row
    predictions and a 256 KiB bound, what it holds stays under the bound however many
    predictions come, and the retained memory stops growing once it is full."""
    bound = 256 << 10
    dp = make(artifact, feedback_bytes=bound)
    bodies = [big_body(1000, seed=s) for s in range(3)]
    only_store = [tracemalloc.Filter(True, fb.__file__)]

    def held() -> int:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(only_store)
        return sum(stat.size for stat in snap.statistics("filename"))

    tracemalloc.start()
    try:
        for i in range(300):
            dp.predict(bodies[i % 3], None)
        after_300 = held()
        for i in range(300):
            dp.predict(bodies[i % 3], None)
        after_600 = held()
    finally:
        tracemalloc.stop()
    assert dp.feedback_store.used_bytes <= bound
    assert after_600 <= bound, f"store holds {after_600} bytes, bound {bound}"
    # Full and flat: the dict's table size wobbles, but 300 more predictions held would be
    # 300 KB (and ~21 MB with the old tuples of label strings).
    assert after_600 - after_300 <= bound // 8
    assert dp.feedback_store.evicted > 0


def test_a_regressor_keeps_its_predicted_values(tmp_path: Path) -> None:
    from mlrollout.services.model.export import export_model
    from sklearn.linear_model import LinearRegression

    from tests.doubles.model import NUMERIC_FEATURES

    X, _ = numeric_data()
    y = X @ np.arange(1, X.shape[1] + 1) + 0.5
    path = export_model(
        LinearRegression().fit(X, y), X, y, tmp_path / "reg", name="reg", version="v1",
        feature_names=NUMERIC_FEATURES,
    )  # fmt: skip
    dp = make(path)
    reply = dp.predict(json.dumps(X[:3].tolist()).encode(), None)
    assert dp.feedback_store.used_bytes == 3 * 8 + fb.ENTRY_OVERHEAD
    truth = [p + 1.0 for p in reply.payload["predictions"]]
    out = dp.feedback(
        json.dumps({"feedback_id": reply.payload["feedback_id"], "labels": truth}).encode()
    )
    assert out.payload["scored"] == 3
    assert out.payload["mean_absolute_error"] == pytest.approx(1.0)


def test_a_proposed_id_is_used_only_when_well_formed_and_new(artifact: Path) -> None:
    dp = make(artifact)
    stable = make(artifact)
    given = stable.feedback_store.new_id()
    assert dp.predict(b"[[1, 2, 3, 4, 5]]", None, given).payload["feedback_id"] == given
    # In use: a fresh one, the first prediction keeps its id.
    again = dp.predict(b"[[1, 2, 3, 4, 5]]", None, given).payload["feedback_id"]
    assert again != given
    assert dp.predict(b"[[1, 2, 3, 4, 5]]", None, "short").payload["feedback_id"] != "short"


def test_store_unit_rules() -> None:
    with pytest.raises(ValueError, match="at least"):
        FeedbackStore(1000)
    off = FeedbackStore(0)
    assert not off.enabled and not off.remember(off.new_id(), np.zeros(3))
    store = FeedbackStore(fb.MIN_CAPACITY_BYTES, key=b"k" * 32)
    other = FeedbackStore(fb.MIN_CAPACITY_BYTES, key=b"j" * 32)
    fid = store.new_id()
    assert store.issued_here(fid) and not other.issued_here(fid)
    assert store.peek(fid)[0] is Lookup.EVICTED  # issued, never stored: same as forgotten
    assert other.peek(fid)[0] is Lookup.UNKNOWN
    assert store.remember(fid, np.array([1, 0, 1]))
    assert store.peek(fid) == (Lookup.FOUND, 3)
    assert store.take(fid).tolist() == [1, 0, 1]  # type: ignore[union-attr]
    assert store.peek(fid)[0] is Lookup.JUDGED
    assert not store.remember(fid, np.array([1]))  # a judged id is not reused
    # Too big for the budget on its own: not kept at all.
    assert not store.remember(store.new_id(), np.zeros(fb.MIN_CAPACITY_BYTES))
