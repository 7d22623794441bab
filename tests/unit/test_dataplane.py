"""The dataplane: predictions, refusals counted by reason, feedback accuracy, faults, OIP v2."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlrollout.services.model.artifact import load_artifact
from mlrollout.services.model.dataplane import Dataplane, fault_rate_from_env
from mlrollout.services.model.validation import Reason
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from tests.doubles.model import (
    NUMERIC_FEATURES,
    mixed_artifact,
    mixed_data,
    numeric_artifact,
    numeric_data,
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {"numeric": numeric_artifact(root / "n"), "mixed": mixed_artifact(root / "m")}


def make(artifacts: dict[str, Path], kind: str = "numeric", **options: Any) -> Dataplane:
    dp = Dataplane(load_artifact(artifacts[kind]), deployment="dep", track="canary", **options)
    dp.warm_up()
    return dp


def records(X: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(NUMERIC_FEATURES, row, strict=True)) for row in X.tolist()]


def test_ready_only_after_warm_up(artifacts: dict[str, Path]) -> None:
    dp = Dataplane(load_artifact(artifacts["numeric"]), deployment="dep", track="stable")
    assert not dp.ready
    assert b'mlrollout_model_ready{deployment="dep"' in dp.render_metrics()[0]
    assert 'track="stable",version="v1"} 0.0' in dp.render_metrics()[0].decode()
    dp.warm_up()
    assert dp.ready
    assert 'track="stable",version="v1"} 1.0' in dp.render_metrics()[0].decode()


def test_predict_matches_the_model_and_names_itself(artifacts: dict[str, Path]) -> None:
    from sklearn.ensemble import RandomForestClassifier

    dp = make(artifacts)
    X, y = numeric_data()
    reference = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(X, y)
    reply = dp.predict(json.dumps(records(X[:50])).encode(), "req-1")
    assert reply.status == 200
    assert reply.headers["x-request-id"] == "req-1"
    assert reply.headers["x-mlrollout-version"] == "v1"
    p = reply.payload
    assert (p["model"], p["version"], p["request_id"], p["classes"]) == (
        "tiny",
        "v1",
        "req-1",
        [0, 1],
    )
    agree = np.mean(np.array(p["predictions"]) == reference.predict(X[:50]))
    assert agree >= 0.98  # float32 thresholds may flip a row sitting on a split
    diff = np.abs(np.array(p["probabilities"]) - reference.predict_proba(X[:50])).max(axis=1)
    assert np.mean(diff > 1e-3) <= 0.02
    snap = dp.metrics.snapshot()
    assert snap["rows"] == 50
    assert snap["requests"][("predict", "ok")] == 1
    assert sum(snap["predictions"].values()) == 50


@pytest.mark.parametrize("incoming", [None, "", "has space", "x" * 129, "bad\nid"])
def test_request_ids_are_generated_when_absent_or_unsafe(
    artifacts: dict[str, Path], incoming: str | None
) -> None:
    dp = make(artifacts)
    reply = dp.predict(b"[[1, 2, 3, 4, 5]]", incoming)
    rid = reply.headers["x-request-id"]
    assert rid != incoming and len(rid) == 24 and rid == reply.payload["request_id"]


def _bodies() -> dict[Reason, tuple[str, bytes, str | None]]:
    """One request per reason: endpoint, body, the field the message must name."""
    return {
        Reason.BODY_TOO_LARGE: ("predict", b"[" + b"[1,2,3,4,5]," * 200 + b"[1,2,3,4,5]]", None),
        Reason.MALFORMED_JSON: ("predict", b"[[1, 2,", None),
        Reason.BAD_STRUCTURE: ("predict", b'{"rows": [[1, 2, 3, 4, 5]]}', None),
        Reason.EMPTY_BATCH: ("predict", b"[]", None),
        Reason.BATCH_TOO_LARGE: ("predict", b"[" + b"[1,2,3,4,5]," * 10 + b"[1,2,3,4,5]]", None),
        Reason.MISSING_FEATURE: ("predict", b'[{"a": 1, "b": 2, "c": 3, "d": 4}]', "e"),
        Reason.UNKNOWN_FEATURE: ("predict", b'[{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}]', "f"),
        Reason.WRONG_TYPE: ("predict", b'[{"a": 1, "b": 2, "c": "3", "d": 4, "e": 5}]', "c"),
        Reason.MISSING_VALUE: ("predict", b"[[1, 2, 3, null, 5]]", "d"),
        Reason.UNKNOWN_MODEL: ("infer", b'{"inputs": []}', None),
        Reason.UNKNOWN_FEEDBACK_ID: (
            "feedback",
            b'{"feedback_id": "x", "label": 1}',
            "feedback_id",
        ),
        Reason.DUPLICATE_FEEDBACK: ("feedback", b"", "feedback_id"),
    }


def test_every_reason_is_a_4xx_counted_once_and_explained(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts, max_rows=10, max_body_bytes=1000)
    bodies = _bodies()
    # Content types are checked by the HTTP adapter (tests/integration/test_server_app.py).
    http_only = {Reason.UNSUPPORTED_CONTENT_TYPE}
    assert set(bodies) == set(Reason) - http_only  # a new reason needs a case here
    for reason, (endpoint, body, field) in bodies.items():
        if endpoint == "predict":
            reply = dp.predict(body, None)
        elif endpoint == "infer":
            reply = dp.infer_v2("not-this-model", body)
        else:
            if reason is Reason.DUPLICATE_FEEDBACK:  # a second label for one prediction
                fid = dp.predict(b"[[1, 2, 3, 4, 5]]", None).payload["feedback_id"]
                body = json.dumps({"feedback_id": fid, "label": 1}).encode()
                assert dp.feedback(body).status == 200
            reply = dp.feedback(body)
        assert 400 <= reply.status < 500, reason
        assert reply.payload["reason"] == reason.value
        assert reply.payload["field"] == field
        if field is not None:
            assert (field if endpoint == "feedback" else repr(field)) in reply.payload["error"]
        assert dp.metrics.snapshot()["violations"][reason.value] == 1, reason
    snap = dp.metrics.snapshot()
    assert snap["requests"][("predict", "client_error")] == len(bodies) - 3
    assert snap["requests"][("infer", "client_error")] == 1
    assert snap["requests"][("feedback", "client_error")] == 2
    assert snap["rows"] == 1  # the prediction that was labelled twice
    text = dp.render_metrics()[0].decode()
    assert 'reason="missing_value",track="canary",version="v1"} 1.0' in text


def test_unexpected_errors_are_500_and_counted(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dp = make(artifacts)

    def boom(batch: object) -> None:
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(dp.model, "predict", boom)
    reply = dp.predict(b"[[1, 2, 3, 4, 5]]", "r1")
    assert reply.status == 500
    assert reply.payload["reason"] == "server_error"
    assert "exploded" not in reply.payload["error"]  # internals stay in the log
    reply = dp.infer_v2(
        "tiny",
        b'{"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [1,2,3,4,5]}]}',
    )
    assert reply.status == 500
    snap = dp.metrics.snapshot()
    assert snap["requests"][("predict", "server_error")] == 1
    assert snap["requests"][("infer", "server_error")] == 1


def test_fault_injection_fails_the_configured_share(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts, fault_error_rate=0.3, rng=random.Random(1))
    statuses = [dp.predict(b"[[1, 2, 3, 4, 5]]", None).status for _ in range(400)]
    failed = statuses.count(500)
    assert set(statuses) == {200, 500}
    assert 80 <= failed <= 160  # binomial(400, 0.3): mean 120, sd ~9
    assert dp.metrics.snapshot()["requests"][("predict", "server_error")] == failed
    # Bad input is still the client's fault, never an injected 500.
    assert dp.predict(b"[]", None).status == 422


def test_fault_rate_from_env() -> None:
    assert fault_rate_from_env({}) == 0.0
    assert fault_rate_from_env({"MLROLLOUT_FAULT_ERROR_RATE": "0.25"}) == 0.25
    for bad in ("lots", "1.5", "-0.1"):
        with pytest.raises(ValueError, match="MLROLLOUT_FAULT_ERROR_RATE"):
            fault_rate_from_env({"MLROLLOUT_FAULT_ERROR_RATE": bad})


def test_feedback_measures_online_accuracy(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts)
    X, y = numeric_data(rows=200, seed=5)  # other rows than training
    predicted, ids = [], []
    for i, row in enumerate(X.tolist()):
        reply = dp.predict(json.dumps([row]).encode(), f"r{i}")
        predicted.append(reply.payload["predictions"][0])
        ids.append(reply.payload["feedback_id"])
    feedback = [{"feedback_id": ids[i], "label": int(label)} for i, label in enumerate(y)]
    reply = dp.feedback(json.dumps(feedback[:150]).encode())
    reply2 = dp.feedback(json.dumps(feedback[150:]).encode())
    expected_correct = int(np.sum(np.array(predicted) == y))
    total = {k: reply.payload[k] + reply2.payload[k] for k in ("correct", "incorrect", "unmatched")}
    assert total == {
        "correct": expected_correct,
        "incorrect": 200 - expected_correct,
        "unmatched": 0,
    }
    assert dp.metrics.snapshot()["feedback"] == total
    # Judged once: the same id again is refused (409), as is an id never issued (404).
    again = dp.feedback(json.dumps(feedback[0]).encode())
    assert again.status == 409
    unknown = dp.feedback(json.dumps({"feedback_id": "nope", "label": 1}).encode())
    assert unknown.status == 404
    assert dp.metrics.snapshot()["feedback"] == total


def test_feedback_for_batches_and_label_spellings(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts)
    reply = dp.predict(b"[[1, 2, 3, 4, 5], [-1, -2, -3, -4, -5]]", "batch")
    labels, fid = reply.payload["predictions"], reply.payload["feedback_id"]
    truth = [float(labels[0]), str(1 - labels[1])]  # 1.0 and "0" spell the classes 1 and 0
    reply = dp.feedback(json.dumps({"feedback_id": fid, "labels": truth}).encode())
    assert reply.payload == {"correct": 1, "incorrect": 1, "unmatched": 0}


def test_feedback_memory_is_bounded(artifacts: dict[str, Path]) -> None:
    from mlrollout.services.model.feedback import ENTRY_OVERHEAD, MIN_CAPACITY_BYTES

    dp = make(artifacts, feedback_bytes=MIN_CAPACITY_BYTES)
    # The predictions' share of the budget holds this many one-row entries.
    room = (MIN_CAPACITY_BYTES - MIN_CAPACITY_BYTES // 8) // (1 + ENTRY_OVERHEAD)
    ids = [dp.predict(b"[[1, 2, 3, 4, 5]]", None).payload["feedback_id"] for _ in range(room + 1)]
    body = json.dumps([{"feedback_id": r, "label": 0} for r in ids]).encode()
    reply = dp.feedback(body)
    assert reply.payload["unmatched"] == 1  # the oldest was evicted
    assert reply.payload["correct"] + reply.payload["incorrect"] == room


@pytest.mark.parametrize(
    ("body", "reason", "field"),
    [
        (b"{", Reason.MALFORMED_JSON, None),
        (b"[]", Reason.EMPTY_BATCH, None),
        (b"[1]", Reason.BAD_STRUCTURE, None),
        (b'{"label": 1}', Reason.MISSING_FEATURE, "feedback_id"),
        (b'{"request_id": "a", "label": 1}', Reason.MISSING_FEATURE, "feedback_id"),
        (b'{"feedback_id": "a"}', Reason.MISSING_FEATURE, "label"),
        (b'{"feedback_id": "a", "label": 1, "labels": [1]}', Reason.MISSING_FEATURE, "label"),
        (b'{"feedback_id": "a", "label": 1, "extra": 2}', Reason.UNKNOWN_FEATURE, "extra"),
        (b'{"feedback_id": "a", "label": null}', Reason.WRONG_TYPE, "label"),
        (b'{"feedback_id": "a", "labels": []}', Reason.WRONG_TYPE, "labels"),
        (b'{"feedback_id": "a", "label": 1}', Reason.UNKNOWN_FEEDBACK_ID, "feedback_id"),
    ],
)
def test_bad_feedback_is_refused(
    artifacts: dict[str, Path], body: bytes, reason: Reason, field: str | None
) -> None:
    dp = make(artifacts)
    reply = dp.feedback(body)
    assert 400 <= reply.status < 500
    assert (reply.payload["reason"], reply.payload["field"]) == (reason.value, field)
    assert dp.metrics.snapshot()["violations"][reason.value] == 1


def test_mixed_model_predicts_strings_and_accepts_unseen_levels(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts, "mixed")
    body = json.dumps(
        [
            {"age": 60, "income": None, "plan": "pro", "region": "atlantis"},
            {"age": 20, "income": 30000, "plan": "basic", "region": "south"},
        ]
    ).encode()
    reply = dp.predict(body, None)
    assert reply.status == 200, reply.payload
    assert reply.payload["predictions"] == ["churn", "stay"]
    assert reply.payload["classes"] == ["churn", "stay"]


def test_infer_v2_json_matrix_and_requested_outputs(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts)
    X, _ = numeric_data()
    want = dp.predict(json.dumps(X[:3].tolist()).encode(), None).payload
    body = {
        "id": "q1",
        "inputs": [{"name": "X", "shape": [3, 5], "datatype": "FP64", "data": X[:3].tolist()}],
    }
    reply = dp.infer_v2("tiny", json.dumps(body).encode())
    assert reply.status == 200, reply.payload
    assert reply.payload["id"] == "q1"
    assert reply.payload["model_version"] == "v1"
    label, probs = reply.payload["outputs"]
    assert label == {
        "name": "label",
        "datatype": "INT64",
        "shape": [3],
        "data": want["predictions"],
    }
    assert probs["shape"] == [3, 2]
    np.testing.assert_allclose(np.reshape(probs["data"], (3, 2)), want["probabilities"], atol=1e-6)
    body["outputs"] = [{"name": "probabilities"}]
    assert [
        o["name"] for o in dp.infer_v2("tiny", json.dumps(body).encode()).payload["outputs"]
    ] == ["probabilities"]
    body["outputs"] = [{"name": "logits"}]
    bad = dp.infer_v2("tiny", json.dumps(body).encode())
    assert (bad.status, bad.payload["field"]) == (400, "logits")


@pytest.mark.parametrize(
    ("inputs", "reason", "field"),
    [
        (
            [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            Reason.BAD_STRUCTURE,
            "X",
        ),
        (
            [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3]}],
            Reason.BAD_STRUCTURE,
            "X",
        ),
        (
            [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, None, 4, 5]}],
            Reason.WRONG_TYPE,
            "X",
        ),
        (
            [{"name": "X", "shape": [1, 5], "datatype": "COMPLEX", "data": [1, 2, 3, 4, 5]}],
            Reason.WRONG_TYPE,
            "X",
        ),
        (
            [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
            Reason.MISSING_FEATURE,
            "b",
        ),
        (
            [
                {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                {"name": "zz", "shape": [1], "datatype": "FP32", "data": [1]},
            ],
            Reason.UNKNOWN_FEATURE,
            "zz",
        ),
    ],
)
def test_infer_v2_bad_tensors(
    artifacts: dict[str, Path], inputs: list[dict[str, Any]], reason: Reason, field: str
) -> None:
    dp = make(artifacts)
    reply = dp.infer_v2("tiny", json.dumps({"inputs": inputs}).encode())
    assert 400 <= reply.status < 500
    assert (reply.payload["reason"], reply.payload["field"]) == (reason.value, field)


def test_infer_v2_with_tritonclient_binary_bodies(artifacts: dict[str, Path]) -> None:
    """Bodies built and parsed by tritonclient itself, binary tensor extension included."""
    dp = make(artifacts)
    X, _ = numeric_data()
    rows = X[:4].astype(np.float32)
    want = dp.predict(json.dumps(rows.tolist()).encode(), None).payload
    for binary in (True, False):
        tensor = InferInput("X", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [
            InferRequestedOutput("label", binary_data=binary),
            InferRequestedOutput("probabilities", binary_data=binary),
        ]
        body, json_size = InferenceServerClient.generate_request_body(
            [tensor], outputs, request_id="t1"
        )
        reply = dp.infer_v2("tiny", body, header_length=json_size)
        assert reply.status == 200, reply.payload
        result = InferenceServerClient.parse_response_body(reply.body())
        assert result.as_numpy("label").tolist() == want["predictions"]
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), want["probabilities"], atol=1e-6
        )


def test_infer_v2_per_feature_inputs_with_strings(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts, "mixed")
    X, _ = mixed_data(rows=3, seed=9)
    tensors = []
    for name in ("age", "income", "plan", "region"):
        values = X[name]
        if values.dtype == object:
            t = InferInput(name, [3, 1], "BYTES")
            t.set_data_from_numpy(values.reshape(3, 1).astype(object), binary_data=True)
        else:
            t = InferInput(name, [3], "FP64")
            t.set_data_from_numpy(values.astype(np.float64), binary_data=True)
        tensors.append(t)
    body, json_size = InferenceServerClient.generate_request_body(tensors)
    reply = dp.infer_v2("churn", body, header_length=json_size)
    assert reply.status == 200, reply.payload
    records = [
        {
            k: (None if isinstance(v, float) and np.isnan(v) else v)
            for k, v in zip(X, row, strict=True)
        }
        for row in zip(*X.values(), strict=True)
    ]
    want = dp.predict(json.dumps(records, default=float).encode(), None).payload["predictions"]
    label = reply.payload["outputs"][0]
    assert (label["datatype"], label["data"]) == ("BYTES", want)


def test_model_metadata_v2(artifacts: dict[str, Path]) -> None:
    meta = make(artifacts).model_metadata_v2()
    assert meta["name"] == "tiny" and meta["versions"] == ["v1"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 5]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    mixed = make(artifacts, "mixed").model_metadata_v2()
    assert [(i["name"], i["datatype"]) for i in mixed["inputs"]] == [
        ("age", "FP32"),
        ("income", "FP32"),
        ("plan", "BYTES"),
        ("region", "BYTES"),
    ]


def test_metrics_include_drift_series(artifacts: dict[str, Path]) -> None:
    dp = make(artifacts, drift_window=50)
    X, _ = numeric_data()
    for start in range(0, 100, 10):
        dp.predict(json.dumps(X[start : start + 10].tolist()).encode(), None)
    text = dp.render_metrics()[0].decode()
    assert (
        'mlrollout_drift_windows_total{deployment="dep",model="tiny",track="canary",version="v1"} 2.0'
        in text
    )
    assert "mlrollout_drift_bin_total{" in text
    assert "mlrollout_prediction_bin_total{" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=30,
)
NAMES = st.sampled_from([*NUMERIC_FEATURES, "zz"])
records_like = st.lists(st.dictionaries(NAMES, json_values, max_size=6), max_size=3)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        records_like.map(lambda v: json.dumps(v).encode()),
    )
)
def test_no_body_makes_a_500(artifacts: dict[str, Path], body: bytes) -> None:
    dp = _fuzz_plane(artifacts)
    for reply in (dp.predict(body, None), dp.infer_v2("tiny", body), dp.feedback(body)):
        assert reply.status < 500, reply.payload
        reply.body()  # the reply always serialises


_FUZZ: dict[str, Dataplane] = {}


def _fuzz_plane(artifacts: dict[str, Path]) -> Dataplane:
    if "dp" not in _FUZZ:
        _FUZZ["dp"] = make(artifacts)
    return _FUZZ["dp"]


def test_feedback_for_a_regressor_measures_online_error(tmp_path: Path) -> None:
    from mlrollout.services.model.export import export_model
    from prometheus_client.parser import text_string_to_metric_families
    from sklearn.linear_model import LinearRegression

    X, _ = numeric_data()
    y = X @ np.arange(1, X.shape[1] + 1) + 0.5
    model = LinearRegression().fit(X, y)
    path = export_model(
        model, X, y, tmp_path / "reg", name="reg", version="v1", feature_names=NUMERIC_FEATURES
    )
    dp = Dataplane(load_artifact(path), deployment="dep", track="stable")
    dp.warm_up()
    reply = dp.predict(json.dumps(records(X[:4])).encode(), "reg-1")
    assert reply.status == 200
    predicted = np.asarray(reply.payload["predictions"], dtype=float)
    truth = predicted + np.array([1.0, -2.0, 0.5, 0.0])
    # An id this server issued but no longer holds counts as unmatched.
    gone = dp.feedback_store.new_id()
    body = [
        {"feedback_id": reply.payload["feedback_id"], "labels": truth.tolist()},
        {"feedback_id": gone, "label": 3},
    ]
    reply = dp.feedback(json.dumps(body).encode())
    assert reply.status == 200
    assert reply.payload["scored"] == 4 and reply.payload["unmatched"] == 1
    assert reply.payload["mean_absolute_error"] == pytest.approx(3.5 / 4, rel=1e-4)
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(dp.render_metrics()[0].decode())
        for s in family.samples
    }
    assert samples["mlrollout_feedback_abs_error_count"] == 4
    assert samples["mlrollout_feedback_abs_error_sum"] == pytest.approx(3.5, rel=1e-4)
    assert samples["mlrollout_feedback_squared_error_sum"] == pytest.approx(5.25, rel=1e-4)
    # A label that is not a number is refused and judges nothing.
    fid = dp.predict(json.dumps(records(X[:1])).encode(), "reg-2").payload["feedback_id"]
    bad = dp.feedback(json.dumps({"feedback_id": fid, "label": "high"}).encode())
    assert bad.status == 422 and bad.payload["reason"] == "wrong_type"
    assert (
        dp.feedback(json.dumps({"feedback_id": fid, "label": 1.0}).encode()).payload["scored"] == 1
    )
