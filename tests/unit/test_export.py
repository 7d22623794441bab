"""Export: the ONNX graph reproduces scikit-learn, the card and profile describe the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from mlrollout.services.cli import main as cli_main
from mlrollout.services.model.artifact import load_artifact, sha256_file
from mlrollout.services.model.export import ExportError, export_model
from mlrollout.services.model.runtime import OnnxModel
from mlrollout.services.model.validation import Batch
from mlrollout.services.profile import load_profile

from tests.doubles.model import (
    MIXED_CATEGORICAL,
    MIXED_NUMERIC,
    mixed_data,
    mixed_pipeline,
    numeric_data,
)


def _forest() -> object:
    from sklearn.ensemble import RandomForestClassifier

    X, y = numeric_data()
    return RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(X, y)


def test_numeric_round_trip_matches_sklearn(tmp_path: Path) -> None:
    X, y = numeric_data()
    model = _forest()
    out = export_model(
        model, X, y, tmp_path / "a", name="m", version="v7", feature_names=list("abcde"),
        metrics={"accuracy": 0.91}, intended_use="tests", limits="none",
    )  # fmt: skip
    art = load_artifact(out)
    card = art.card
    assert card["inputs"]["layout"] == "matrix" and card["inputs"]["tensor"] == "X"
    assert [f["name"] for f in card["inputs"]["features"]] == list("abcde")
    assert card["classes"] == [0, 1] and card["task"] == "classification"
    assert card["sha256"] == sha256_file(out / "model.onnx")
    assert card["metrics"] == {"accuracy": 0.91}
    assert card["training_data"]["rows"] == len(y)
    assert card["framework"]["estimator"] == "RandomForestClassifier"
    for key in ("name", "version", "created", "intended_use", "limits"):
        assert card[key]
    # Fresh rows the exporter never saw: probabilities agree to float32 precision.
    X_new, _ = numeric_data(rows=300, seed=3)
    onnx = OnnxModel(art.model_path, card).predict(Batch(X_new, np.empty((300, 0), object), 300))
    assert onnx.probabilities is not None
    diff = np.abs(onnx.probabilities - model.predict_proba(X_new)).max(axis=1)  # type: ignore[attr-defined]
    assert np.mean(diff > 1e-3) <= 0.01
    profile = load_profile(art.profile)
    assert profile.numeric_names == tuple("abcde")
    assert profile.rows == len(y)


def test_exports_are_reproducible_and_readable(tmp_path: Path) -> None:
    X, y = numeric_data()
    model = _forest()
    first = export_model(
        model, X, y, tmp_path / "a", name="m", version="v1", feature_names=list("abcde")
    )
    again = export_model(
        model, X, y, tmp_path / "b", name="m", version="v1", feature_names=list("abcde")
    )
    assert sha256_file(first / "model.onnx") == sha256_file(again / "model.onnx")
    assert (first / "profile.json").read_bytes() == (again / "profile.json").read_bytes()
    assert first.stat().st_mode & 0o777 == 0o755


def test_mixed_round_trip_uses_per_feature_inputs(tmp_path: Path) -> None:
    X, y = mixed_data()
    pipeline = mixed_pipeline(X, y)
    art = load_artifact(export_model(pipeline, X, y, tmp_path / "m", name="churn", version="v1"))
    inputs = art.card["inputs"]
    assert inputs["layout"] == "columns"
    assert [(f["name"], f["kind"], f["nullable"]) for f in inputs["features"]] == [
        ("age", "numeric", False),
        ("income", "numeric", True),
        ("plan", "categorical", False),
        ("region", "categorical", False),
    ]
    X_new, _ = mixed_data(rows=200, seed=4)
    numeric = np.column_stack([X_new[c] for c in MIXED_NUMERIC])
    categorical = np.column_stack([X_new[c] for c in MIXED_CATEGORICAL]).astype(object)
    pred = OnnxModel(art.model_path, art.card).predict(Batch(numeric, categorical, 200))
    matrix = np.column_stack([X_new[c] for c in [*MIXED_NUMERIC, *MIXED_CATEGORICAL]]).astype(
        object
    )
    np.testing.assert_allclose(pred.probabilities, pipeline.predict_proba(matrix), atol=1e-4)  # type: ignore[attr-defined]
    assert pred.labels == pipeline.predict(matrix).tolist()  # type: ignore[attr-defined]
    assert load_profile(art.profile).categorical_names == ("plan", "region")


def test_unfaithful_conversion_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    X, y = numeric_data()
    model = _forest()
    # skl2onnx converts by type, so the graph ignores this instance-level override;
    # the fidelity check must notice that the two disagree.
    model.predict_proba = lambda data: np.tile([0.5, 0.5], (len(data), 1))  # type: ignore[attr-defined]
    with pytest.raises(
        ExportError, match=r"disagrees with scikit-learn on \d+\.\d+% of training rows"
    ):
        export_model(
            model, X, y, tmp_path / "x", name="m", version="v1", feature_names=list("abcde")
        )
    assert list(tmp_path.iterdir()) == []


def test_refusals(tmp_path: Path) -> None:
    X, y = numeric_data()
    model = _forest()
    with pytest.raises(ExportError, match="feature_names"):
        export_model(model, X, y, tmp_path / "a", name="m", version="v1")
    with pytest.raises(ExportError, match="y_train has 3 rows"):
        export_model(
            model, X, y[:3], tmp_path / "a", name="m", version="v1", feature_names=list("abcde")
        )
    with pytest.raises(ExportError, match="kind must be numeric or categorical"):
        export_model(
            model, X, y, tmp_path / "a", name="m", version="v1", feature_names=list("abcde"),
            feature_kinds={"a": "ordinal"},
        )  # fmt: skip
    with pytest.raises(ExportError, match="fitted on 5 features; X_train has 4"):
        export_model(
            model, X[:, :4], y, tmp_path / "a", name="m", version="v1", feature_names=list("abcd")
        )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(
            model, X, y, tmp_path / "full", name="m", version="v1", feature_names=list("abcde")
        )
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_unsupported_estimator_is_a_clear_error(tmp_path: Path) -> None:
    class Homemade:
        classes_ = np.array([0, 1])

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return np.tile([0.5, 0.5], (len(X), 1))

    X, y = numeric_data()
    with pytest.raises(ExportError, match="skl2onnx cannot convert this pipeline"):
        export_model(
            Homemade(), X, y, tmp_path / "a", name="m", version="v1", feature_names=list("abcde")
        )


def test_cli_exports_from_joblib_and_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X, y = mixed_data(rows=300, seed=2)
    pipeline = mixed_pipeline(X, y)
    joblib.dump(pipeline, tmp_path / "model.joblib")
    with (tmp_path / "train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*X, "target"])
        for i in range(len(y)):
            writer.writerow(
                ["" if isinstance(X[c][i], float) and np.isnan(X[c][i]) else X[c][i] for c in X]
                + [y[i]]
            )
    code = cli_main(
        [
            "export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "model.joblib"),
            "--data", str(tmp_path / "train.csv"), "--target", "target", "--name", "churn",
            "--version", "v2", "--metrics", '{"accuracy": 0.8}',
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "out" / "model.json").read_text())
    assert card["version"] == "v2" and card["metrics"] == {"accuracy": 0.8}
    assert card["inputs"]["layout"] == "columns"
    assert card["training_data"]["class_balance"].keys() == {"churn", "stay"}
    # A bad target column is an error message and exit code 1, not a traceback.
    code = cli_main(
        [
            "export", str(tmp_path / "o2"), "--pipeline", str(tmp_path / "model.joblib"),
            "--data", str(tmp_path / "train.csv"), "--target", "nope", "--name", "c", "--version", "v",
        ]
    )  # fmt: skip
    assert code == 1
    assert "no column 'nope'" in capsys.readouterr().err
