"""Request body -> validated arrays, or an ``InputError`` naming the field and the rule.

Accepted bodies (JSON, UTF-8):

- records: ``[{"f1": 1.0, "f2": "a"}, ...]`` or ``{"records": [...]}``
- instances: ``[[1.0, "a"], ...]`` (values in the model's feature order) or ``{"instances": [...]}``

Numbers are JSON numbers (``true``/``false`` and numeric strings are refused); categorical
values are JSON strings; ``null`` is accepted only for features whose training data had
missing values (the model card's ``nullable``), and arrives as NaN / None. ``NaN`` and
``Infinity`` are not JSON and are refused as malformed.

The common case (all-numeric model, well-formed batch) is handled by one JSON parse and one
``np.array`` call; the per-value scan runs only to explain an error or for categorical columns.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any

import numpy as np
from mlrollout.services.model.jsoncodec import DECODE_ERRORS, decode
from mlrollout.services.model.jsoncodec import encode_json as encode_json

DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Every numeric ONNX input is float32 (export.py); beyond this a value becomes inf there and
# the model answers NaN probabilities, so it is refused here with the feature's name.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Reason(StrEnum):
    """Why input was refused; the values are the ``reason`` label of the violations metric."""

    BODY_TOO_LARGE = "body_too_large"
    MALFORMED_JSON = "malformed_json"
    BAD_STRUCTURE = "bad_structure"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    MISSING_FEATURE = "missing_feature"
    UNKNOWN_FEATURE = "unknown_feature"
    WRONG_TYPE = "wrong_type"
    MISSING_VALUE = "missing_value"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    UNKNOWN_FEEDBACK_ID = "unknown_feedback_id"
    DUPLICATE_FEEDBACK = "duplicate_feedback"


_STATUS = {
    Reason.BODY_TOO_LARGE: 413,
    Reason.BATCH_TOO_LARGE: 413,
    Reason.UNKNOWN_MODEL: 404,
    Reason.UNSUPPORTED_CONTENT_TYPE: 415,
    Reason.UNKNOWN_FEEDBACK_ID: 404,
    Reason.DUPLICATE_FEEDBACK: 409,
    Reason.MALFORMED_JSON: 400,
    Reason.BAD_STRUCTURE: 400,
}


class InputError(Exception):
    """Refused input: a 4xx for the client, counted by ``reason``."""

    def __init__(self, reason: Reason, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message

    @property
    def status(self) -> int:
        return _STATUS.get(self.reason, 422)

    def payload(self) -> dict[str, Any]:
        return {"error": self.message, "reason": self.reason.value, "field": self.field}


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "numeric" | "categorical"
    nullable: bool = False


@dataclass(frozen=True)
class Batch:
    """Validated rows: numeric float64 [n, n_numeric] (NaN = missing) and categorical object
    [n, n_categorical] (None = missing), each in the schema's order of that kind."""

    numeric: np.ndarray
    categorical: np.ndarray
    n_rows: int


def decode_json(body: bytes) -> Any:
    try:
        return decode(body)
    except DECODE_ERRORS as exc:
        raise InputError(Reason.MALFORMED_JSON, None, f"body is not valid JSON: {exc}") from exc


