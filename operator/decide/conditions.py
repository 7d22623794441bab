"""Kubernetes-style conditions on the status (pure)."""

from __future__ import annotations

from datetime import datetime

from mlrollout.operator.model import Condition, ConditionStatus, ModelDeploymentStatus


def set_condition(
    status: ModelDeploymentStatus,
    now: datetime,
    type_: str,
    value: ConditionStatus,
    reason: str,
    message: str,
) -> bool:
    """Set a condition in place; True when its status changed.

    lastTransitionTime moves only when the status value changes, as Kubernetes expects;
    reason and message follow the latest observation.
    """
    for i, cond in enumerate(status.conditions):
        if cond.type == type_:
            changed = cond.status != value
            status.conditions[i] = Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now if changed else cond.last_transition_time,
            )
            return changed
    status.conditions.append(
        Condition(
            type=type_, status=value, reason=reason, message=message, last_transition_time=now
        )
    )
    return True


def get_condition(status: ModelDeploymentStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)
