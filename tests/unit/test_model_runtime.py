"""The onnxruntime wrapper refuses cards that do not match the graph; regressors work too."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlrollout.services.model.artifact import ArtifactError, load_artifact
from mlrollout.services.model.dataplane import Dataplane
from mlrollout.services.model.export import export_model
from mlrollout.services.model.runtime import ModelError, OnnxModel
from mlrollout.services.model.validation import Batch

from tests.doubles.model import numeric_artifact, numeric_data


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return numeric_artifact(tmp_path_factory.mktemp("rt") / "tiny")


def test_session_is_single_threaded_and_warm_up_predicts(artifact: Path) -> None:
    art = load_artifact(artifact)
    model = OnnxModel(art.model_path, art.card)
    assert model._session.get_session_options().intra_op_num_threads == 1
    result = model.warm_up()
    assert result.indices is not None and result.indices.shape == (1,)
    assert result.labels[0] in (0, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["inputs"].update(layout="columns"), "do not match model.json inputs"),
        (lambda c: c["inputs"].update(tensor="input"), "do not match model.json inputs"),
        (lambda c: c["inputs"].update(layout="sparse"), "unknown input layout"),
        (lambda c: c.update(classes=[]), "lists no classes"),
    ],
)
def test_card_that_does_not_match_the_graph_is_refused(
    artifact: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    art = load_artifact(artifact)
    card = copy.deepcopy(art.card)
    change(card)
    with pytest.raises(ModelError, match=message):
        OnnxModel(art.model_path, card)


def test_garbage_model_file_is_a_model_error(tmp_path: Path, artifact: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        OnnxModel(tmp_path / "model.onnx", load_artifact(artifact).card)


def test_profile_and_card_must_agree_on_features(artifact: Path, tmp_path: Path) -> None:
    art = load_artifact(artifact)
    profile = copy.deepcopy(art.profile)
    profile["features"][0]["name"] = "renamed"
    broken = type(art)(path=art.path, card=art.card, profile=profile)
    with pytest.raises(ArtifactError, match="disagree on the features"):
        Dataplane(broken, deployment="d", track="stable")


def test_regressor_round_trip_through_the_dataplane(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    X, _ = numeric_data()
    y = X @ np.arange(1.0, 6.0) + 3.0
    model = Ridge(alpha=0.1).fit(X, y)
    out = export_model(
        model, X, y, tmp_path / "r", name="price", version="v1", feature_names=list("abcde")
    )
    card = json.loads((out / "model.json").read_text())
    assert card["task"] == "regression" and card["classes"] == []
    dp = Dataplane.from_artifact(out, deployment="d", track="stable")
    reply = dp.predict(json.dumps(X[:4].tolist()).encode(), None)
    assert reply.status == 200, reply.payload
    assert "probabilities" not in reply.payload
    np.testing.assert_allclose(reply.payload["predictions"], model.predict(X[:4]), rtol=1e-4)
    body = {"inputs": [{"name": "X", "shape": [4, 5], "datatype": "FP64", "data": X[:4].tolist()}]}
    infer = dp.infer_v2("price", json.dumps(body).encode())
    assert [o["name"] for o in infer.payload["outputs"]] == ["prediction"]
    # Delayed ground truth for a regressor is scored as error (MAE/RMSE series).
    fid = reply.payload["feedback_id"]
    truth = [float(v) + 1.0 for v in reply.payload["predictions"]]
    scored = dp.feedback(json.dumps({"feedback_id": fid, "labels": truth}).encode()).payload
    assert scored["scored"] == 4 and scored["unmatched"] == 0
    assert scored["mean_absolute_error"] == pytest.approx(1.0, rel=1e-3)
    assert "mlrollout_model_predictions_total" not in dp.render_metrics()[0].decode()


def test_batch_of_one_and_many_agree(artifact: Path) -> None:
    art = load_artifact(artifact)
    model = OnnxModel(art.model_path, art.card)
    X, _ = numeric_data(rows=20, seed=8)
    many = model.predict(Batch(X, np.empty((20, 0), object), 20))
    singles = [
        model.predict(Batch(X[i : i + 1], np.empty((1, 0), object), 1)).labels[0] for i in range(20)
    ]
    assert many.labels == singles
