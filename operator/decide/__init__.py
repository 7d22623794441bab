"""The pure rollout engine: decide what should be; ``reconcile`` applies it."""

from mlrollout.operator.decide.engine import (
    Decision,
    Observations,
    decide,
    decide_invalid,
    plan_queries,
    wanted_revisions,
)
from mlrollout.operator.decide.lifecycle import Counter

__all__ = [
    "Counter",
    "Decision",
    "Observations",
    "decide",
    "decide_invalid",
    "plan_queries",
    "wanted_revisions",
]
