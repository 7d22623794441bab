"""Each analysis check's limits as the spec wrote them, with units (pure).

Verdicts carry one number as ``threshold`` (the limit that decided, e.g. the latency bound
after the ratio to stable was applied). A reader needs the rule too: ``latency`` is judged
against ``p95 <= 1s and <= 1.5x stable``; ``feedbackAccuracy`` against ``>= 0.9`` and a
largest drop versus stable. Used by ``mlrollout get`` and the live display of ``dev``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlrollout.operator.model import Analysis
from pydantic import ValidationError


def _g(x: float) -> str:
    return f"{x:g}"


def seconds(value: float) -> str:
    """A duration in seconds with a readable unit: 0.0123 -> ``12.3ms``."""
    if value == 0:
        return "0s"
    if abs(value) < 1:
        return f"{value * 1000:.3g}ms"
    return f"{value:.3g}s"


def check_limits(analysis: Analysis) -> dict[str, str]:
    """Check name -> its limits as written in the spec, for every check the spec enables."""
    m = analysis.metrics
    out: dict[str, str] = {}
    if m.error_rate.enabled:
        out["errorRate"] = f"<= {_g(m.error_rate.max_rate)} (errors/requests)"
        out["errorRateVsStable"] = (
            f"no increase over stable; passes at a bound <= +{_g(m.error_rate.max_increase)} "
            f"(alpha {_g(analysis.alpha)} per rollout)"
        )
    if m.latency.enabled:
        text = f"p{m.latency.quantile * 100:g} <= {seconds(m.latency.max_seconds)}"
        if m.latency.max_ratio is not None:
            text += f" and <= {_g(m.latency.max_ratio)}x stable"
        out["latency"] = text
    if m.input_drift is not None and m.input_drift.enabled:
        out["inputDrift"] = f"PSI excess over stable <= {_g(m.input_drift.max_psi_increase)}"
    if m.prediction_drift is not None and m.prediction_drift.enabled:
        out["predictionDrift"] = f"PSI vs stable <= {_g(m.prediction_drift.max_psi)}"
    fa = m.feedback_accuracy
    if fa is not None and fa.enabled:
        parts = []
        if fa.min_accuracy is not None:
            parts.append(f">= {_g(fa.min_accuracy)}")
        parts.append(f"drop vs stable <= {_g(fa.max_decrease)}")
        out["feedbackAccuracy"] = ", ".join(parts) + f" ({fa.min_samples}+ feedback)"
    if m.agreement is not None and m.agreement.enabled:
        out["agreement"] = f">= {_g(m.agreement.min)} of mirrored rows"
    for c in m.custom:
        if c.min_value is not None and c.max_value is not None:
            out[c.name] = f"in [{_g(c.min_value)}, {_g(c.max_value)}]"
        elif c.min_value is not None:
            out[c.name] = f">= {_g(c.min_value)}"
        elif c.max_value is not None:
            out[c.name] = f"<= {_g(c.max_value)}"
    return out


def limits_from_spec(spec: Mapping[str, Any] | None) -> dict[str, str]:
    """Like :func:`check_limits` from a raw (camelCase) spec; empty when it does not parse."""
    raw = ((spec or {}).get("rollout") or {}).get("analysis") or {}
    try:
        return check_limits(Analysis.model_validate(raw))
    except (ValidationError, TypeError, ValueError):
        return {}


def format_value(check: str, value: float | None) -> str:
    """A check's observed value with its unit (latency in s/ms, the rest plain)."""
    if value is None:
        return "n/a"
    if check == "latency":
        return seconds(value)
    if check.endswith("VsStable"):
        return f"{value:+.4g}"
    if value != 0 and (abs(value) < 0.001 or abs(value) >= 10_000):
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
