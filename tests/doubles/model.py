"""Tiny, fast artifacts for tests (unit and integration) and benchmarks; sklearn-generated data.

``numeric_artifact(dir)``: a 10-tree forest on 5 numeric features (matrix layout), ~0.3 s.
``mixed_artifact(dir)``: scaler + one-hot + logistic regression on 2 numeric (one with
missing values) and 2 categorical features (per-feature layout), string classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlrollout.services.model.export import export_model

NUMERIC_FEATURES = ["a", "b", "c", "d", "e"]
MIXED_NUMERIC = ["age", "income"]
MIXED_CATEGORICAL = ["plan", "region"]
PLANS = ["basic", "plus", "pro"]
REGIONS = ["north", "south", "east", "west"]


def numeric_data(rows: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=rows, n_features=len(NUMERIC_FEATURES), n_informative=3, random_state=seed
    )
    return X, y


def numeric_artifact(out_dir: Path, *, version: str = "v1", seed: int = 0) -> Path:
    from sklearn.ensemble import RandomForestClassifier

    X, y = numeric_data(seed=seed)
    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=seed).fit(X, y)
    return export_model(
        model,
        X,
        y,
        out_dir,
        name="tiny",
        version=version,
        feature_names=NUMERIC_FEATURES,
        metrics={"accuracy": 0.9},
        overwrite=True,
    )


def mixed_data(rows: int = 600, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, rows)
    income = rng.lognormal(10, 0.5, rows)
    income[rng.random(rows) < 0.05] = np.nan  # missing values -> "income" is nullable
    plan = rng.choice(PLANS, rows).astype(object)
    region = rng.choice(REGIONS, rows).astype(object)
    score = (age - 40) / 12 + (plan == "pro") * 1.5 - (region == "south") + rng.normal(0, 0.5, rows)
    y = np.where(score > 0.3, "churn", "stay")
    return {"age": age, "income": income, "plan": plan, "region": region}, y


def mixed_pipeline(X: dict[str, np.ndarray], y: np.ndarray) -> object:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    pre = ColumnTransformer(
        [("num", numeric, [0, 1]), ("cat", OneHotEncoder(handle_unknown="ignore"), [2, 3])]
    )
    matrix = np.column_stack([X[c] for c in [*MIXED_NUMERIC, *MIXED_CATEGORICAL]]).astype(object)
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(matrix, y)


def mixed_artifact(out_dir: Path, *, version: str = "v1", seed: int = 0) -> Path:
    X, y = mixed_data(seed=seed)
    return export_model(
        mixed_pipeline(X, y),
        X,
        y,
        out_dir,
        name="churn",
        version=version,
        overwrite=True,
    )
