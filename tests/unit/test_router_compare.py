"""Shadow comparison of stable and canary answers."""

from __future__ import annotations

import pytest
from mlrollout.services.router.compare import compare_bodies, compare_rows


@pytest.mark.parametrize(
    ("stable", "canary", "expected"),
    [
        (b'{"predictions": [1, 0]}', b'{"predictions": [1, 0]}', "agree"),
        (b'{"predictions": [1, 0]}', b'{"predictions": [1, 2]}', "disagree"),
        (b'{"predictions": [1]}', b'{"predictions": [1, 1]}', "disagree"),
        # Only the predictions count, not versions or other metadata.
        (
            b'{"predictions": ["a"], "version": "v1"}',
            b'{"predictions": ["a"], "version": "v2"}',
            "agree",
        ),
        (b'{"outputs": [{"data": [0.5]}]}', b'{"outputs": [{"data": [0.5000001]}]}', "agree"),
        (b'{"predictions": [0.5]}', b'{"predictions": [0.6]}', "disagree"),
        (b'{"predictions": [1]}', b'{"predictions": [1.0]}', "agree"),
        (b'{"predictions": [true]}', b'{"predictions": [1]}', "disagree"),
        (b'{"predictions": [1.0]}', b'{"predictions": ["1.0"]}', "disagree"),
        (b'{"predictions": {"a": 1}}', b'{"predictions": {"b": 1}}', "disagree"),
        (b"[1, 2]", b"[1, 2]", "agree"),
        (b'{"predictions": [1]}', b"not json", "error"),
        (b"\xff", b"[1]", "error"),
    ],
)
def test_compare(stable: bytes, canary: bytes, expected: str) -> None:
    assert compare_bodies(stable, canary) == expected


@pytest.mark.parametrize(
    ("stable", "canary", "expected"),
    [
        (b'{"predictions": [1, 0, 1]}', b'{"predictions": [1, 1, 1]}', (2, 1)),
        (b'{"predictions": [0.5, 2.0]}', b'{"predictions": [0.5004, 2.1]}', (1, 1)),
        (b'{"predictions": "a"}', b'{"predictions": "a"}', (1, 0)),
        (b'{"predictions": [[1, 2]]}', b'{"predictions": [[1, 3]]}', (0, 1)),
        # KServe v2 outputs are tensors: one comparison for the whole answer.
        (b'{"outputs": [{"data": [1, 2]}]}', b'{"outputs": [{"data": [1, 2]}]}', (1, 0)),
        (b'{"predictions": [1, 0]}', b'{"predictions": [1]}', None),
        (b'{"predictions": []}', b'{"predictions": []}', None),
        (b'{"predictions": [1]}', b"oops", None),
    ],
)
def test_compare_rows(stable: bytes, canary: bytes, expected: tuple[int, int] | None) -> None:
    assert compare_rows(stable, canary) == expected


def test_compare_rows_tolerance_is_a_parameter() -> None:
    assert compare_rows(b"[1.0]", b"[1.05]", rel_tol=0.1) == (1, 0)
    assert compare_rows(b"[1.0]", b"[1.05]", rel_tol=0.01) == (0, 1)
