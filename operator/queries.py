"""PromQL for canary analysis, built from the spec (pure).

Series are selected by ``deployment``, ``namespace`` and ``version``; never by ``track``,
because a promoted canary keeps its start-up track label (docs/architecture.md). Each
query has a fixed name; ``decide/analysis.py`` reads results back by these names.
"""

from __future__ import annotations

from mlrollout.operator.model import Analysis, parse_duration
from mlrollout.services import metric_names as n

# Endpoints that carry model traffic; feedback calls are not predictions.
PREDICT_ENDPOINTS = "predict|infer"

FRESHNESS = "freshness"
REQUESTS = "requests.{track}"
ERRORS = "errors.{track}"
LATENCY = "latency.{track}"
INPUT_PSI = "inputPsi.{track}"
DRIFT_WINDOWS = "driftWindows.canary"
PREDICTION_BINS = "predictionBins.{track}"
FEEDBACK = "feedback.{track}"
CUSTOM = "custom.{name}"
AGREEMENT = "agreement"
# The router's paired comparisons, per row (docs/metrics.md).
AGREEMENT_SERIES = n.total(n.ROUTER_AGREEMENT)
STABLE_DRIFT_PSI = "stableDrift.psi"
STABLE_DRIFT_ALARM = "stableDrift.alarm"


def quote(value: str) -> str:
    """A PromQL string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(deployment: str, namespace: str, version: str, **extra: str) -> str:
    labels = {"deployment": deployment, "namespace": namespace, "version": version}
    labels.update(extra)
    return "{" + ",".join(f"{k}={quote(v)}" for k, v in labels.items()) + "}"


def _regex(label: str, pattern: str) -> str:
    return f"{label}=~{quote(pattern)}"


def promql_duration(text: str) -> str:
    """A spec duration as whole PromQL seconds (at least 1s)."""
    return f"{max(1, round(parse_duration(text)))}s"


def render_custom(query: str, *, deployment: str, namespace: str, version: str) -> str:
    """Fill a custom check's placeholders; ``{{track}}`` is always the canary's."""
    values = {
        "deployment": deployment,
        "namespace": namespace,
        "version": version,
        "track": "canary",
    }
    for name, value in values.items():
        query = query.replace("{{" + name + "}}", value).replace("{{ " + name + " }}", value)
    return query


def freshness_query(analysis: Analysis, canary_selector: str) -> str:
    """Seconds since the canary's last scrape.

    A scrape that stops (target gone, series dropped) leaves stale markers, so a plain
    ``timestamp(selector)`` goes empty at once and would read as "never scraped" (noData,
    held forever). The subquery remembers the last sample over a horizon long enough for
    ``onProviderError.maxHold`` to run out; the plain selector still answers for series
    younger than one subquery step.
    """
    staleness = parse_duration(analysis.max_staleness)
    horizon = max(3600, round(parse_duration(analysis.on_provider_error.max_hold) + 2 * staleness))
    step = min(30, max(1, round(staleness / 4)))
    ready = f"timestamp({n.MODEL_READY}{canary_selector})"
    return f"time() - max({ready} or max_over_time({ready}[{horizon}s:{step}s]))"


def stable_drift_queries(deployment: str, namespace: str, stable_version: str) -> dict[str, str]:
    """Input drift of the stable revision, reported as a condition (never a gate)."""
    sel = selector(deployment, namespace, stable_version)
    return {
        STABLE_DRIFT_PSI: f"max by (feature) ({n.DRIFT_PSI}{sel})",
        STABLE_DRIFT_ALARM: f"max by (feature) ({n.DRIFT_ALARM}{sel})",
    }
