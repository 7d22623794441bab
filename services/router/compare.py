"""Shadow comparison: do the stable and the canary answers predict the same thing?

Pure and off the client path (only shadow work calls it). Responses are JSON; when both
carry a ``predictions`` (or KServe v2 ``outputs``) key only that part is compared, so
version fields, timings and request ids do not count as disagreement. Labels, integers
and booleans must be equal; floats (scores, regression outputs) may differ by
``rel_tol`` relative or ``abs_tol`` absolute.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

ShadowResult = Literal["agree", "disagree", "error", "dropped"]

PREDICTION_KEYS = ("predictions", "outputs")


def compare_bodies(
    stable: bytes, canary: bytes, rel_tol: float = 1e-3, abs_tol: float = 1e-6
) -> ShadowResult:
    """``agree`` or ``disagree`` for two JSON bodies; ``error`` if either is not JSON."""
    try:
        a, b = json.loads(stable), json.loads(canary)
        a, b = _prediction_part(a), _prediction_part(b)
        return "agree" if _same(a, b, rel_tol, abs_tol) else "disagree"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        # A backend's answer nested beyond Python's recursion limit is no prediction.
        return "error"


def _prediction_part(doc: Any) -> Any:
    if isinstance(doc, dict):
        for key in PREDICTION_KEYS:
            if key in doc:
                return doc[key]
    return doc


def _same(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            _same(x, y, rel_tol, abs_tol) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel_tol, abs_tol) for k in a)
    return type(a) is type(b) and a == b


def compare_rows(
    first: bytes, second: bytes, rel_tol: float = 1e-3, abs_tol: float = 1e-6
) -> tuple[int, int] | None:
    """``(agree, disagree)`` rows of two answers to the same request; None if not comparable.

    When both predictions are lists of the same length (one entry per row of a batch),
    each row counts once; any other pair of predictions counts as one row. Lists of
    different lengths, and answers that are not JSON, are not comparable.
    """
    try:
        a, b = _prediction_part(json.loads(first)), _prediction_part(json.loads(second))
        if isinstance(a, list) and isinstance(b, list) and not _v2_outputs(a):
            if len(a) != len(b) or not a:
                return None
            same = sum(1 for x, y in zip(a, b, strict=True) if _same(x, y, rel_tol, abs_tol))
            return same, len(a) - same
        return (1, 0) if _same(a, b, rel_tol, abs_tol) else (0, 1)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def _v2_outputs(items: list[Any]) -> bool:
    # KServe v2 ``outputs`` are tensors, not rows: compared whole.
    return bool(items) and all(isinstance(x, dict) and "data" in x for x in items)
