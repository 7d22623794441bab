"""Reference profile: building from training data, the JSON format and its validation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlrollout.services.profile import (
    ProfileError,
    bin_numeric,
    build_profile,
    load_profile,
    read_profile,
)


def _training(rows: int = 2000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, rows)
    age[rng.random(rows) < 0.05] = np.nan
    color = rng.choice(["red", "green", "blue", "teal"], rows, p=[0.5, 0.3, 0.15, 0.05])
    color = color.astype(object)
    color[:7] = None
    return {
        "columns": {"age": age, "income": rng.lognormal(10, 1, rows), "color": color},
        "kinds": {"age": "numeric", "income": "numeric", "color": "categorical"},
        "predictions": np.where(age > 40, "yes", "no"),
        "prediction_kind": "class",
        "classes": ["no", "yes"],
    }


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return _training()


@pytest.fixture(scope="module")
def profile_dict(data: dict[str, Any]) -> dict[str, Any]:
    return build_profile(**data)


def test_numeric_feature_uses_inner_training_deciles(data: dict[str, Any]) -> None:
    prof = load_profile(build_profile(**data))
    income = data["columns"]["income"]
    feat = prof.feature("income")
    assert feat.edges == pytest.approx(np.quantile(income, np.arange(1, 10) / 10))
    # 10 value bins with both outer ones open, then the missing bin.
    assert feat.n_bins == 11
    assert feat.proportions[:10] == pytest.approx([0.1] * 10, abs=1e-3)
    assert feat.mean == pytest.approx(income.mean())
    assert feat.std == pytest.approx(income.std())
    assert feat.missing_share == 0 and not feat.allows_missing


def test_missing_values_get_their_own_bin(data: dict[str, Any]) -> None:
    feat = load_profile(build_profile(**data)).feature("age")
    age = data["columns"]["age"]
    assert feat.missing_share == pytest.approx(np.isnan(age).mean())
    assert feat.proportions[feat.missing_bin] == feat.missing_share
    assert feat.allows_missing
    assert feat.mean == pytest.approx(np.nanmean(age))


def test_allow_missing_overrides_a_feature_without_missing_values(data: dict[str, Any]) -> None:
    prof = load_profile(build_profile(**data, allow_missing=["income"]))
    assert prof.feature("income").allows_missing
    assert prof.feature("income").missing_share == 0
    with pytest.raises(ProfileError, match=r"allow_missing.*nope"):
        build_profile(**data, allow_missing=["nope"])


def test_proportions_reproduce_the_training_bins(data: dict[str, Any]) -> None:
    prof = load_profile(build_profile(**data))
    for name in prof.numeric_names:
        feat = prof.feature(name)
        counts = np.bincount(
            bin_numeric(np.asarray(feat.edges), data["columns"][name]), minlength=feat.n_bins
        )
        assert feat.proportions == pytest.approx(counts / counts.sum())


def test_ties_collapse_edges_and_constant_features_still_load() -> None:
    rows = 1000
    rng = np.random.default_rng(1)
    prof = load_profile(
        build_profile(
            {"flag": rng.integers(0, 2, rows).astype(float), "const": np.full(rows, 3.0)},
            {"flag": "numeric", "const": "numeric"},
            np.zeros(rows),
            "numeric",
        )
    )
    assert prof.feature("flag").edges in ((0.0, 1.0), (1.0,))
    assert prof.feature("const").edges == (3.0,)
    # Everything lands in [3, +inf); below-3 and missing bins are empty.
    assert prof.feature("const").proportions == (0.0, 1.0, 0.0)
    assert prof.prediction.kind == "numeric"


def test_categorical_levels_by_frequency_with_other_and_missing(data: dict[str, Any]) -> None:
    prof = load_profile(build_profile(**data))
    feat = prof.feature("color")
    assert feat.levels == ("red", "green", "blue", "teal")
    assert feat.other_bin == 4 and feat.missing_bin == 5
    assert feat.proportions[4] == 0  # every training level is kept
    assert feat.missing_share == pytest.approx(7 / 2000)
    assert prof.categorical_names == ("color",)
    assert prof.numeric_names == ("age", "income")


def test_max_levels_moves_rare_levels_into_other(data: dict[str, Any]) -> None:
    feat = load_profile(build_profile(**data, max_levels=2)).feature("color")
    color = data["columns"]["color"]
    assert feat.levels == ("red", "green")
    rare = np.isin(color, ["blue", "teal"]).mean()
    assert feat.other_bin == 2
    assert feat.proportions[2] == pytest.approx(rare)


def test_class_prediction_bins_follow_class_order(data: dict[str, Any]) -> None:
    d = dict(data, classes=["yes", "no"])
    pred = load_profile(build_profile(**d)).prediction
    assert pred.levels == ("yes", "no")
    assert pred.proportions[0] == pytest.approx((data["predictions"] == "yes").mean())


def test_json_round_trip_is_lossless(profile_dict: dict[str, Any]) -> None:
    text = json.dumps(profile_dict, allow_nan=False)
    prof = load_profile(json.loads(text))
    assert prof == load_profile(profile_dict)
    assert prof.to_dict() == profile_dict
    assert prof.rows == 2000


def test_bin_labels_are_readable(profile_dict: dict[str, Any]) -> None:
    prof = load_profile(profile_dict)
    age = prof.feature("age")
    assert age.bin_label(0).startswith("[-inf, ")
    assert age.bin_label(9).endswith(", +inf)")
    assert age.bin_label(10) == "missing"
    assert prof.feature("color").bin_label(4) == "other"
    with pytest.raises(IndexError):
        age.bin_label(11)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_bins": 1}, "n_bins"),
        ({"kinds": {"age": "numeric", "income": "numeric"}}, r"kinds.*color"),
        ({"kinds": {"age": "numeric", "income": "text", "color": "categorical"}}, "income: kind"),
        ({"prediction_kind": "probability"}, "prediction_kind"),
        ({"classes": ["no"]}, r"labels \['yes'\] are not in classes"),
        ({"classes": ["no", "no"]}, "classes: must be non-empty and unique"),
        ({"predictions": np.array([])}, "at least one training row"),
    ],
)
def test_build_rejects_bad_input(data: dict[str, Any], change: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        build_profile(**(data | change))


def test_build_rejects_bad_columns(data: dict[str, Any]) -> None:
    cols = dict(data["columns"], income=np.array(["a"] * 2000, dtype=object))
    with pytest.raises(ProfileError, match="income: numeric feature has non-numeric"):
        build_profile(**(data | {"columns": cols}))
    cols = dict(data["columns"], income=np.full(2000, np.inf))
    with pytest.raises(ProfileError, match="income: numeric values must be finite"):
        build_profile(**(data | {"columns": cols}))
    cols = dict(data["columns"], income=np.ones(5))
    with pytest.raises(ProfileError, match="income: has 5 rows"):
        build_profile(**(data | {"columns": cols}))


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(d)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format", "other", "format: must be"),
        ("version", 2, "version: unsupported 2"),
        ("rows", 0, "rows: must be a positive integer"),
        ("rows", True, "rows: must be a positive integer"),
        ("features", [], "features: must be a non-empty list"),
        ("features.0", "age", r"features\[0\]: must be an object"),
        ("features.0.name", "", r"features\[0\].name"),
        ("features.1.name", "age", r"features: duplicate names \['age'\]"),
        ("features.1.kind", "text", r"features\[1\] \(income\).kind"),
        ("features.1.edges", [2.0, 1.0], r"\(income\).edges: must be strictly increasing"),
        ("features.1.edges", ["a"], r"\(income\).edges: must be a list of numbers"),
        ("features.1.edges", [math.inf], r"\(income\).edges: must be finite"),
        ("features.1.proportions", [0.5, 0.5], r"\(income\).proportions: needs 11 entries"),
        ("features.1.proportions.0", -0.1, r"\(income\).proportions: must be non-negative"),
        ("features.1.proportions.0", 0.5, r"\(income\).proportions: .*sum to 1"),
        ("features.1.missing_share", 0.5, r"\(income\).missing_share: must equal"),
        ("features.1.allows_missing", "no", r"\(income\).allows_missing: must be true or false"),
        ("features.0.allows_missing", False, r"\(age\).allows_missing: must be true when"),
        ("features.0.mean", math.nan, r"\(age\).mean: must be a finite number"),
        ("features.0.std", -1.0, r"\(age\).std: must be non-negative"),
        ("features.2.levels", ["a", "a", "b", "c"], r"\(color\).levels: must be unique"),
        ("features.2.levels", [1, 2, 3, 4], r"\(color\).levels: must be a list of strings"),
        ("prediction", None, "prediction: must be an object"),
        ("prediction.levels", ["no"], r"prediction \(prediction\).proportions: needs 3"),
    ],
)
def test_load_names_the_bad_field(
    profile_dict: dict[str, Any], path: str, value: Any, message: str
) -> None:
    bad = _set(profile_dict, path, value)
    with pytest.raises(ProfileError, match=message):
        load_profile(bad)


def test_load_rejects_a_non_object() -> None:
    with pytest.raises(ProfileError, match="must be a JSON object, got list"):
        load_profile([])  # type: ignore[arg-type]


def test_read_profile_names_the_file(tmp_path: Path, profile_dict: dict[str, Any]) -> None:
    good = tmp_path / "profile.json"
    good.write_text(json.dumps(profile_dict))
    assert read_profile(good) == load_profile(profile_dict)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ProfileError, match=r"broken.json: cannot read profile"):
        read_profile(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_set(profile_dict, "rows", -1)))
    with pytest.raises(ProfileError, match=r"wrong.json: rows"):
        read_profile(wrong)
    with pytest.raises(ProfileError, match=r"absent.json: cannot read"):
        read_profile(tmp_path / "absent.json")


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(math.nan)),
        min_size=1,
        max_size=60,
    ),
    n_bins=st.integers(2, 12),
)
def test_any_numeric_column_gives_a_valid_profile(values: list[float], n_bins: int) -> None:
    x = np.asarray(values)
    d = build_profile({"x": x}, {"x": "numeric"}, np.zeros(len(x)), "numeric", n_bins=n_bins)
    feat = load_profile(json.loads(json.dumps(d))).feature("x")
    assert len(feat.edges) <= n_bins - 1
    counts = np.bincount(bin_numeric(np.asarray(feat.edges), x), minlength=feat.n_bins)
    assert feat.proportions == pytest.approx(counts / len(x))
