"""Analysis runs: verdicts from query results, and the run's outcome (pure).

The checks themselves (queries, test, verdict) live in ``checks.py``, one object each.
Rules common to all of them:

- a query that failed, or metrics older than ``maxStaleness`` -> providerError;
- no data yet -> noData; data that does not yet decide -> inconclusive (never a pass);
- otherwise the check's test decides pass or fail.

The run's outcome is the worst verdict in the order
fail > providerError > inconclusive > noData > pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mlrollout.operator import queries as q
from mlrollout.operator.decide.checks import Context, Unavailable, by_label, evaluate
from mlrollout.operator.interfaces import ProviderError, Sample
from mlrollout.operator.model import ConditionStatus, Outcome, Verdict

Results = Mapping[str, Sequence[Sample] | ProviderError]

__all__ = ["Context", "evaluate", "run_outcome", "stable_input_drift"]

_SEVERITY: dict[str, int] = {
    "pass": 0,
    "noData": 1,
    "inconclusive": 2,
    "providerError": 3,
    "fail": 4,
}


def run_outcome(verdicts: Sequence[Verdict]) -> Outcome:
    """The worst outcome among ``verdicts`` (pass when there are none)."""
    worst: Outcome = "pass"
    for v in verdicts:
        if _SEVERITY[v.outcome] > _SEVERITY[worst]:
            worst = v.outcome
    return worst


def stable_input_drift(results: Results) -> tuple[ConditionStatus, str, str] | None:
    """(condition status, reason, message) for the stable revision's input drift.

    None when the drift queries were not run this time.
    """
    if q.STABLE_DRIFT_ALARM not in results:
        return None
    try:
        alarms = by_label(results, q.STABLE_DRIFT_ALARM, "feature")
        psis = by_label(results, q.STABLE_DRIFT_PSI, "feature")
    except Unavailable as exc:
        return "Unknown", "ProviderError", str(exc)
    if not alarms:
        return "Unknown", "NoDriftMetrics", "stable exports no drift metrics yet"
    drifting = sorted(f for f, v in alarms.items() if v >= 1)
    if not drifting:
        return "False", "NoDrift", "stable's inputs match its training profile"
    detail = ", ".join(f"{f} (PSI {psis.get(f, float('nan')):.3f})" for f in drifting[:5])
    return "True", "InputDrift", f"stable's live inputs drift from its training profile: {detail}"
