"""Reference profile of a model's training data: per-feature bins, proportions and moments.

The profile is what drift is measured against (``drift.py``) and what input validation
reads (``allows_missing``). It is stored as ``profile.json`` in the model artifact; the
format is documented in ``docs/drift.md``.

Every feature has the same bin layout so that consumers never special-case kinds:

* numeric: ``len(edges) + 1`` value bins, bin ``j`` is ``[edges[j-1], edges[j])`` with
  both outer bins open (``(-inf, edges[0])`` and ``[edges[-1], +inf)``), then ``missing``;
* categorical: one bin per level, then ``other`` (unseen values), then ``missing``.

Pure: numpy only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "mlrollout.profile"
FORMAT_VERSION = 1
KINDS = ("numeric", "categorical")
PREDICTION_KINDS = ("class", "numeric")
PREDICTION_NAME = "prediction"
_SUM_TOLERANCE = 1e-6


class ProfileError(ValueError):
    """A profile (or the data to build one) is invalid; the message names field and rule."""


@dataclass(frozen=True)
class FeatureProfile:
    """One feature (or the prediction): its bins and the training proportion of each."""

    name: str
    kind: str
    edges: tuple[float, ...]
    levels: tuple[str, ...]
    proportions: tuple[float, ...]
    mean: float | None
    std: float | None
    missing_share: float
    allows_missing: bool

    @property
    def n_bins(self) -> int:
        """All bins, the ``other`` and ``missing`` bins included."""
        return len(self.proportions)

    @property
    def missing_bin(self) -> int:
        return len(self.proportions) - 1

    @property
    def other_bin(self) -> int | None:
        return len(self.levels) if self.kind == "categorical" else None

    def bin_label(self, index: int) -> str:
        """A human-readable name of a bin, for dashboards and docs (metrics use the index)."""
        if not 0 <= index < self.n_bins:
            raise IndexError(f"{self.name}: bin {index} out of range 0..{self.n_bins - 1}")
        if index == self.missing_bin:
            return "missing"
        if self.kind == "categorical":
            return self.levels[index] if index < len(self.levels) else "other"
        lo = "-inf" if index == 0 else f"{self.edges[index - 1]:.6g}"
        hi = "+inf" if index == len(self.edges) else f"{self.edges[index]:.6g}"
        return f"[{lo}, {hi})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            out["edges"] = list(self.edges)
        else:
            out["levels"] = list(self.levels)
        out.update(
            proportions=list(self.proportions),
            mean=self.mean,
            std=self.std,
            missing_share=self.missing_share,
            allows_missing=self.allows_missing,
        )
        return out


@dataclass(frozen=True)
class Profile:
    features: tuple[FeatureProfile, ...]
    prediction: FeatureProfile
    rows: int

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.kind == "numeric")

    @property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.kind == "categorical")

    def feature(self, name: str) -> FeatureProfile:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
            "prediction": self.prediction.to_dict(),
        }


# --------------------------------------------------------------------------- building


def build_profile(
    columns: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    predictions: np.ndarray,
    prediction_kind: str,
    classes: Sequence[str] | None = None,
    n_bins: int = 10,
    *,
    max_levels: int = 32,
    allow_missing: Collection[str] = (),
) -> dict[str, Any]:
    """Profile the training data; returns the JSON-able dict stored as ``profile.json``.

    ``columns`` order is the feature order. Numeric columns use NaN for missing values,
    categorical ones None or NaN. ``predictions`` are the model's outputs on the same
    rows: labels for ``prediction_kind="class"`` (binned in ``classes`` order, so bin i
    is class i), numbers for ``"numeric"``. Categorical features keep their
    ``max_levels`` most frequent levels; rarer ones count as ``other``, which bounds
    metric cardinality. Features in ``allow_missing`` accept missing values at serving
    even when training had none.
    """
    if not 2 <= n_bins <= 100:
        raise ProfileError(f"n_bins: must be between 2 and 100, got {n_bins}")
    if max_levels < 1:
        raise ProfileError(f"max_levels: must be at least 1, got {max_levels}")
    if not columns:
        raise ProfileError("columns: at least one feature is required")
    if set(columns) != set(kinds):
        diff = sorted(set(columns) ^ set(kinds))
        raise ProfileError(f"kinds: must name exactly the columns; differs on {diff}")
    unknown = sorted(set(allow_missing) - set(columns))
    if unknown:
        raise ProfileError(f"allow_missing: unknown features {unknown}")
    rows = len(predictions)
    if rows == 0:
        raise ProfileError("predictions: at least one training row is required")
    features = []
    for name, values in columns.items():
        if len(values) != rows:
            raise ProfileError(f"{name}: has {len(values)} rows, predictions have {rows}")
        kind = kinds[name]
        if kind == "numeric":
            feat = _numeric(name, values, n_bins)
        elif kind == "categorical":
            feat = _categorical(name, values, max_levels)
        else:
            raise ProfileError(f"{name}: kind must be one of {KINDS}, got {kind!r}")
        if name in allow_missing:
            feat = replace(feat, allows_missing=True)
        features.append(feat)
    prediction = _prediction(predictions, prediction_kind, classes, n_bins)
    return Profile(tuple(features), prediction, rows).to_dict()


def bin_numeric(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin indices of ``values`` (NaN -> the missing bin ``len(edges) + 1``)."""
    bins = np.searchsorted(edges, values, side="right")
    return np.where(np.isnan(values), len(edges) + 1, bins)


