"""The HTTP-free core of the model server, shared by /predict, /feedback and the OIP v2 handlers.

Every method takes bytes and returns a ``Reply`` (status, JSON payload, headers); none of
them raises. Bad input is a 4xx naming the field and the rule, counted by reason;
anything unexpected is logged and answered with a 500 counted as ``server_error``.

Fault injection (a testing aid for demos of rollbacks on errors, off by default): with
``MLROLLOUT_FAULT_ERROR_RATE=0.3`` (or ``fault_error_rate=0.3``) that share of valid
/predict and infer requests are answered 500 instead of being predicted.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlrollout.services.drift import DriftMonitor
from mlrollout.services.metrics import DriftCollector, ServerLabels, ServerMetrics
from mlrollout.services.model import oip
from mlrollout.services.model.artifact import Artifact, ArtifactError, load_artifact
from mlrollout.services.model.feedback import (
    DEFAULT_CAPACITY_BYTES,
    FeedbackStore,
    Lookup,
    class_dtype,
    looks_like_id,
)
from mlrollout.services.model.feedback_body import FEEDBACK_ID_HEADER as FEEDBACK_ID_HEADER
from mlrollout.services.model.feedback_body import feedback_items, label_key, regression_labels
from mlrollout.services.model.runtime import OnnxModel, Prediction
from mlrollout.services.model.validation import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    Batch,
    InputError,
    Reason,
    Validator,
    decode_json,
    encode_json,
)
from mlrollout.services.profile import ProfileError, load_profile

log = logging.getLogger("mlrollout.dataplane")

FAULT_ENV = "MLROLLOUT_FAULT_ERROR_RATE"
REQUEST_ID_HEADER = "x-request-id"
VERSION_HEADER = "x-mlrollout-version"
FEEDBACK_BYTES_ENV = "MLROLLOUT_FEEDBACK_BYTES"
DEFAULT_FEEDBACK_BYTES = DEFAULT_CAPACITY_BYTES
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True)
class Reply:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return encode_json(self.payload)


def fault_rate_from_env(environ: dict[str, str] | None = None) -> float:
    raw = (environ if environ is not None else os.environ).get(FAULT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={raw!r}: must be a number between 0 and 1") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{FAULT_ENV}={raw!r}: must be between 0 and 1")
    return rate


class Dataplane:
    """One loaded model version: validation, onnxruntime, metrics, drift and feedback.

    Thread-safe: the HTTP adapter may call it from the event loop and from worker threads.
    """

    def __init__(
        self,
        artifact: Artifact,
        *,
        deployment: str,
        track: str,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        fault_error_rate: float = 0.0,
        feedback_bytes: int = DEFAULT_FEEDBACK_BYTES,
        drift_window: int = 1000,
        drift_arl_windows: float = 500.0,
        clock: Callable[[], float] = time.perf_counter,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= fault_error_rate <= 1.0:
            raise ValueError(f"fault_error_rate must be between 0 and 1, got {fault_error_rate}")
        self.artifact = artifact
        self.name, self.version = artifact.name, artifact.version
        try:
            self.validator = Validator.from_card(
                artifact.card, max_rows=max_rows, max_body_bytes=max_body_bytes
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{artifact.path}/model.json: malformed inputs ({exc!r})") from exc
        self.model = OnnxModel(artifact.model_path, artifact.card)
        try:
            profile = load_profile(artifact.profile)
        except ProfileError as exc:
            raise ArtifactError(f"{artifact.path}/profile.json: {exc}") from exc
        _check_profile_matches(profile.numeric_names, profile.categorical_names, self.validator)
        self.labels = ServerLabels(deployment, self.name, self.version, track)
        self.metrics = ServerMetrics(
            self.labels,
            reasons=[r.value for r in Reason],
            classes=[str(c) for c in self.model.classes],
            sha256=artifact.sha256,
        )
        self.drift = DriftMonitor(profile, window=drift_window, arl_windows=drift_arl_windows)
        self.metrics.register(DriftCollector(self.drift, self.labels.as_dict()))
        self._fault_rate = fault_error_rate
        self._rng = rng or random.Random()
        self._clock = clock
        self._has_categorical = bool(profile.categorical_names)
        classification = self.model.task == "classification"
        # Predictions kept for feedback: class indices, or the predicted values of a regressor.
        self.feedback_store = FeedbackStore(
            feedback_bytes,
            dtype=class_dtype(len(self.model.classes)) if classification else np.float64,
        )
        self._class_index = {label_key(c): i for i, c in enumerate(self.model.classes)}
        store = self.feedback_store
        self.metrics.feedback_store_bytes = lambda: (store.used_bytes, store.capacity_bytes)
        self._feedback_lock = threading.Lock()
        self._ready = False
        self._base_headers = {VERSION_HEADER: self.version}

    @classmethod
    def from_artifact(
        cls,
        source: str | os.PathLike[str],
        *,
        deployment: str,
        track: str,
        sha256: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Dataplane:
        """Load (and download) the artifact, build the dataplane and warm it up."""
        options.setdefault("fault_error_rate", fault_rate_from_env())
        dataplane = cls(
            load_artifact(source, sha256=sha256, cache_dir=cache_dir),
            deployment=deployment,
            track=track,
            **options,
        )
        dataplane.warm_up()
        return dataplane

    @property
    def ready(self) -> bool:
        return self._ready

    def warm_up(self) -> None:
        self.model.warm_up()
        self._ready = True
        self.metrics.set_ready(True)

    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    # ------------------------------------------------------------------ /predict

    def predict(
        self, body: bytes, request_id: str | None = None, feedback_id: str | None = None
    ) -> Reply:
        """``feedback_id`` is one proposed by the router for a mirrored request, so that
        mirrored feedback finds the shadow's prediction; used only if well-formed and new."""
        start = self._clock()
        rid = _request_id(request_id)
        headers = {**self._base_headers, REQUEST_ID_HEADER: rid}
        rows = 0
        try:
            batch = self.validator.parse(body)
            if self._inject_fault():
                reply = Reply(500, _fault_payload(rid), headers)
            else:
                pred = self._predict(batch)
                rows = batch.n_rows
                payload: dict[str, Any] = {
                    "request_id": rid,
                    "model": self.name,
                    "version": self.version,
                    "predictions": pred.labels,
                }
                if (fid := self._remember(pred, feedback_id)) is not None:
                    payload["feedback_id"] = headers[FEEDBACK_ID_HEADER] = fid
                if pred.probabilities is not None:
                    payload["classes"] = self.model.classes
                    payload["probabilities"] = _round(pred.probabilities)
                reply = Reply(200, payload, headers)
        except InputError as exc:
            reply = self._reject(exc, headers, rid)
        except Exception:
            reply = self._crash("predict", headers, rid)
        self._observe("predict", reply.status, start, rows)
        return reply

    # ------------------------------------------------------------------ OIP v2

    def infer_v2(
        self,
        model_name: str,
        body: bytes,
        *,
        header_length: int | None = None,
        request_id: str | None = None,
        feedback_id: str | None = None,
    ) -> Reply:
        """``POST /v2/models/{name}/infer``. ``header_length`` is the value of the
        ``Inference-Header-Content-Length`` header when the binary tensor extension is used.

        The OIP body ``id`` is returned as the response ``id`` (as the protocol asks) and as
        the ``x-request-id`` header (else the ``request_id`` header the client sent, else a
        fresh one); the feedback id is in ``parameters.feedback_id`` and its header."""
        start = self._clock()
        headers = {**self._base_headers, REQUEST_ID_HEADER: _request_id(request_id)}
        rows = 0
        request_id = None
        try:
            if model_name != self.name:
                raise InputError(
                    Reason.UNKNOWN_MODEL,
                    None,
                    f"model {model_name!r} is not served here (this is {self.name!r})",
                )
            if len(body) > self.validator.max_body_bytes:
                raise InputError(
                    Reason.BODY_TOO_LARGE,
                    None,
                    f"body is {len(body)} bytes; the limit is {self.validator.max_body_bytes}",
                )
            request = oip.parse_request(body, header_length)
            request_id = request.id
            if request_id is not None and _REQUEST_ID.fullmatch(request_id):
                headers[REQUEST_ID_HEADER] = request_id
            batch = oip.to_batch(request, self.validator)
            wanted = oip.requested_outputs(request, self.model.task)
            if self._inject_fault():
                reply = Reply(500, _fault_payload(request_id), headers)
            else:
                pred = self._predict(batch)
                rows = batch.n_rows
                outputs = oip.outputs(pred, wanted, self.model.classes)
                payload: dict[str, Any] = {
                    "model_name": self.name,
                    "model_version": self.version,
                    "outputs": outputs,
                }
                if request_id is not None:
                    payload["id"] = request_id
                if (fid := self._remember(pred, feedback_id)) is not None:
                    payload["parameters"] = {"feedback_id": fid}
                    headers[FEEDBACK_ID_HEADER] = fid
                reply = Reply(200, payload, headers)
        except InputError as exc:
            reply = self._reject(exc, headers, request_id)
        except Exception:
            reply = self._crash("infer", headers, request_id)
        self._observe("infer", reply.status, start, rows)
        return reply

    def model_metadata_v2(self) -> dict[str, Any]:
        return oip.metadata(self.name, self.version, self.model)

    # ------------------------------------------------------------------ /feedback

    def feedback(self, body: bytes) -> Reply:
        """Delayed ground truth: ``{"feedback_id": ..., "label": y}`` (or ``"labels": [...]``
        for a batch request), or a list of those. ``feedback_id`` is the one the server
        issued with the prediction. Each prediction takes one label: a second one is refused
        (409), as is an id this server never issued (404); an id it issued but has since
        evicted to stay within its byte bound counts as ``unmatched``. A refused list
        judges nothing."""
        start = self._clock()
        headers = dict(self._base_headers)
        regression = self.model.task != "classification"
        try:
            if len(body) > self.validator.max_body_bytes:
                raise InputError(Reason.BODY_TOO_LARGE, None, "feedback body is too large")
            items = feedback_items(decode_json(body), self.validator.max_rows)
            truths = [
                (fid, self._truth(truth, regression, i)) for i, (fid, truth) in enumerate(items)
            ]
            correct = incorrect = unmatched = 0
            errors: list[float] = []
            store = self.feedback_store
            with self._feedback_lock:
                # Check before judging anything: a refused list must leave every stored
                # prediction in place for the corrected retry.
                seen: set[str] = set()
                for i, (fid, truth) in enumerate(truths):
                    state, rows = store.peek(fid)
                    if state is Lookup.UNKNOWN:
                        raise InputError(
                            Reason.UNKNOWN_FEEDBACK_ID,
                            "feedback_id",
                            f"feedback entry {i}: {fid[:40]!r} is not a feedback id this server "
                            f"issued; send the feedback_id returned with the prediction "
                            f"(body field, or header {FEEDBACK_ID_HEADER})",
                        )
                    if state is Lookup.JUDGED or fid in seen:
                        raise InputError(
                            Reason.DUPLICATE_FEEDBACK,
                            "feedback_id",
                            f"feedback entry {i}: a label for feedback_id {fid!r} was already received; "
                            "each prediction takes one label",
                        )
                    seen.add(fid)
                    if state is Lookup.FOUND and rows != len(truth):
                        raise InputError(
                            Reason.BAD_STRUCTURE,
                            "labels",
                            f"feedback entry {i}: prediction {fid!r} has {rows} "
                            f"row(s), got {len(truth)} label(s)",
                        )
                for fid, truth in truths:
                    predicted = store.take(fid)
                    if predicted is None:
                        unmatched += len(truth)
                    elif regression:
                        errors.extend((np.asarray(truth, dtype=np.float64) - predicted).tolist())
                    else:
                        hits = int(np.count_nonzero(np.asarray(truth) == predicted))
                        correct += hits
                        incorrect += len(truth) - hits
            self.metrics.count_feedback(correct, incorrect, unmatched)
            payload: dict[str, Any] = {
                "correct": correct,
                "incorrect": incorrect,
                "unmatched": unmatched,
            }
            if regression:
                self.metrics.count_regression_errors(errors)
                payload = {"scored": len(errors), "unmatched": unmatched}
                if errors:
                    payload["mean_absolute_error"] = sum(abs(e) for e in errors) / len(errors)
            reply = Reply(200, payload, headers)
        except InputError as exc:
            reply = self._reject(exc, headers, None)
        except Exception:
            reply = self._crash("feedback", headers, None)
        self._observe("feedback", reply.status, start, 0)
        return reply

    def _truth(self, values: tuple[Any, ...], regression: bool, entry: int) -> list[Any]:
        """Ground truth as stored predictions are: numbers (regressors) or class indices,
        with -1 for a label that is none of the model's classes (always incorrect)."""
        if regression:
            return regression_labels(values, entry)
        return [self._class_index.get(label_key(v), -1) for v in values]

    # ------------------------------------------------------------------ internals

    def _predict(self, batch: Batch) -> Prediction:
        pred = self.model.predict(batch)
        if pred.indices is not None:
            self.metrics.count_predictions(pred.indices)
            observed: np.ndarray = pred.indices
        else:
            observed = np.asarray(pred.labels, dtype=np.float64)
        categorical = batch.categorical.tolist() if self._has_categorical else None
        self.drift.observe(batch.numeric, categorical, observed)
        return pred

    def _inject_fault(self) -> bool:
        return self._fault_rate > 0.0 and self._rng.random() < self._fault_rate

    def _remember(self, pred: Prediction, proposed: str | None) -> str | None:
        """Keep what feedback needs of ``pred``; return its feedback id (None when off)."""
        store = self.feedback_store
        if not store.enabled:
            return None
        values = pred.indices if pred.indices is not None else np.asarray(pred.labels)
        if proposed is not None and looks_like_id(proposed) and store.remember(proposed, values):
            return proposed
        fid = store.new_id()
        return fid if store.remember(fid, values) else None

    def _reject(self, exc: InputError, headers: dict[str, str], rid: Any) -> Reply:
        self.metrics.count_violation(exc.reason.value)
        payload = exc.payload()
        if rid is not None:
            payload["request_id"] = rid
        return Reply(exc.status, payload, headers)

    def _crash(self, endpoint: str, headers: dict[str, str], rid: Any) -> Reply:
        log.exception("unexpected error in %s (request id %s)", endpoint, rid)
        payload: dict[str, Any] = {
            "error": "internal error; see the server log",
            "reason": "server_error",
        }
        if rid is not None:
            payload["request_id"] = rid
        return Reply(500, payload, headers)

    def _observe(self, endpoint: str, status: int, start: float, rows: int) -> None:
        outcome = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
        self.metrics.observe_request(endpoint, outcome, self._clock() - start, rows)


def _check_profile_matches(
    numeric: Sequence[str], categorical: Sequence[str], v: Validator
) -> None:
    card_num = tuple(f.name for f in v.features if f.kind == "numeric")
    card_cat = tuple(f.name for f in v.features if f.kind == "categorical")
    if tuple(numeric) != card_num or tuple(categorical) != card_cat:
        raise ArtifactError(
            "profile.json and model.json disagree on the features "
            f"(profile: {list(numeric) + list(categorical)}, card: {list(card_num + card_cat)})"
        )


def _request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return os.urandom(12).hex()


def _fault_payload(rid: Any) -> dict[str, Any]:
    return {"error": f"injected fault ({FAULT_ENV})", "reason": "server_error", "request_id": rid}


def _round(probabilities: np.ndarray) -> list[list[float]]:
    # float32 -> 6 decimals: float32 noise like 0.8700000047683716 helps nobody.
    return probabilities.astype(np.float64).round(6).tolist()