class Validator:
    def __init__(
        self,
        features: Sequence[Feature],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if not features:
            raise ValueError("a model needs at least one feature")
        if max_rows < 1 or max_body_bytes < 2:
            raise ValueError("max_rows and max_body_bytes must be positive")
        self.features = tuple(features)
        self.names = tuple(f.name for f in features)
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self._known = frozenset(self.names)
        self._getter = itemgetter(*self.names)
        self._num_idx = [i for i, f in enumerate(features) if f.kind == "numeric"]
        self._cat_idx = [i for i, f in enumerate(features) if f.kind == "categorical"]
        self._all_numeric = not self._cat_idx
        self._none_nullable = not any(f.nullable for f in features)

    @classmethod
    def from_card(cls, card: Mapping[str, Any], **limits: int) -> Validator:
        feats = [
            Feature(str(f["name"]), str(f["kind"]), bool(f.get("nullable", False)))
            for f in card["inputs"]["features"]
        ]
        return cls(feats, **limits)

    def parse(self, body: bytes) -> Batch:
        """Validate a /predict body (records or instances, bare or wrapped)."""
        if len(body) > self.max_body_bytes:
            raise InputError(
                Reason.BODY_TOO_LARGE,
                None,
                f"body is {len(body)} bytes; the limit is {self.max_body_bytes}",
            )
        data = decode_json(body)
        rows = _unwrap(data)
        self._check_count(len(rows))
        if isinstance(rows[0], dict):
            rows = self._records_to_rows(rows)
        # Booleans would silently become 1.0/0.0 inside np.array; the byte scan is far
        # cheaper than looking at every value and only sends suspicious bodies the slow way.
        fast = self._all_numeric and b"true" not in body and b"false" not in body
        return self.from_rows(rows, trusted_types=fast)

    def from_rows(self, rows: Sequence[Any], *, trusted_types: bool = False) -> Batch:
        """Validate a list of rows in feature order (instances)."""
        n = len(rows)
        self._check_count(n)
        if self._all_numeric and trusted_types:
            try:
                arr = np.array(rows)
            except ValueError:  # ragged rows
                arr = None
            if (
                arr is not None
                and arr.dtype.kind in "iuf"
                and arr.shape == (n, len(self.names))
                # No NaN can be here (JSON has none), so max() sees every value; the slow
                # path explains any value beyond float32.
                and np.abs(arr).max() <= FLOAT32_MAX
            ):
                return Batch(arr.astype(np.float64, copy=False), np.empty((n, 0), object), n)
        return self._slow_rows(rows)

    def from_columns(self, columns: Mapping[str, Sequence[Any]]) -> Batch:
        """Validate named columns (OIP v2 per-feature inputs)."""
        for name in columns:
            if name not in self._known:
                raise InputError(
                    Reason.UNKNOWN_FEATURE, name, f"unknown feature {name!r}{self._hint(name)}"
                )
        for name in self.names:
            if name not in columns:
                raise InputError(Reason.MISSING_FEATURE, name, f"feature {name!r} is missing")
        lengths = {len(columns[name]) for name in self.names}
        if len(lengths) != 1:
            raise InputError(Reason.BAD_STRUCTURE, None, "all inputs must have the same length")
        n = lengths.pop()
        self._check_count(n)
        numeric = np.empty((n, len(self._num_idx)), dtype=np.float64)
        categorical = np.empty((n, len(self._cat_idx)), dtype=object)
        for j, i in enumerate(self._num_idx):
            numeric[:, j] = self._numeric_column(self.features[i], columns[self.names[i]])
        for j, i in enumerate(self._cat_idx):
            categorical[:, j] = self._categorical_column(self.features[i], columns[self.names[i]])
        return Batch(numeric, categorical, n)

    def _hint(self, name: str, given: Mapping[str, Any] | None = None) -> str:
        """`` (did you mean 'alcohol'?)`` for the closest feature not given, or nothing."""
        pool = [n for n in self.names if given is None or n not in given] or self.names
        close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise InputError(Reason.EMPTY_BATCH, None, "the batch has no rows")
        if n > self.max_rows:
            raise InputError(
                Reason.BATCH_TOO_LARGE,
                None,
                f"the batch has {n} rows; the limit is {self.max_rows}",
            )

    def _records_to_rows(self, records: list[Any]) -> list[Any]:
        width = len(self.names)
        try:
            rows = list(map(self._getter, records))
            if all(len(r) == width for r in records):
                # itemgetter of one name returns the value, not a 1-tuple
                return [[v] for v in rows] if width == 1 else rows
        except (KeyError, TypeError, AttributeError):
            pass
        for i, record in enumerate(records):  # explain the first bad record
            if not isinstance(record, dict):
                raise InputError(Reason.BAD_STRUCTURE, None, f"row {i} is not an object")
            # Unknown names first: a misspelled feature is also a missing one, and the
            # misspelling is what the caller must fix.
            for name in record:
                if name not in self._known:
                    raise InputError(
                        Reason.UNKNOWN_FEATURE,
                        str(name),
                        f"row {i}: unknown feature {name!r}{self._hint(str(name), record)}",
                    )
            for name in self.names:
                if name not in record:
                    raise InputError(
                        Reason.MISSING_FEATURE, name, f"row {i}: feature {name!r} is missing"
                    )
        raise AssertionError("unreachable: records were rejected without a reason")

    def _slow_rows(self, rows: Sequence[Any]) -> Batch:
        width = len(self.names)
        for i, row in enumerate(rows):
            if not isinstance(row, list | tuple):
                raise InputError(
                    Reason.BAD_STRUCTURE, None, f"row {i} must be a list of {width} values"
                )
            if len(row) < width:
                missing = self.names[len(row)]
                raise InputError(
                    Reason.MISSING_FEATURE,
                    missing,
                    f"row {i} has {len(row)} values; the model takes {width} "
                    f"(first missing feature: {missing!r})",
                )
            if len(row) > width:
                raise InputError(
                    Reason.UNKNOWN_FEATURE,
                    None,
                    f"row {i} has {len(row)} values; the model takes {width}",
                )
        columns = {name: [row[i] for row in rows] for i, name in enumerate(self.names)}
        return self.from_columns(columns)

    def from_matrix(self, matrix: np.ndarray) -> Batch:
        """Validate a numeric [n, n_features] tensor (OIP v2 single input, all-numeric model)."""
        if not self._all_numeric:
            raise InputError(
                Reason.BAD_STRUCTURE,
                None,
                "this model has categorical features: send one input per feature",
            )
        if matrix.ndim != 2 or matrix.shape[1] != len(self.names):
            raise InputError(
                Reason.BAD_STRUCTURE,
                None,
                f"expected shape [n, {len(self.names)}], got {list(matrix.shape)}",
            )
        self._check_count(matrix.shape[0])
        if matrix.dtype.kind not in "iuf":
            return self._slow_rows(matrix.tolist())
        numeric = matrix.astype(np.float64, copy=False)
        for j, feature in enumerate(self.features):
            self._numeric_column(feature, numeric[:, j])
        return Batch(numeric, np.empty((matrix.shape[0], 0), object), matrix.shape[0])

    def _numeric_column(self, feature: Feature, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
            col = values.astype(np.float64, copy=False)
            bad = np.isinf(col) if feature.nullable else ~np.isfinite(col)
            bad |= np.abs(col) > FLOAT32_MAX
            if bad.any():
                i = int(np.argmax(bad))
                raise _number_error(feature, i, float(col[i]))
            return col
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                if not feature.nullable:
                    raise _number_error(feature, i, v)
                out[i] = np.nan
            elif isinstance(v, bool) or not isinstance(v, int | float | np.number):
                raise _number_error(feature, i, v)
            else:
                try:
                    out[i] = v
                except OverflowError:
                    raise _number_error(feature, i, math.inf) from None
                if not math.isfinite(out[i]) or abs(out[i]) > FLOAT32_MAX:
                    raise _number_error(feature, i, v)
        return out

    def _categorical_column(
        self, feature: Feature, values: Sequence[Any] | np.ndarray
    ) -> list[Any]:
        for i, v in enumerate(values):
            if v is None:
                if not feature.nullable:
                    raise InputError(
                        Reason.MISSING_VALUE,
                        feature.name,
                        f"row {i}: feature {feature.name!r} must not be null",
                    )
            elif not isinstance(v, str):
                raise InputError(
                    Reason.WRONG_TYPE,
                    feature.name,
                    f"row {i}: feature {feature.name!r} must be a string, got {_kind(v)}",
                )
        return list(values)


def _unwrap(data: Any) -> list[Any]:
    if isinstance(data, dict):
        keys = [k for k in ("records", "instances") if k in data]
        if len(keys) != 1 or len(data) != 1:
            raise InputError(
                Reason.BAD_STRUCTURE,
                None,
                'expected a list of rows, or an object with exactly one key "records" or "instances"',
            )
        data = data[keys[0]]
    if not isinstance(data, list):
        raise InputError(Reason.BAD_STRUCTURE, None, f"expected a list of rows, got {_kind(data)}")
    if data and not isinstance(data[0], dict | list):
        raise InputError(
            Reason.BAD_STRUCTURE, None, "rows must be objects (records) or lists (instances)"
        )
    return data


def _number_error(feature: Feature, row: int, value: Any) -> InputError:
    name = feature.name
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return InputError(
            Reason.MISSING_VALUE,
            name,
            f"row {row}: feature {name!r} must not be null (the training data had no missing values)",
        )
    if isinstance(value, float | int) and not isinstance(value, bool):
        return InputError(
            Reason.WRONG_TYPE,
            name,
            f"row {row}: feature {name!r} must be a finite number within the model's float32 "
            f"range (|x| <= {FLOAT32_MAX:.4g}), got {value:g}",
        )
    return InputError(
        Reason.WRONG_TYPE, name, f"row {row}: feature {name!r} must be a number, got {_kind(value)}"
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