def _numeric(name: str, values: np.ndarray, n_bins: int) -> FeatureProfile:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{name}: numeric feature has non-numeric values ({exc})") from None
    if np.isinf(x).any():
        raise ProfileError(f"{name}: numeric values must be finite or NaN (missing)")
    present = x[~np.isnan(x)]
    # Inner quantile edges; duplicates (ties, constant features) collapse into one edge.
    quantiles = np.arange(1, n_bins) / n_bins
    edges = np.unique(np.quantile(present, quantiles)) if present.size else np.empty(0)
    counts = np.bincount(bin_numeric(edges, x), minlength=len(edges) + 2)
    missing = x.size - present.size
    return FeatureProfile(
        name=name,
        kind="numeric",
        edges=tuple(float(e) for e in edges),
        levels=(),
        proportions=_proportions(counts),
        mean=float(present.mean()) if present.size else None,
        std=float(present.std()) if present.size else None,
        missing_share=missing / x.size,
        allows_missing=missing > 0,
    )


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _categorical(name: str, values: np.ndarray, max_levels: int) -> FeatureProfile:
    seen = Counter(str(v) for v in values if not _is_missing(v))
    missing = len(values) - sum(seen.values())
    # Most frequent first, ties by name, so the same data always gives the same profile.
    ranked = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = ranked[:max_levels]
    counts = [c for _, c in kept] + [sum(c for _, c in ranked[max_levels:]), missing]
    return FeatureProfile(
        name=name,
        kind="categorical",
        edges=(),
        levels=tuple(level for level, _ in kept),
        proportions=_proportions(np.asarray(counts)),
        mean=None,
        std=None,
        missing_share=missing / len(values),
        allows_missing=missing > 0,
    )


def _prediction(
    predictions: np.ndarray, kind: str, classes: Sequence[str] | None, n_bins: int
) -> FeatureProfile:
    if kind == "numeric":
        if classes is not None:
            raise ProfileError("classes: only allowed with prediction_kind 'class'")
        return _numeric(PREDICTION_NAME, predictions, n_bins)
    if kind != "class":
        raise ProfileError(f"prediction_kind: must be one of {PREDICTION_KINDS}, got {kind!r}")
    labels = [str(p) for p in predictions]
    names = [str(c) for c in classes] if classes is not None else sorted(set(labels))
    if not names or len(set(names)) != len(names):
        raise ProfileError(f"classes: must be non-empty and unique, got {names}")
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ProfileError(f"predictions: labels {unknown[:5]} are not in classes {names}")
    counts = np.bincount([index[lab] for lab in labels], minlength=len(names) + 2)
    return FeatureProfile(
        name=PREDICTION_NAME,
        kind="categorical",
        edges=(),
        levels=tuple(names),
        proportions=_proportions(counts),
        mean=None,
        std=None,
        missing_share=0.0,
        allows_missing=False,
    )


