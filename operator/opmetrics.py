"""The operator's own Prometheus metrics (names in docs/architecture.md), served on a port.

Series carry ``namespace`` and ``deployment``. The phase is a one-hot gauge so that
``mlrollout_operator_phase{phase="RolledBack"} == 1`` is a plain alert rule.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

from mlrollout.operator.model import Phase
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()
_L = ("namespace", "deployment")

PHASE = Gauge(
    "mlrollout_operator_phase", "1 for the current phase", [*_L, "phase"], registry=REGISTRY
)
CANARY_WEIGHT = Gauge(
    "mlrollout_operator_canary_weight", "canary traffic percent in force", _L, registry=REGISTRY
)
ROLLBACKS = Counter("mlrollout_operator_rollbacks", "canaries rolled back", _L, registry=REGISTRY)
PROMOTIONS = Counter("mlrollout_operator_promotions", "canaries promoted", _L, registry=REGISTRY)
VERDICTS = Counter(
    "mlrollout_operator_verdicts", "analysis verdicts", [*_L, "check", "result"], registry=REGISTRY
)
ANALYSIS_ERRORS = Counter(
    "mlrollout_operator_analysis_errors",
    "reconcile runs that failed (API or provider errors)",
    _L,
    registry=REGISTRY,
)

_started = threading.Lock()
_server_port: int | None = None


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics endpoint once (later calls are no-ops); port 0 disables it."""
    global _server_port
    with _started:
        if port and _server_port is None:
            start_http_server(port, addr=addr, registry=REGISTRY)
            _server_port = port


def observe(namespace: str, deployment: str, phase: str, canary_weight: int) -> None:
    for p in Phase:
        PHASE.labels(namespace, deployment, p.value).set(1.0 if p.value == phase else 0.0)
    CANARY_WEIGHT.labels(namespace, deployment).set(canary_weight)


def count(
    namespace: str, deployment: str, name: str, labels: Mapping[str, str], value: float
) -> None:
    """Apply one engine counter (``decide.Counter``); names without a metric are ignored.

    Promotions and rollbacks are counted from status history instead (:func:`outcomes`),
    so they are right whatever the engine reports.
    """
    short = name.removeprefix("mlrollout_operator_")
    if short == "analysis_errors_total":
        ANALYSIS_ERRORS.labels(namespace, deployment).inc(value)
    elif short == "verdicts_total":
        check, result = labels.get("check", ""), labels.get("result", "")
        VERDICTS.labels(namespace, deployment, check, result).inc(value)


def outcomes(namespace: str, deployment: str, promoted: int, rolled_back: int) -> None:
    if promoted:
        PROMOTIONS.labels(namespace, deployment).inc(promoted)
    if rolled_back:
        ROLLBACKS.labels(namespace, deployment).inc(rolled_back)


def analysis_error(namespace: str, deployment: str) -> None:
    ANALYSIS_ERRORS.labels(namespace, deployment).inc()


def forget(namespace: str, deployment: str) -> None:
    """Drop a deleted deployment's series so dashboards do not show ghosts."""
    for metric in (CANARY_WEIGHT, ROLLBACKS, PROMOTIONS, ANALYSIS_ERRORS):
        with contextlib.suppress(KeyError):
            metric.remove(namespace, deployment)
    for metric in (PHASE, VERDICTS):
        for labels in [s for s in _label_sets(metric) if s[:2] == (namespace, deployment)]:
            metric.remove(*labels)


def _label_sets(metric: Gauge | Counter) -> list[tuple[str, ...]]:
    # prometheus_client keeps children in a private dict; there is no public lister.
    return list(getattr(metric, "_metrics", {}).keys())
