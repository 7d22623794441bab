"""``mlrollout examples OUT_DIR``: ready-made artifacts for demos and tests, from generated data.

One model, ``fraud`` (20 numeric features ``f00``..``f19``, binary target, ~30% positive),
from ``sklearn.datasets.make_classification`` with a fixed seed; nothing is downloaded.

- ``v1``: a 100-tree random forest (the stable version; the benchmark model).
- ``v2``: an extra-trees ensemble: a different model of similar quality, to be promoted.
- ``v3``: a bad version: a random forest trained on data where a pipeline bug added +2.5 to
  four informative features. On real traffic it predicts far fewer positives than v1/v2
  (prediction drift against stable), its inputs look shifted against its own profile
  (feature drift), and its accuracy on delayed feedback is lower.
- ``traffic.jsonl``: held-out rows, one ``{"record": {...}, "label": 0|1}`` per line, for the
  load generator to replay and to post as feedback.

Drift and errors are separate demo scenarios: v3 drifts by itself. To make a version fail
with HTTP 500s instead, start its server with ``MLROLLOUT_FAULT_ERROR_RATE=0.3`` (a testing
aid read by the dataplane; see ``dataplane.py``), e.g. through the ModelDeployment's
``spec.serving.env``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlrollout.services.model.artifact import pack_artifact
from mlrollout.services.model.export import ExportError, export_model

MODEL_NAME = "fraud"
N_FEATURES = 20
FEATURE_NAMES = [f"f{i:02d}" for i in range(N_FEATURES)]
SEED = 7
TRAIN_ROWS = 4000
TRAFFIC_ROWS = 2000
BAD_SHIFT = 2.5  # added to the first four (informative) features in v3's training data
VERSIONS = ("v1", "v2", "v3")
TRAFFIC_FILE = "traffic.jsonl"


@dataclass(frozen=True)
class Dataset:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def make_dataset(seed: int = SEED) -> Dataset:
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=TRAIN_ROWS + TRAFFIC_ROWS,
        n_features=N_FEATURES,
        n_informative=8,
        n_redundant=4,
        weights=[0.7, 0.3],
        flip_y=0.02,
        shuffle=False,  # keeps the informative features first, so v3's bug is targeted
        random_state=seed,
    )
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]
    return Dataset(X[:TRAIN_ROWS], y[:TRAIN_ROWS], X[TRAIN_ROWS:], y[TRAIN_ROWS:])


def _estimator(version: str) -> Any:
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    if version == "v2":
        return ExtraTreesClassifier(n_estimators=100, max_depth=10, random_state=2, n_jobs=1)
    return RandomForestClassifier(n_estimators=100, max_depth=8, random_state=1, n_jobs=1)


def _evaluate(model: Any, data: Dataset) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    proba = model.predict_proba(data.X_test)
    return {
        "accuracy": round(float(accuracy_score(data.y_test, proba.argmax(axis=1))), 4),
        "roc_auc": round(float(roc_auc_score(data.y_test, proba[:, 1])), 4),
        "log_loss": round(float(log_loss(data.y_test, proba)), 4),
        "evaluation_rows": float(len(data.y_test)),  # the held-out rows of traffic.jsonl
    }


def write_version(version: str, out_dir: Path, data: Dataset) -> Path:
    X = data.X_train
    if version == "v3":
        X = X.copy()
        X[:, :4] += BAD_SHIFT
    model = _estimator(version).fit(X, data.y_train)
    bad = version == "v3"
    return export_model(
        model,
        X,
        data.y_train,
        out_dir / version,
        name=MODEL_NAME,
        version=version,
        feature_names=FEATURE_NAMES,
        metrics=_evaluate(model, data),
        intended_use=(
            "Demo and test fixture for mlrollout: "
            + (
                "a deliberately BAD version (shifted training features)."
                if bad
                else "a good version."
            )
        ),
        limits="Generated data (sklearn make_classification); not a real fraud model.",
        overwrite=True,
    )


def write_traffic(path: Path, data: Dataset) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row, label in zip(data.X_test.tolist(), data.y_test.tolist(), strict=True):
            record = {name: round(v, 6) for name, v in zip(FEATURE_NAMES, row, strict=True)}
            f.write(json.dumps({"record": record, "label": label}) + "\n")
    tmp.replace(path)
    return path


def write_examples(out_dir: Path, *, tarballs: bool = False) -> dict[str, Path]:
    """Write v1, v2, v3 and traffic.jsonl under ``out_dir``; return name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = make_dataset()
    written = {v: write_version(v, out_dir, data) for v in VERSIONS}
    written["traffic"] = write_traffic(out_dir / TRAFFIC_FILE, data)
    if tarballs:
        sums = []
        for v in VERSIONS:
            tar = out_dir / f"{v}.tar.gz"
            sums.append(f"{pack_artifact(out_dir / v, tar)}  {tar.name}\n")
            written[f"{v}.tar.gz"] = tar
        (out_dir / "SHA256SUMS").write_text("".join(sums))
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", metavar="OUT_DIR", help="directory to write v1/ v2/ v3/ and traffic.jsonl into"
    )
    parser.add_argument("--tar", action="store_true", help="also write vN.tar.gz and SHA256SUMS")


def run(args: argparse.Namespace) -> int:
    try:
        written = write_examples(Path(args.out), tarballs=args.tar)
    except (ExportError, OSError) as exc:
        print(f"mlrollout examples: {exc}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}\t{path}")
    return 0
