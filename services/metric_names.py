"""The Prometheus metric names the operator reads, defined once: the model server
(``metrics.py``) and the router (``router/metrics.py``) expose them, the operator's PromQL
(``operator/queries.py``, ``decide/checks.py``) reads them, so a rename cannot drift.

Counters are named without ``_total`` (``prometheus_client`` adds it on exposition); the
series a query selects are ``total(NAME)`` and, for histograms, ``bucket(NAME)``.
Labels on every series: ``LABELS`` (docs/architecture.md, Metric names).
"""

from __future__ import annotations

LABELS: tuple[str, ...] = ("deployment", "model", "version", "track")

MODEL_REQUESTS = "mlrollout_model_requests"  # counter: endpoint, outcome
MODEL_REQUEST_DURATION = "mlrollout_model_request_duration_seconds"  # histogram: endpoint
MODEL_ROWS = "mlrollout_model_rows"  # counter
MODEL_INPUT_VIOLATIONS = "mlrollout_model_input_violations"  # counter: reason
MODEL_HTTP_REFUSALS = "mlrollout_model_http_refusals"  # counter: reason
MODEL_PREDICTIONS = "mlrollout_model_predictions"  # counter: class
MODEL_READY = "mlrollout_model_ready"  # gauge
MODEL_INFO = "mlrollout_model_info"  # gauge: sha256
FEEDBACK = "mlrollout_feedback"  # counter: outcome
FEEDBACK_ABS_ERROR = "mlrollout_feedback_abs_error"  # summary
FEEDBACK_SQUARED_ERROR = "mlrollout_feedback_squared_error"  # summary
FEEDBACK_STORE_BYTES = "mlrollout_feedback_store_bytes"  # gauge
FEEDBACK_STORE_CAPACITY_BYTES = "mlrollout_feedback_store_capacity_bytes"  # gauge

DRIFT_BIN = "mlrollout_drift_bin"  # counter: feature, bin
DRIFT_PSI = "mlrollout_drift_psi"  # gauge: feature
DRIFT_STATISTIC = "mlrollout_drift_statistic"  # gauge: feature
DRIFT_ALARM = "mlrollout_drift_alarm"  # gauge: feature
DRIFT_WINDOWS = "mlrollout_drift_windows"  # counter
PREDICTION_BIN = "mlrollout_prediction_bin"  # counter: bin
PREDICTION_PSI = "mlrollout_prediction_psi"  # gauge
PREDICTION_DRIFT_ALARM = "mlrollout_prediction_drift_alarm"  # gauge

# The router's series the operator reads (the rest are in services/router/metrics.py).
ROUTER_AGREEMENT = "mlrollout_router_agreement"  # counter: source, result


def total(counter: str) -> str:
    """The exposed series of a counter."""
    return f"{counter}_total"


def bucket(histogram: str) -> str:
    """The exposed bucket series of a histogram."""
    return f"{histogram}_bucket"
