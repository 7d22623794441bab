"""Request validation: every accepted shape gives the same arrays; every refusal names its rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlrollout.services.model.validation import Feature, InputError, Reason, Validator

NUMERIC = Validator(
    [Feature(n, "numeric") for n in ("a", "b", "c")], max_rows=4, max_body_bytes=400
)
MIXED = Validator(
    [
        Feature("age", "numeric"),
        Feature("income", "numeric", nullable=True),
        Feature("plan", "categorical"),
        Feature("region", "categorical", nullable=True),
    ]
)


@pytest.mark.parametrize(
    "body",
    [
        b'[{"a": 1, "b": 2.5, "c": -3}]',
        b'[{"c": -3, "b": 2.5, "a": 1}]',
        b'{"records": [{"a": 1, "b": 2.5, "c": -3}]}',
        b"[[1, 2.5, -3]]",
        b'{"instances": [[1, 2.5, -3.0]]}',
    ],
)
def test_every_accepted_shape_gives_the_same_batch(body: bytes) -> None:
    batch = NUMERIC.parse(body)
    assert batch.n_rows == 1
    assert batch.numeric.dtype == np.float64
    np.testing.assert_array_equal(batch.numeric, [[1.0, 2.5, -3.0]])
    assert batch.categorical.shape == (1, 0)


def test_mixed_rows_split_by_kind_and_keep_missing() -> None:
    batch = MIXED.parse(
        b'[{"age": 30, "income": null, "plan": "pro", "region": null},'
        b' {"age": 41.5, "income": 1e4, "plan": "basic", "region": "north"}]'
    )
    assert batch.numeric.shape == (2, 2)
    assert math.isnan(batch.numeric[0, 1]) and batch.numeric[1, 1] == 1e4
    assert batch.categorical.tolist() == [["pro", None], ["basic", "north"]]


def test_single_feature_records() -> None:
    one = Validator([Feature("x", "numeric")])
    np.testing.assert_array_equal(one.parse(b'[{"x": 1}, {"x": 2}]').numeric, [[1.0], [2.0]])


BAD = [
    # body, reason, field, validator
    (b"x" * 401, Reason.BODY_TOO_LARGE, None, NUMERIC),
    (b"[{", Reason.MALFORMED_JSON, None, NUMERIC),
    (b'[{"a": NaN, "b": 1, "c": 1}]', Reason.MALFORMED_JSON, None, NUMERIC),
    (b"[[1e999, 1, 1]]", Reason.MALFORMED_JSON, None, NUMERIC),
    (b"\xff\xfe", Reason.MALFORMED_JSON, None, NUMERIC),
    (b"[" * 5000 + b"]" * 5000, Reason.MALFORMED_JSON, None, Validator([Feature("a", "numeric")])),
    (b'{"rows": []}', Reason.BAD_STRUCTURE, None, NUMERIC),
    (b'{"records": [], "instances": []}', Reason.BAD_STRUCTURE, None, NUMERIC),
    (b'"hello"', Reason.BAD_STRUCTURE, None, NUMERIC),
    (b"[1, 2, 3]", Reason.BAD_STRUCTURE, None, NUMERIC),
    (b'[{"a": 1, "b": 1, "c": 1}, [1, 1, 1]]', Reason.BAD_STRUCTURE, None, NUMERIC),
    (b"[[1, 1, 1], 7]", Reason.BAD_STRUCTURE, None, NUMERIC),
    (b"[]", Reason.EMPTY_BATCH, None, NUMERIC),
    (b'{"instances": []}', Reason.EMPTY_BATCH, None, NUMERIC),
    (b"[[1,1,1],[1,1,1],[1,1,1],[1,1,1],[1,1,1]]", Reason.BATCH_TOO_LARGE, None, NUMERIC),
    (b'[{"a": 1, "b": 1}]', Reason.MISSING_FEATURE, "c", NUMERIC),
    (b"[[1, 1]]", Reason.MISSING_FEATURE, "c", NUMERIC),
    (b'[{"a": 1, "b": 1, "c": 1, "zz": 2}]', Reason.UNKNOWN_FEATURE, "zz", NUMERIC),
    (b"[[1, 1, 1, 1]]", Reason.UNKNOWN_FEATURE, None, NUMERIC),
    (b'[{"a": "1", "b": 1, "c": 1}]', Reason.WRONG_TYPE, "a", NUMERIC),
    (b'[{"a": 1, "b": true, "c": 1}]', Reason.WRONG_TYPE, "b", NUMERIC),
    (b"[[1, 1, [1]]]", Reason.WRONG_TYPE, "c", NUMERIC),
    (b'[[1, 1, {"x": 1}]]', Reason.WRONG_TYPE, "c", NUMERIC),
    (b"[[1, 1, 1], [1, null, 1]]", Reason.MISSING_VALUE, "b", NUMERIC),
    (b'[{"age": 1, "income": 1, "plan": 3, "region": "n"}]', Reason.WRONG_TYPE, "plan", MIXED),
    (
        b'[{"age": 1, "income": 1, "plan": null, "region": "n"}]',
        Reason.MISSING_VALUE,
        "plan",
        MIXED,
    ),
    (
        b'[{"age": null, "income": 1, "plan": "p", "region": "n"}]',
        Reason.MISSING_VALUE,
        "age",
        MIXED,
    ),
    (b'[{"age": "old", "income": 1, "plan": "p", "region": "n"}]', Reason.WRONG_TYPE, "age", MIXED),
]


@pytest.mark.parametrize(("body", "reason", "field", "validator"), BAD)
def test_bad_input_names_reason_and_field(
    body: bytes, reason: Reason, field: str | None, validator: Validator
) -> None:
    with pytest.raises(InputError) as info:
        validator.parse(body)
    err = info.value
    assert (err.reason, err.field) == (reason, field)
    assert 400 <= err.status < 500
    if field is not None:
        assert repr(field) in err.message
    assert err.payload() == {"error": err.message, "reason": reason.value, "field": field}


def test_every_reason_maps_to_a_4xx() -> None:
    for reason in Reason:
        assert 400 <= InputError(reason, None, "x").status < 500


def test_too_large_statuses_are_413() -> None:
    assert InputError(Reason.BODY_TOO_LARGE, None, "x").status == 413
    assert InputError(Reason.BATCH_TOO_LARGE, None, "x").status == 413
    assert InputError(Reason.UNKNOWN_MODEL, None, "x").status == 404


def test_from_matrix_checks_values_and_shape() -> None:
    np.testing.assert_array_equal(
        NUMERIC.from_matrix(np.array([[1, 2, 3]], dtype=np.int32)).numeric, [[1, 2, 3]]
    )
    with pytest.raises(InputError) as info:
        NUMERIC.from_matrix(np.array([[1.0, np.inf, 3.0]]))
    assert (info.value.reason, info.value.field) == (Reason.WRONG_TYPE, "b")
    with pytest.raises(InputError) as info:
        NUMERIC.from_matrix(np.array([[1.0, 2.0, np.nan]]))
    assert (info.value.reason, info.value.field) == (Reason.MISSING_VALUE, "c")
    with pytest.raises(InputError) as info:
        NUMERIC.from_matrix(np.ones((1, 4)))
    assert info.value.reason is Reason.BAD_STRUCTURE


def test_mixed_models_refuse_a_single_matrix() -> None:
    with pytest.raises(InputError) as info:
        MIXED.from_matrix(np.ones((1, 4)))
    assert info.value.reason is Reason.BAD_STRUCTURE


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Validator([Feature("a", "numeric")], max_rows=0)
    with pytest.raises(ValueError, match="at least one feature"):
        Validator([])


# Within float32 range: beyond it is refused (tests/unit/test_qa_serving.py).
finite = st.floats(min_value=-1e38, max_value=1e38, width=64)
cell = st.one_of(
    finite, st.integers(-(2**53), 2**53), st.none(), st.booleans(), st.text(max_size=3)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(cell, min_size=0, max_size=4), min_size=0, max_size=5))
def test_fast_and_slow_paths_agree_on_arbitrary_rows(rows: list[list[object]]) -> None:
    """Whatever the rows, parse either accepts exactly the all-number rows or raises InputError."""
    body = json.dumps({"instances": rows}).encode()
    valid = (
        0 < len(rows) <= 4
        and all(len(r) == 3 for r in rows)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for r in rows for v in r)
    )
    if valid:
        # rapidjson's native number mode may round the last bit of a double (validation.py).
        expected = np.array(rows, dtype=float)
        np.testing.assert_allclose(NUMERIC.parse(body).numeric, expected, rtol=5e-16, atol=0)
    else:
        with pytest.raises(InputError):
            NUMERIC.parse(body)


def test_a_misspelled_feature_is_unknown_with_the_closest_name() -> None:
    """Issue 13: `alcohl` was reported only as "alcohol is missing"."""
    wine = Validator([Feature(n, "numeric") for n in ("alcohol", "ash", "hue")])
    with pytest.raises(InputError) as info:
        wine.parse(b'[{"alcohl": 13.1, "ash": 2.3, "hue": 1.0}]')
    err = info.value
    assert (err.reason, err.field) == (Reason.UNKNOWN_FEATURE, "alcohl")
    assert "unknown feature 'alcohl' (did you mean 'alcohol'?)" in err.message
    with pytest.raises(InputError) as info:
        wine.from_columns({"alcohl": [1.0], "ash": [1.0], "hue": [1.0]})
    assert "did you mean 'alcohol'?" in info.value.message
