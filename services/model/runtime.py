"""onnxruntime behind one call: validated ``Batch`` in, labels and probabilities out.

The session is tuned for many small requests on a shared CPU: one intra-op thread and
sequential execution (thread hand-offs cost more than a 20-feature forest), with all graph
optimisations on. The model card's ``inputs`` says how rows map onto ONNX inputs:

- ``matrix``: one float32 tensor ``[n, n_features]`` (all-numeric models; the fastest);
- ``columns``: one ``[n, 1]`` tensor per feature, named after it (float32 or string), or
  after its ``input`` when the converter renamed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from mlrollout.services.model.validation import Batch, InputError, Reason

PROBABILITIES = "probabilities"
WARM_UP_RUNS = 3


class ModelError(Exception):
    """The ONNX model does not match its model card, or cannot be loaded."""


@dataclass(frozen=True)
class Prediction:
    labels: list[Any]  # JSON-ready: class labels (classifiers) or floats (regressors)
    indices: np.ndarray | None  # int64 class indices, classifiers only
    probabilities: np.ndarray | None  # float32 [n, n_classes], classifiers only


class OnnxModel:
    def __init__(self, model_path: Path, card: Mapping[str, Any]) -> None:
        inputs = card["inputs"]
        self.layout = str(inputs["layout"])
        self.features = [dict(f) for f in inputs["features"]]
        self.task = str(card["task"])
        self.classes: list[Any] = list(card.get("classes") or [])
        self._classes_arr = np.array(self.classes, dtype=object)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(model_path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self.tensor = str(inputs.get("tensor", "X"))
        # ONNX input names: the feature's name unless the converter had to rename it
        # ("input" in model.json, e.g. "od280/od315" -> "od280_od315").
        self._num_names = [
            str(f.get("input", f["name"])) for f in self.features if f["kind"] == "numeric"
        ]
        self._cat_names = [
            str(f.get("input", f["name"])) for f in self.features if f["kind"] == "categorical"
        ]
        self._check_inputs()
        outputs = [o.name for o in self._session.get_outputs()]
        if self.task == "classification":
            if PROBABILITIES not in outputs:
                raise ModelError(f"classifier has no {PROBABILITIES!r} output (outputs: {outputs})")
            if not self.classes:
                raise ModelError("model.json lists no classes for a classifier")
            self._output = PROBABILITIES
        else:
            self._output = outputs[0]

    def _check_inputs(self) -> None:
        declared = {i.name: i.type for i in self._session.get_inputs()}
        if self.layout == "matrix":
            if self._cat_names:
                raise ModelError("the matrix layout takes numeric features only")
            expected = {self.tensor: "tensor(float)"}
        elif self.layout == "columns":
            expected = {n: "tensor(float)" for n in self._num_names}
            expected |= {n: "tensor(string)" for n in self._cat_names}
        else:
            raise ModelError(f"unknown input layout {self.layout!r}")
        if declared != expected:
            raise ModelError(f"ONNX inputs {declared} do not match model.json inputs {expected}")

    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        if self.layout == "matrix":
            return {self.tensor: batch.numeric.astype(np.float32)}
        feeds = {
            name: batch.numeric[:, j : j + 1].astype(np.float32)
            for j, name in enumerate(self._num_names)
        }
        for j, name in enumerate(self._cat_names):
            col = batch.categorical[:, j : j + 1]
            # A string tensor cannot hold None; "" is what the encoder sees for missing.
            feeds[name] = np.where(col == None, "", col).astype(str)  # noqa: E711
        return feeds

    def predict(self, batch: Batch) -> Prediction:
        (out,) = self._session.run([self._output], self.feeds(batch))
        if not np.isfinite(out).all():
            raise _not_finite(np.asarray(out))
        if self.task != "classification":
            return Prediction(np.asarray(out).reshape(-1).tolist(), None, None)
        indices = out.argmax(axis=1)
        return Prediction(self._classes_arr[indices].tolist(), indices, out)

    def warm_up(self) -> Prediction:
        """Run a few inferences on a neutral row so the first real request is not slow."""
        batch = Batch(
            numeric=np.zeros((1, len(self._num_names))),
            categorical=np.full((1, len(self._cat_names)), "", dtype=object),
            n_rows=1,
        )
        result = self.predict(batch)
        for _ in range(WARM_UP_RUNS - 1):
            result = self.predict(batch)
        return result


def _not_finite(out: np.ndarray) -> InputError:
    # Valid float32 inputs far outside the training data can overflow a linear model; a
    # NaN or inf is no answer, and JSON cannot carry it.
    row = int(np.argmax(~np.isfinite(out.reshape(len(out), -1)).all(axis=1)))
    return InputError(
        Reason.WRONG_TYPE,
        None,
        f"row {row}: the model's output for this input is not a finite number "
        "(values far outside the training data?)",
    )
