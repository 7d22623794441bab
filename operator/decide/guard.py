"""The router guard, operator side (pure): what the routing table asks of the router, and
how a trip the router reports becomes the canary's rollback verdict.

The router runs the tests (``mlrollout.services.router.guard``); the operator writes their
parameters into the table and, when the router reports that it took the canary to weight
0, records the rollback with a verdict naming the guard (check ``routerGuard``). A trip
counts only for the canary it names (version and URL): a report left over from an earlier
canary, or from an earlier try of the same version at another address, is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlrollout.operator.model import ModelDeploymentSpec, Verdict

CHECK = "routerGuard"
DEFAULT_ALPHA = 0.01
# How often the operator looks for a trip while a canary runs (its analysis interval may
# be minutes): the router has already taken the canary off; this bounds how late the
# rollback is recorded (status, events, the table without the canary).
RECHECK_SECONDS = 5.0


def watching(spec: ModelDeploymentSpec) -> bool:
    """Whether the router guards this deployment's canary."""
    return spec.traffic.router == "builtin" and spec.traffic.guard.enabled


def rollout_alpha(spec: ModelDeploymentSpec) -> float:
    """The rollout's false-rollback budget (``rollout.analysis.alpha`` where the spec has it)."""
    value = getattr(spec.rollout.analysis, "alpha", None)
    return float(value) if isinstance(value, int | float) else DEFAULT_ALPHA


def min_agreement(spec: ModelDeploymentSpec) -> float | None:
    """``rollout.analysis.metrics.agreement.min`` when that check is on, else None."""
    check = getattr(spec.rollout.analysis.metrics, "agreement", None)
    if check is None or not getattr(check, "enabled", False):
        return None
    value = getattr(check, "min", None)
    return float(value) if isinstance(value, int | float) and 0 < value < 1 else None


def table_options(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The ``agreement`` and ``guard`` keys of the routing table for ``spec``.

    The guard's alpha defaults to half the rollout's: the other half is the operator's
    analysis, so a canary no worse than stable is rolled back with probability at most
    ``rollout.analysis.alpha`` by both together (each guard test takes the same share; a
    router with several replicas multiplies it, see docs/routing.md).
    """
    traffic = spec.traffic
    out: dict[str, Any] = {"agreement": None, "guard": None}
    if traffic.router != "builtin":
        return out
    mirror = traffic.agreement
    if mirror is not None and mirror.percent > 0:
        out["agreement"] = {
            "percent": mirror.percent,
            "source": mirror.source,
            "relTol": mirror.relative_tolerance,
            "absTol": mirror.absolute_tolerance,
        }
    guard = traffic.guard
    if guard.enabled:
        agreement = min_agreement(spec)
        tests = 2 if agreement is not None else 1
        alpha = guard.alpha if guard.alpha is not None else rollout_alpha(spec) / 2 / tests
        doc: dict[str, Any] = {"alpha": alpha, "maxRatio": guard.max_ratio}
        if agreement is not None:
            doc["minAgreement"] = agreement
        out["guard"] = doc
    return out


def trip_of(
    report: Mapping[str, Any] | None, canary_version: str, canary_url: str | None
) -> Mapping[str, Any] | None:
    """The trip in the router's guard report if it names this canary, else None."""
    if not isinstance(report, Mapping):
        return None
    trip = report.get("trip")
    if not isinstance(trip, Mapping):
        return None
    if trip.get("canaryVersion") != canary_version:
        return None
    if canary_url is not None and trip.get("canaryUrl") not in (None, canary_url):
        return None
    return trip


def verdict(trip: Mapping[str, Any]) -> Verdict:
    """The rollback verdict for a trip: the router's test, evidence and threshold."""
    evidence = trip.get("evidence") if isinstance(trip.get("evidence"), Mapping) else {}
    assert isinstance(evidence, Mapping)
    test = str(trip.get("test", "errors"))
    samples = evidence.get("canaryRequests") if test == "errors" else None
    if test == "agreement":
        samples = _int(evidence.get("agreeRows")) + _int(evidence.get("disagreeRows"))
    message = str(trip.get("message") or f"router guard tripped ({test})")
    return Verdict(
        check=CHECK,
        outcome="fail",
        value=_float(trip.get("eValue")),
        threshold=_float(trip.get("threshold")),
        samples=_int(samples) if samples is not None else None,
        message=f"{message}; alpha {_float(trip.get('alpha'))}, anytime-valid",
    )


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0
