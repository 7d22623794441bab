"""Issue 13: ordinary pandas pipelines (a ColumnTransformer over DataFrame columns by name,
numeric + categorical) export from the API and from the CLI, names kept as written."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from mlrollout.services.cli import main as cli_main
from mlrollout.services.model.export import ExportError, export_model
from mlrollout.services.model.runtime import OnnxModel
from mlrollout.services.model.validation import Batch
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ODD = "od280/od315_of_diluted_wines"  # sklearn's own wine feature name


def wine_frame() -> tuple[pd.DataFrame, pd.Series]:
    data = load_wine(as_frame=True)
    df = data.frame.copy()
    y = df.pop("target").map({0: "barolo", 1: "grignolino", 2: "barbera"})
    rng = np.random.default_rng(0)
    df["region"] = rng.choice(["north", "south", "east"], len(df))
    df["magnesium"] = df["magnesium"].astype("int64")  # an integer column too
    return df, y


def wine_pipeline(df: pd.DataFrame, y: pd.Series) -> Pipeline:
    numeric = [c for c in df.columns if c != "region"]
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
        ]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=1000))]).fit(df, y)


def _check(out: Path, df: pd.DataFrame, pipeline: Pipeline) -> dict:
    card = json.loads((out / "model.json").read_text())
    features = card["inputs"]["features"]
    assert [f["name"] for f in features] == list(df.columns)  # names as written, in order
    kinds = {f["name"]: f["kind"] for f in features}
    assert kinds[ODD] == "numeric" and kinds["magnesium"] == "numeric"
    assert kinds["region"] == "categorical"
    model = OnnxModel(out / "model.onnx", card)
    numeric = df[[c for c in df.columns if kinds[c] == "numeric"]].to_numpy(np.float64)
    cat = df[["region"]].to_numpy(object)
    got = model.predict(Batch(numeric, cat, len(df)))
    assert got.probabilities is not None
    np.testing.assert_allclose(got.probabilities, pipeline.predict_proba(df), atol=1e-3)
    return card


def test_api_exports_a_dataframe_pipeline_with_per_column_types(tmp_path: Path) -> None:
    df, y = wine_frame()
    pipeline = wine_pipeline(df, y)
    out = export_model(pipeline, df, y, tmp_path / "wine", name="wine", version="v1")
    card = _check(out, df, pipeline)
    assert card["inputs"]["layout"] == "columns"
    assert card["training_data"]["numeric_features"] == 13
    assert card["training_data"]["categorical_features"] == 1


def test_cli_exports_the_same_pipeline_from_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df, y = wine_frame()
    pipeline = wine_pipeline(df, y)
    joblib.dump(pipeline, tmp_path / "wine.joblib")
    df.assign(quality=y).to_csv(tmp_path / "wine.csv", index=False)
    code = cli_main(
        [
            "export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "wine.joblib"),
            "--data", str(tmp_path / "wine.csv"), "--target", "quality",
            "--name", "wine", "--version", "v1",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    _check(tmp_path / "out", df, pipeline)


def test_an_all_numeric_dataframe_pipeline_exports_too(tmp_path: Path) -> None:
    df, y = wine_frame()
    df = df.drop(columns="region")
    pipeline = Pipeline(
        [
            ("prep", ColumnTransformer([("num", StandardScaler(), list(df.columns))])),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    ).fit(df, y)
    out = export_model(pipeline, df, y, tmp_path / "n", name="wine", version="v1")
    card = json.loads((out / "model.json").read_text())
    assert [f["name"] for f in card["inputs"]["features"]] == list(df.columns)
    model = OnnxModel(out / "model.onnx", card)
    got = model.predict(Batch(df.to_numpy(np.float64), np.empty((len(df), 0)), len(df)))
    np.testing.assert_allclose(got.probabilities, pipeline.predict_proba(df), atol=1e-3)


def test_columns_the_pipeline_does_not_know_are_named_with_the_closest_one(
    tmp_path: Path,
) -> None:
    df, y = wine_frame()
    pipeline = wine_pipeline(df, y)
    typo = df.rename(columns={"alcohol": "alcohl"})
    with pytest.raises(ExportError) as info:
        export_model(pipeline, typo, y, tmp_path / "x", name="wine", version="v1")
    message = str(info.value)
    assert "'alcohl'" in message and "did you mean 'alcohol'" in message


def test_converter_failures_show_the_whole_cause_and_what_to_do(tmp_path: Path) -> None:
    from sklearn.preprocessing import FunctionTransformer

    df, y = wine_frame()
    df = df.drop(columns="region")
    pipeline = Pipeline(
        [("odd", FunctionTransformer(np.log1p)), ("clf", LogisticRegression(max_iter=1000))]
    ).fit(df, y)
    with pytest.raises(ExportError) as info:
        export_model(pipeline, df, y, tmp_path / "x", name="wine", version="v1")
    message = str(info.value)
    assert "skl2onnx cannot convert this pipeline" in message
    assert "FunctionTransformer" in message  # the cause, not cut before it
    assert "What to do:" in message


def test_an_existing_artifact_names_the_overwrite_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df, y = wine_frame()
    joblib.dump(wine_pipeline(df, y), tmp_path / "wine.joblib")
    df.assign(quality=y).to_csv(tmp_path / "wine.csv", index=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    argv = [
        "export", str(tmp_path / "out"), "--pipeline", str(tmp_path / "wine.joblib"),
        "--data", str(tmp_path / "wine.csv"), "--target", "quality", "--name", "w", "--version", "v1",
    ]  # fmt: skip
    assert cli_main(argv) == 1
    assert "replace it with --overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0
