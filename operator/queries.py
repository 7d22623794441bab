"""PromQL for canary analysis, built from the spec (pure).

Series are selected by ``deployment``, ``namespace`` and ``version``; never by ``track``,
because a promoted canary keeps its start-up track label (docs/architecture.md). Each
query has a fixed name; ``decide/analysis.py`` reads results back by these names.
"""

from __future__ import annotations

from mlrollout.operator.model import Analysis, parse_duration

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
    ready = f"timestamp(mlrollout_model_ready{canary_selector})"
    return f"time() - max({ready} or max_over_time({ready}[{horizon}s:{step}s]))"


def analysis_queries(
    analysis: Analysis, deployment: str, namespace: str, stable_version: str, canary_version: str
) -> dict[str, str]:
    """Every query one analysis run needs, by name."""
    window = promql_duration(analysis.window)
    versions = {"stable": stable_version, "canary": canary_version}
    metrics = analysis.metrics
    out: dict[str, str] = {}

    def sel(track: str) -> str:
        return selector(deployment, namespace, versions[track])

    canary = sel("canary")
    out[FRESHNESS] = freshness_query(analysis, canary)
    for track in ("stable", "canary"):
        base = sel(track)[:-1] + "," + _regex("endpoint", PREDICT_ENDPOINTS) + "}"
        out[REQUESTS.format(track=track)] = (
            f"sum(increase(mlrollout_model_requests_total{base}[{window}]))"
        )
        errors = base[:-1] + ',outcome="server_error"}'
        out[ERRORS.format(track=track)] = (
            f"sum(increase(mlrollout_model_requests_total{errors}[{window}]))"
        )
        if metrics.latency.enabled:
            out[LATENCY.format(track=track)] = (
                f"histogram_quantile({metrics.latency.quantile}, sum by (le) "
                f"(increase(mlrollout_model_request_duration_seconds_bucket{base}[{window}])))"
            )
        if metrics.input_drift is not None and metrics.input_drift.enabled:
            out[INPUT_PSI.format(track=track)] = (
                f"max by (feature) (mlrollout_drift_psi{sel(track)})"
            )
        if metrics.prediction_drift is not None and metrics.prediction_drift.enabled:
            out[PREDICTION_BINS.format(track=track)] = (
                f"sum by (bin) (increase(mlrollout_prediction_bin_total{sel(track)}[{window}]))"
            )
        if metrics.feedback_accuracy is not None and metrics.feedback_accuracy.enabled:
            out[FEEDBACK.format(track=track)] = (
                f"sum by (outcome) (increase(mlrollout_feedback_total{sel(track)}[{window}]))"
            )
    if metrics.input_drift is not None and metrics.input_drift.enabled:
        out[DRIFT_WINDOWS] = f"sum(mlrollout_drift_windows_total{canary})"
    for check in metrics.custom:
        out[CUSTOM.format(name=check.name)] = render_custom(
            check.query, deployment=deployment, namespace=namespace, version=canary_version
        )
    return out


def stable_drift_queries(deployment: str, namespace: str, stable_version: str) -> dict[str, str]:
    """Input drift of the stable revision, reported as a condition (never a gate)."""
    sel = selector(deployment, namespace, stable_version)
    return {
        STABLE_DRIFT_PSI: f"max by (feature) (mlrollout_drift_psi{sel})",
        STABLE_DRIFT_ALARM: f"max by (feature) (mlrollout_drift_alarm{sel})",
    }
