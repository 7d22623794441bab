"""``mlrollout export``: the command line around ``export.export_model``.

Reads a joblib/pickle pipeline and a CSV of the training data (``read_csv``: numbers where
every value parses, strings otherwise; spreadsheet NA markers are missing values), then
exports. Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from mlrollout.services.model.export import (
    DEFAULT_INTENDED_USE,
    DEFAULT_LIMITS,
    ExportError,
    export_model,
    refuse_duplicates,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="artifact directory to write")
    parser.add_argument("--pipeline", required=True, help="joblib/pickle file of a fitted pipeline")
    parser.add_argument("--data", required=True, help="CSV of the training data (with a header)")
    parser.add_argument("--target", required=True, help="name of the target column in --data")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", required=True, help="model version, e.g. v3")
    parser.add_argument(
        "--categorical",
        default="",
        help="comma-separated columns to treat as categorical (default: non-numeric columns)",
    )
    parser.add_argument(
        "--intended-use",
        default=DEFAULT_INTENDED_USE,
        help="model card: what the model is for and who may use it",
    )
    parser.add_argument(
        "--limits",
        default=DEFAULT_LIMITS,
        help="model card: known limits (data it was not trained on, failure modes)",
    )
    parser.add_argument("--metrics", default="{}", help="JSON object, e.g. '{\"accuracy\": 0.93}'")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    try:
        import joblib

        pipeline = _load_pipeline(joblib, args.pipeline)
        categorical = {c for c in args.categorical.split(",") if c}
        columns, y = read_csv(Path(args.data), args.target, categorical)
        metrics = _parse_metrics(args.metrics)
        if hasattr(pipeline, "classes_"):
            y = _like_classes(y, pipeline.classes_)
        out = export_model(
            pipeline,
            columns,
            y,
            args.out,
            name=args.name,
            version=args.version,
            feature_kinds={c: "categorical" for c in categorical},
            metrics=metrics,
            intended_use=args.intended_use,
            limits=args.limits,
            overwrite=args.overwrite,
        )
    except (ExportError, OSError, ValueError) as exc:
        print(f"mlrollout export: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _parse_metrics(text: str) -> dict[str, float]:
    try:
        metrics = json.loads(text)
    except ValueError as exc:
        raise ExportError(f"--metrics is not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(metrics, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise ExportError('--metrics must be a JSON object of numbers such as {"accuracy": 0.93}')
    return metrics


def _load_pipeline(joblib: Any, path: str) -> Any:
    try:
        pipeline = joblib.load(path)  # trusted input: the user's own model file
    except OSError:
        raise
    except Exception as exc:  # unpickling garbage raises almost any exception type
        raise ExportError(
            f"--pipeline {path}: not a joblib/pickle file of a fitted pipeline "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    if not hasattr(pipeline, "predict"):
        raise ExportError(
            f"--pipeline {path}: holds a {type(pipeline).__name__}, "
            "not a fitted scikit-learn estimator or pipeline"
        )
    return pipeline


def read_csv(
    path: Path, target: str, categorical: set[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Columns as float (empty or NA -> NaN) when every value parses, else as strings
    (empty -> None)."""
    # utf-8-sig: spreadsheet exports start with a byte-order mark, which would otherwise
    # become part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ExportError(f"{path} is empty")
        rows = list(reader)
    if target not in header:
        raise ExportError(f"{path} has no column {target!r} (columns: {', '.join(header)})")
    refuse_duplicates(header, f"{path}: the header")
    unknown = categorical - set(header)
    if unknown:
        raise ExportError(f"--categorical names unknown columns: {sorted(unknown)}")
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ExportError(f"{path}: line {bad[0]} has a different number of fields than the header")
    raw = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    y = raw.pop(target)
    return {h: _parse_column(v, h in categorical) for h, v in raw.items()}, np.asarray(y)


# How spreadsheets, R and pandas write a missing number; float() already takes "nan".
_NA_MARKERS = frozenset({"", "NA", "N/A", "n/a", "#N/A", "NULL", "null", "None", "<NA>"})


def _parse_column(values: list[str], categorical: bool) -> np.ndarray:
    if not categorical:
        try:
            return np.array([math.nan if v.strip() in _NA_MARKERS else float(v) for v in values])
        except ValueError:
            pass
    return np.array([v if v != "" else None for v in values], dtype=object)


def _like_classes(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    if np.asarray(classes).dtype.kind in "iu":
        return y.astype(np.float64).astype(np.int64)
    return y
