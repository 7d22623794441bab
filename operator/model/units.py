"""Units in the spec (pure): Go-style durations (``30s``, ``1h30m``, ``manual`` pauses) and
Kubernetes quantities (``500m``, ``1.5Gi``), each parsed exactly as the API server would
and refused with a clear message otherwise; integers as JSON sends them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
)
from pydantic.json_schema import WithJsonSchema

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


_DURATION_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h)")


_UNIT_NANOS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


MANUAL = "manual"


# Go's time.Duration is an int64 of nanoseconds: 2562047h47m16.854775807s at most. The API
# server's CEL duration() refuses longer ones, so the models do too.
MAX_DURATION_NANOS = 2**63 - 1


MAX_DURATION_TEXT = "2562047h47m16.854775807s"


def go_duration_nanos(text: str) -> int:
    """Nanoseconds in ``text`` exactly as Go's ``time.ParseDuration`` computes them (integer
    part times the unit, plus the fraction scaled in float64 and truncated), refusing what
    overflows an int64. Only the grammar of ``DURATION_PATTERN`` is accepted."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    total = 0
    for whole, fraction, unit_name in _DURATION_PART.findall(text):
        unit = _UNIT_NANOS[unit_name]
        value = int(whole)
        if value > (1 << 63) // unit:
            raise _too_long(text)
        value *= unit
        if fraction:
            # Go keeps the leading fraction digits while they fit in an int64.
            f, scale = 0, 1.0
            for digit in fraction:
                if f > ((1 << 63) - 1) // 10 or f * 10 + int(digit) > 1 << 63:
                    break
                f, scale = f * 10 + int(digit), scale * 10
            value += int(float(f) * (float(unit) / scale))
            if value > 1 << 63:
                raise _too_long(text)
        total += value
        if total > 1 << 63:
            raise _too_long(text)
    if total > MAX_DURATION_NANOS:
        raise _too_long(text)
    return total


def _too_long(text: str) -> ValueError:
    return ValueError(f"invalid duration {text!r}: longer than Go allows ({MAX_DURATION_TEXT})")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``5m`` or ``1h30m`` (Go/Prometheus style)."""
    return go_duration_nanos(text) / 1e9


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _pause(value: str) -> str:
    if value != MANUAL and not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(
            f"invalid pause {value!r}: use a duration (e.g. 30s, 5m, 1h30m) or 'manual'"
        )
    return value


# A duration field: the CRD keeps the pattern (the API server checks it); local mode and the
# operator say what to write ("use e.g. 30s, 5m, 1h30m") instead of showing the regex.
Duration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]


PAUSE_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h))+|manual)$"


Pause = Annotated[
    str, AfterValidator(_pause), WithJsonSchema({"type": "string", "pattern": PAUSE_PATTERN})
]


_MAX_SAFE_FLOAT_INT = 2**53 - 1


def _json_integer(value: object) -> object:
    """Integers as the API server takes them: int64, or a whole float within 2^53."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_FLOAT_INT:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError("integer out of the 64-bit range")
    return value


Int = Annotated[int, BeforeValidator(_json_integer)]


# Kubernetes quantities as strings ("500m", "1.5Gi", "1e9"); the API server refuses others
# only when the operator creates the Deployment, too late for a clear status.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"


_QUANTITY = re.compile(QUANTITY_PATTERN)


_SUFFIX = {
    **{"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0},
    **{s: 1000.0**i for i, s in enumerate("kMGTPE", 1)},
    **{s + "i": 1024.0**i for i, s in enumerate("KMGTPE", 1)},
}


_EXACT_SUFFIX = {
    **{"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)},
    **{s: Decimal(1000) ** i for i, s in enumerate("kMGTPE", 1)},
    **{s + "i": Decimal(1024) ** i for i, s in enumerate("KMGTPE", 1)},
}


def quantity_value(text: str) -> Decimal:
    """The exact value of a Kubernetes quantity, for comparisons as the API server makes them."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}: use e.g. 500m, 2, 256Mi, 1Gi")
    number, suffix = match.group(1), match.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return Decimal(number + suffix)
    factor = _EXACT_SUFFIX[suffix]
    return Decimal(number) * factor


def parse_quantity(text: str) -> float:
    """The value of a Kubernetes quantity ("500m" -> 0.5, "1Gi" -> 1073741824.0)."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}: use e.g. 500m, 2, 256Mi, 1Gi")
    number, suffix = match.group(1), match.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return float(number + suffix)
    return float(number) * _SUFFIX[suffix]


QUANTITY_MAX_LENGTH = 64


def _quantity(text: str) -> str:
    if len(text) > QUANTITY_MAX_LENGTH:
        raise ValueError(f"quantity is longer than {QUANTITY_MAX_LENGTH} characters")
    parse_quantity(text)
    return text


def _quantity_text(value: object) -> object:
    # YAML users write `cpu: 2` and `nvidia.com/gpu: 1`, as in any Deployment; a negative
    # number becomes "-1", which the pattern refuses (the CRD's CEL rule refuses the integer).
    value = _json_integer(value)
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# In the CRD: int-or-string with the pattern (the shape Kubernetes uses for quantities);
# locally the validator gives the clearer message.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
        }
    ),
]
