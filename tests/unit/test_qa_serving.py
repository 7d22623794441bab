"""Acceptance defects of the serving side, each pinned by the input that exposed it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlrollout.services.cli import main as cli_main
from mlrollout.services.model.dataplane import Dataplane
from mlrollout.services.model.export import ExportError, export_model
from mlrollout.services.model.export_cli import read_csv
from mlrollout.services.model.validation import Feature, InputError, Reason, Validator
from mlrollout.services.router.compare import compare_bodies
from mlrollout.services.router.table import choose, parse_table

from tests.doubles.model import numeric_artifact, numeric_data

NUMERIC = Validator([Feature(n, "numeric") for n in ("a", "b", "c")])


@pytest.fixture(scope="module")
def forest(tmp_path_factory: pytest.TempPathFactory) -> Dataplane:
    path = numeric_artifact(tmp_path_factory.mktemp("qa") / "tiny")
    return Dataplane.from_artifact(path, deployment="d", track="stable")


@pytest.fixture(scope="module")
def ridge(tmp_path_factory: pytest.TempPathFactory) -> Dataplane:
    from sklearn.linear_model import Ridge

    X, _ = numeric_data()
    model = Ridge().fit(X, X @ np.arange(1.0, 6.0))
    out = tmp_path_factory.mktemp("qa") / "ridge"
    export_model(model, X, X[:, 0], out, name="r", version="v1", feature_names=list("abcde"))
    return Dataplane.from_artifact(out, deployment="d", track="stable")


# --- numbers the float32 model input cannot hold ------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[[1e39, 1, 1]]",  # fast path (well-formed numeric batch)
        b'[{"a": 1, "b": -3.5e38, "c": 1}]',
        b"[[1, 1, 1], [1, 1, 1e300]]",
        b"[[1, null, 1e300]]",  # slow path (null forces the per-value scan)
    ],
)
def test_values_beyond_float32_are_refused_naming_the_feature(body: bytes) -> None:
    with pytest.raises(InputError) as info:
        NUMERIC.parse(body)
    err = info.value
    if b"null" in body:
        assert err.reason is Reason.MISSING_VALUE  # the first problem found, also a 4xx
        return
    assert err.reason is Reason.WRONG_TYPE
    assert err.field in ("a", "b", "c") and repr(err.field) in err.message
    assert "float32" in err.message


def test_float32_limit_itself_is_accepted() -> None:
    batch = NUMERIC.parse(b"[[3.4e38, -3.4e38, 1e-300]]")
    assert np.isfinite(batch.numeric.astype(np.float32)).all()


def test_oip_tensor_beyond_float32_is_a_4xx(forest: Dataplane) -> None:
    body = {"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP64", "data": [1e39] * 5}]}
    reply = forest.infer_v2("tiny", json.dumps(body).encode())
    assert reply.status == 422 and reply.payload["reason"] == "wrong_type"


def test_predict_never_answers_with_non_json_numbers(ridge: Dataplane) -> None:
    # 3e38 fits float32, but the regressor's output for it does not: no NaN/Infinity in JSON.
    for row in ([1e39, 0, 0, 0, 0], [3e38, 3e38, 3e38, 3e38, 3e38]):
        reply = ridge.predict(json.dumps([row]).encode())
        body = reply.body()
        assert b"NaN" not in body and b"Infinity" not in body
        json.loads(body)  # strict JSON: Python's parser would also take NaN, hence the line above
        assert reply.status == 422, reply.payload
    ok = ridge.predict(json.dumps([[1, 2, 3, 4, 5]]).encode())
    assert ok.status == 200


# --- feedback ----------------------------------------------------------------------------


def test_feedback_with_the_wrong_number_of_labels_is_refused_and_keeps_the_prediction(
    forest: Dataplane,
) -> None:
    X, _ = numeric_data(rows=3, seed=5)
    reply = forest.predict(json.dumps(X.tolist()).encode(), "qa-three-rows")
    assert reply.status == 200
    fid = reply.payload["feedback_id"]
    wrong = forest.feedback(json.dumps({"feedback_id": fid, "labels": [0]}).encode())
    assert (wrong.status, wrong.payload["reason"]) == (400, "bad_structure"), wrong.payload
    assert wrong.payload["field"] == "labels" and "3 row(s)" in wrong.payload["error"]
    # Nothing was consumed: the right labels are still judged.
    labels = reply.payload["predictions"]
    right = forest.feedback(json.dumps({"feedback_id": fid, "labels": labels}).encode())
    assert right.payload == {"correct": 3, "incorrect": 0, "unmatched": 0}


def test_one_bad_entry_refuses_the_whole_feedback_list(forest: Dataplane) -> None:
    one = forest.predict(json.dumps([[0.0] * 5]).encode(), "qa-one-row")
    other = forest.predict(json.dumps([[0.0] * 5]).encode(), "qa-one-row-b")
    entries = [
        {"feedback_id": one.payload["feedback_id"], "label": 0},
        {"feedback_id": other.payload["feedback_id"], "labels": [0, 1]},
    ]
    assert forest.feedback(json.dumps(entries).encode()).status == 400
    again = forest.feedback(json.dumps(entries[:1]).encode())
    assert again.payload["unmatched"] == 0


# --- router ------------------------------------------------------------------------------

TABLE = parse_table(
    {
        "generation": 1,
        "backends": {
            "stable": {"url": "http://127.0.0.1:1", "version": "v1"},
            "canary": {"url": "http://127.0.0.1:2", "version": "v2"},
        },
        "weights": {"stable": 50, "canary": 50},
        "stickyHeader": "x-user-id",
    }
)


@pytest.mark.parametrize("blank", ["", "  ", "\t"])
def test_a_blank_sticky_value_is_no_user_and_splits_by_weight(blank: str) -> None:
    picks = {choose(TABLE, blank, None, rand) for rand in (0.1, 0.9)}
    assert picks == {"stable", "canary"}


def test_a_blank_force_header_is_ignored() -> None:
    assert choose(TABLE, None, "", 0.9) == "stable"
    assert choose(TABLE, None, " ", 0.1) == "canary"


def test_deeply_nested_shadow_answers_are_an_error_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert compare_bodies(deep, deep) == "error"
    nested = json.dumps({"predictions": [[[[[[[[1]]]]]]]]}).encode()
    assert compare_bodies(nested, nested) == "agree"


# --- export CLI --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"age,y\n1,0\n", b"\x80\x04\x95", bytes(range(256)), b""],
    ids=["csv", "truncated", "binary", "empty"],
)
def test_export_cli_says_what_is_wrong_with_a_pipeline_file_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    (tmp_path / "model.joblib").write_bytes(content)
    (tmp_path / "train.csv").write_text("a,y\n1,0\n2,1\n")
    args = ["export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "model.joblib")]
    args += ["--data", str(tmp_path / "train.csv"), "--target", "y", "--name", "m"]
    code = cli_main([*args, "--version", "v1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "model.joblib" in err
    assert not (tmp_path / "out").exists()


def test_export_cli_refuses_an_object_that_is_no_estimator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import joblib

    joblib.dump({"weights": [1, 2]}, tmp_path / "model.joblib")
    (tmp_path / "train.csv").write_text("a,y\n1,0\n2,1\n")
    args = ["export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "model.joblib")]
    args += ["--data", str(tmp_path / "train.csv"), "--target", "y", "--name", "m"]
    assert cli_main([*args, "--version", "v1"]) == 1
    assert "not a fitted scikit-learn" in capsys.readouterr().err


def test_duplicate_feature_names_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = numeric_data(rows=60)
    model = LogisticRegression().fit(X[:, :2], y)
    with pytest.raises(ExportError, match="more than once: a"):
        export_model(model, X[:, :2], y, tmp_path / "x", name="m", version="v1",
                     feature_names=["a", "a"])  # fmt: skip
    import joblib

    joblib.dump(model, tmp_path / "model.joblib")
    (tmp_path / "train.csv").write_text("a,a,y\n1,2,0\n2,1,1\n")
    args = ["export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "model.joblib")]
    args += ["--data", str(tmp_path / "train.csv"), "--target", "y", "--name", "m"]
    assert cli_main([*args, "--version", "v1"]) == 1
    assert "more than once: a" in capsys.readouterr().err


def test_top_level_help_is_a_sentence_not_a_docstring_fragment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["--help"]) == 0
    description = capsys.readouterr().out.split("\n\n")[1].strip()
    assert "``" not in description and description.endswith(".")


def test_csv_from_a_spreadsheet_byte_order_mark_and_na_markers(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbfage,income,city,y\r\n30,NA,paris,0\r\n41,5.5,N/A,1\r\n")
    columns, y = read_csv(path, "y", set())
    assert list(columns) == ["age", "income", "city"]  # no BOM glued to "age"
    assert columns["age"].tolist() == [30.0, 41.0]
    assert np.isnan(columns["income"][0]) and columns["income"][1] == 5.5
    assert columns["city"].tolist() == ["paris", "N/A"]  # a string column keeps its values
    assert y.tolist() == ["0", "1"]


@pytest.mark.parametrize("given", ["nope", "[1]", '{"rmse": "low"}'])
def test_export_cli_names_a_bad_metrics_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), tmp_path / "model.joblib")
    (tmp_path / "train.csv").write_text("a,y\n0,0\n1,1\n")
    args = ["export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "model.joblib")]
    args += ["--data", str(tmp_path / "train.csv"), "--target", "y", "--name", "m"]
    assert cli_main([*args, "--version", "v1", "--metrics", given]) == 1
    assert "--metrics" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
