"""The routing table's ``agreement`` and ``guard`` objects: parsing and validation (pure).

``agreement``: mirror a sampled share of one track's requests to the other track and
compare the two predictions row by row (``docs/routing.md``, Paired agreement).
``guard``: the router's own sequential tests (``guard.py``).
Both are optional; absent or ``null`` means off. Problems are appended to ``problems``
so that ``parse_table`` reports every one in one message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

MirrorSource = Literal["canary", "stable"]


@dataclass(frozen=True)
class AgreementSpec:
    percent: float
    source: MirrorSource = "canary"
    rel_tol: float = 1e-3
    abs_tol: float = 1e-6


@dataclass(frozen=True)
class GuardSpec:
    alpha: float = 0.01
    max_ratio: float = 1.0
    min_agreement: float | None = None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_agreement(value: Any, problems: list[str]) -> AgreementSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(
            f'agreement must be an object such as {{"percent": 10}} or null, got {value!r}'
        )
        return None
    before = len(problems)
    percent: Any = value.get("percent")
    if not _number(percent) or not 0 <= percent <= 100:
        problems.append(f"agreement.percent must be a number in 0..100, got {percent!r}")
    source = value.get("source", "canary")
    if source not in ("canary", "stable"):
        problems.append(f"agreement.source must be canary or stable, got {source!r}")
    rel = value.get("relTol", 1e-3)
    if not _number(rel) or rel < 0:
        problems.append(f"agreement.relTol must be a number >= 0, got {rel!r}")
    absolute = value.get("absTol", 1e-6)
    if not _number(absolute) or absolute < 0:
        problems.append(f"agreement.absTol must be a number >= 0, got {absolute!r}")
    if len(problems) > before:
        return None
    return AgreementSpec(float(percent), source, float(rel), float(absolute))


def parse_guard(value: Any, problems: list[str]) -> GuardSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f'guard must be an object such as {{"alpha": 0.01}} or null, got {value!r}')
        return None
    before = len(problems)
    alpha = value.get("alpha", 0.01)
    if not _number(alpha) or not 0 < alpha < 1:
        problems.append(f"guard.alpha must be a number in (0, 1), got {alpha!r}")
    ratio = value.get("maxRatio", 1.0)
    if not _number(ratio) or not 1 <= ratio <= 1e6:
        problems.append(f"guard.maxRatio must be a number in 1..1e6, got {ratio!r}")
    agreement = value.get("minAgreement")
    if agreement is not None and (not _number(agreement) or not 0 < agreement < 1):
        problems.append(f"guard.minAgreement must be a number in (0, 1) or null, got {agreement!r}")
    if len(problems) > before:
        return None
    return GuardSpec(float(alpha), float(ratio), None if agreement is None else float(agreement))
