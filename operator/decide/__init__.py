"""The pure rollout engine: decide what should be; ``reconcile`` applies it."""

from mlrollout.operator.decide.engine import Decision, decide, decide_invalid
from mlrollout.operator.decide.lifecycle import Counter
from mlrollout.operator.decide.plan import Observations, plan_queries, wanted_revisions

__all__ = [
    "Counter",
    "Decision",
    "Observations",
    "decide",
    "decide_invalid",
    "plan_queries",
    "wanted_revisions",
]