def _proportions(counts: np.ndarray) -> tuple[float, ...]:
    return tuple(float(c) for c in counts / counts.sum())


# --------------------------------------------------------------------------- loading


def read_profile(path: str | Path) -> Profile:
    """Load and validate ``profile.json``; any problem is a ProfileError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    try:
        return load_profile(data)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def load_profile(data: dict[str, Any]) -> Profile:
    """Validate a parsed ``profile.json`` and return it as a Profile."""
    if not isinstance(data, dict):
        raise ProfileError(f"profile: must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ProfileError(f"format: must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != FORMAT_VERSION:
        raise ProfileError(f"version: unsupported {data.get('version')!r}, expected 1")
    rows = data.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ProfileError(f"rows: must be a positive integer, got {rows!r}")
    raw = data.get("features")
    if not isinstance(raw, list) or not raw:
        raise ProfileError("features: must be a non-empty list")
    features = tuple(_load_feature(f, f"features[{i}]") for i, f in enumerate(raw))
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProfileError(f"features: duplicate names {dupes}")
    prediction = _load_feature(data.get("prediction"), "prediction")
    return Profile(features, prediction, rows)


def _load_feature(raw: object, where: str) -> FeatureProfile:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}.name: must be a non-empty string")
    where = f"{where} ({name})"
    kind = raw.get("kind")
    edges: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()
    if kind == "numeric":
        edges = _floats(raw.get("edges"), f"{where}.edges")
        if any(b <= a for a, b in pairwise(edges)):
            raise ProfileError(f"{where}.edges: must be strictly increasing")
        value_bins = len(edges) + 1
    elif kind == "categorical":
        lv = raw.get("levels")
        if not isinstance(lv, list) or not all(isinstance(x, str) for x in lv):
            raise ProfileError(f"{where}.levels: must be a list of strings")
        if len(set(lv)) != len(lv):
            raise ProfileError(f"{where}.levels: must be unique")
        levels = tuple(lv)
        value_bins = len(levels) + 1
    else:
        raise ProfileError(f"{where}.kind: must be one of {KINDS}, got {kind!r}")
    props = _floats(raw.get("proportions"), f"{where}.proportions")
    if len(props) != value_bins + 1:
        raise ProfileError(
            f"{where}.proportions: needs {value_bins + 1} entries (value bins + missing), "
            f"got {len(props)}"
        )
    if min(props) < 0 or abs(sum(props) - 1.0) > _SUM_TOLERANCE:
        raise ProfileError(f"{where}.proportions: must be non-negative and sum to 1")
    missing_share = _number(raw.get("missing_share"), f"{where}.missing_share")
    if missing_share is None or abs(missing_share - props[-1]) > _SUM_TOLERANCE:
        raise ProfileError(f"{where}.missing_share: must equal the last proportion {props[-1]}")
    allows_missing = raw.get("allows_missing")
    if not isinstance(allows_missing, bool):
        raise ProfileError(f"{where}.allows_missing: must be true or false")
    if props[-1] > 0 and not allows_missing:
        raise ProfileError(f"{where}.allows_missing: must be true when missing_share > 0")
    mean = _number(raw.get("mean"), f"{where}.mean")
    std = _number(raw.get("std"), f"{where}.std")
    if std is not None and std < 0:
        raise ProfileError(f"{where}.std: must be non-negative")
    return FeatureProfile(
        name=name,
        kind=kind,
        edges=edges,
        levels=levels,
        proportions=props,
        mean=mean,
        std=std,
        missing_share=missing_share,
        allows_missing=allows_missing,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(raw: object, where: str) -> float | None:
    if raw is None:
        return None
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
        raise ProfileError(f"{where}: must be a finite number or null")
    return float(raw)


def _floats(raw: object, where: str) -> tuple[float, ...]:
    if not isinstance(raw, list) or not all(_is_number(x) for x in raw):
        raise ProfileError(f"{where}: must be a list of numbers")
    if not all(math.isfinite(x) for x in raw):
        raise ProfileError(f"{where}: must be finite")
    return tuple(float(x) for x in raw)
