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
