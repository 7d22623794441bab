"""The rollout engine: ``decide(spec, status, observations, now) -> Decision`` (pure).

One call moves a ModelDeployment at most one step. The order inside a call is fixed:

1. controls (retry, abort, promote, resume tokens: each acted on once);
2. target: which revision the spec asks for versus stable, canary and rejected ones;
3. progress: readiness, analysis verdicts, step advance, promotion or rollback.

``wanted_revisions`` and ``plan_queries`` (``plan.py``) run steps 1-2 on their own so that
the act layer can start revisions and run queries before calling ``decide``; the steps are
idempotent, so ``decide`` reaches the same target. Judging the canary is ``judge.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import mlrollout.operator.decide.analysis as verdicts
import mlrollout.operator.decide.guard as guard
from mlrollout.operator.decide.conditions import set_condition
from mlrollout.operator.decide.judge import judge, router_guard, stable_drift, undecided
from mlrollout.operator.decide.lifecycle import (
    Counter,
    Work,
    has_served,
    prepare,
    promote,
    record_history,
    rollback,
    set_phase,
)
from mlrollout.operator.decide.plan import Observations as Observations
from mlrollout.operator.decide.plan import (
    analysis_due,
    is_ready,
    revision_specs,
)
from mlrollout.operator.decide.plan import plan_queries as plan_queries
from mlrollout.operator.decide.plan import wanted_revisions as wanted_revisions
from mlrollout.operator.interfaces import (
    Event,
    RevisionSpec,
    RoutingInputs,
)
from mlrollout.operator.model import (
    MANUAL,
    ConditionStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Weights,
    parse_duration,
    revision_id,
)

WAIT_READY_SECONDS = 5.0
# A revision that is starting: look again soon, then less often (a third of the time
# waited so far, within these bounds), so that hundreds of revisions starting at once
# do not flood the API server with reads while their pods come up.
READY_RECHECK_MIN_SECONDS = 2.0
READY_RECHECK_MAX_SECONDS = 15.0


def ready_recheck(waited: float) -> float:
    """Seconds until the readiness of a revision that has been starting for ``waited``
    seconds is looked at again."""
    return min(READY_RECHECK_MAX_SECONDS, max(READY_RECHECK_MIN_SECONDS, waited / 3))


@dataclass(frozen=True)
class Decision:
    status: ModelDeploymentStatus
    wanted: dict[str, RevisionSpec] | None  # None: leave the runtime as it is (InvalidSpec)
    routing: RoutingInputs | None  # None: leave the routes as they are
    events: tuple[Event, ...]
    counters: tuple[Counter, ...]
    requeue_after: float


# --------------------------------------------------------------------------- decide


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observations: Observations,
    now: datetime,
    generation: int | None = None,
) -> Decision:
    """What should be, given the spec, the stored status and what was observed at ``now``."""
    w = prepare(spec, status, now)
    st = w.st
    if generation is not None:
        st.observed_generation = generation
    assert st.stable is not None
    st.stable_ready = is_ready(observations.revisions, st.stable.id)
    set_condition(st, now, "SpecValid", "True", "Valid", "")
    requeue = parse_duration(spec.rollout.analysis.interval)
    if analysis_due(spec, st, now) and stable_drift(w, observations) and st.canary is None:
        st.analysis.last_run_at = now  # healthy: the stable drift check is the whole run
    if st.canary is None:
        requeue = min(requeue, _settle(w, spec))
    else:
        requeue = min(requeue, _progress(w, spec, observations))
    if st.canary is not None and guard.watching(spec):
        # The router may take the canary off at any moment; record it soon after.
        requeue = min(requeue, guard.RECHECK_SECONDS)
    _conditions(w)
    st.step = (
        f"{min(st.current_step, len(spec.rollout.steps) - 1) + 1}/{len(spec.rollout.steps)}"
        if st.canary is not None
        else ""
    )
    routing = _routing(spec, st)
    return Decision(
        status=st,
        wanted=revision_specs(spec, st),
        routing=routing,
        events=tuple(w.events),
        counters=tuple(w.counters),
        requeue_after=max(1.0, requeue),
    )


def _settle(w: Work, spec: ModelDeploymentSpec) -> float:
    """No canary: first deployment, steady state, or sitting on a rejected revision."""
    st = w.st
    assert st.stable is not None
    st.weights = Weights()
    if not has_served(st):
        if st.stable_ready:
            st.stable.serving_since = w.now
            record_history(w, st.stable, "deployed", "first deployment ready")
            st.not_ready_since = None
            w.event("Normal", "Deployed", f"{st.stable.name} {st.stable.version} is serving")
        else:
            deadline = parse_duration(spec.rollout.progress_deadline)
            waited = w.since(st.not_ready_since)
            if waited >= deadline:
                set_phase(
                    w,
                    Phase.DEGRADED,
                    f"{st.stable.version} not ready after {waited:.0f}s "
                    f"(progressDeadline {deadline:.0f}s)",
                    warn="ProgressDeadlineExceeded",
                )
            else:
                set_phase(w, Phase.INITIALIZING, f"waiting for {st.stable.version} to become ready")
                return min(ready_recheck(waited), deadline - waited)
            return WAIT_READY_SECONDS
    wanted_id = revision_id(spec.model)
    rejected = next((r for r in st.rejected_revisions if r.revision == wanted_id), None)
    if not st.stable_ready:
        # Also after a rollback: a stable that cannot serve outranks the rejection.
        also = f"; {rejected.version} was rolled back ({rejected.reason})" if rejected else ""
        set_phase(
            w,
            Phase.DEGRADED,
            f"stable {st.stable.version} is not ready{also}",
            warn="StableNotReady",
        )
        return WAIT_READY_SECONDS
    if rejected is not None:
        set_phase(
            w,
            Phase.ROLLED_BACK,
            f"{rejected.version} was rolled back ({rejected.reason}); stable {st.stable.version} "
            "serves. Change spec.model or set a new spec.controls.retry token to try again.",
        )
    else:
        set_phase(w, Phase.HEALTHY, f"{st.stable.version} is serving")
    return float("inf")


def _progress(w: Work, spec: ModelDeploymentSpec, obs: Observations) -> float:
    """A canary exists: wait for readiness, judge, advance, promote or roll back."""
    st = w.st
    assert st.canary is not None and st.stable is not None
    canary = st.canary
    steps = spec.rollout.steps
    if router_guard(w, obs):  # also for a canary that is no longer ready (a dead process)
        return parse_duration(spec.rollout.analysis.interval)
    if not is_ready(obs.revisions, canary.id):
        st.not_ready_since = st.not_ready_since or w.now
        st.weights = Weights()
        gone = obs.revisions.get(canary.id)
        if gone is not None and gone.gone:
            # Not coming back (the runtime will not restart it): waiting for the deadline
            # would only hold the rollout.
            rollback(w, "rolledBack", f"canary process is gone: {gone.message or 'exited'}")
            return WAIT_READY_SECONDS
        deadline = parse_duration(spec.rollout.progress_deadline)
        waited = w.since(st.not_ready_since)
        if waited >= deadline:
            rollback(w, "rolledBack", f"canary not ready within progressDeadline ({deadline:.0f}s)")
            return WAIT_READY_SECONDS
        state = obs.revisions.get(canary.id)
        detail = f": {state.message}" if state is not None and state.message else ""
        set_phase(
            w, Phase.PROGRESSING, f"waiting for canary {canary.version} to become ready{detail}"
        )
        return min(ready_recheck(waited), deadline - waited)
    st.not_ready_since = None
    just_started = st.step_started_at is None
    if just_started:
        st.step_started_at = w.now
        st.analysis.started_at = st.analysis.started_at or w.now
    st.current_step = min(st.current_step, len(steps) - 1)
    st.weights = Weights(
        stable=100 - steps[st.current_step].weight, canary=steps[st.current_step].weight
    )
    if st.controls.promote_pending:
        promote(w, "promoted by controls.promote")
        return float("inf")
    interval = parse_duration(spec.rollout.analysis.interval)
    if analysis_due(spec, st, w.now) and not just_started:
        judge(w, spec, obs)
        if st.canary is None:  # rolled back
            return interval
    return min(interval, _advance(w, spec))


def _advance(w: Work, spec: ModelDeploymentSpec) -> float:
    """Move to the next step (or promote) when analysis passed and the pause is over."""
    st = w.st
    assert st.canary is not None
    a = st.analysis
    steps = spec.rollout.steps
    step = steps[st.current_step]
    where = f"step {st.current_step + 1}/{len(steps)} at {step.weight}%"
    if spec.controls.paused:
        set_phase(
            w,
            Phase.PAUSED,
            f"{where}: paused by spec.controls.paused (analysis keeps running)",
        )
        return parse_duration(spec.rollout.analysis.interval)
    if not a.step_passed:
        cfg = spec.rollout.analysis
        policy = cfg.on_provider_error
        held = w.since(st.step_started_at)
        deadline = parse_duration(cfg.step_deadline)
        if a.hold_since is not None and w.since(a.hold_since) >= parse_duration(policy.max_hold):
            set_phase(
                w,
                Phase.DEGRADED,
                f"{where}: holding, metrics unavailable since {a.hold_since.isoformat()}",
                warn="AnalysisUnavailable",
            )
            return parse_duration(cfg.interval)
        if a.hold_since is None and a.verdicts and held >= deadline:
            open_ = undecided(st)
            why = f"no decision after {held:.0f}s (stepDeadline {deadline:.0f}s): {open_}"
            if cfg.on_inconclusive == "rollback":
                rollback(w, "rolledBack", f"{why} (onInconclusive rollback)")
                return parse_duration(cfg.interval)
            if cfg.on_inconclusive == "promote":
                w.event(
                    "Warning",
                    "AnalysisInconclusive",
                    f"{where}: {why}; passing the step (onInconclusive promote)",
                )
                a.step_passed = True
            else:
                if not a.inconclusive_warned:
                    a.inconclusive_warned = True
                    w.event(
                        "Warning",
                        "AnalysisInconclusive",
                        f"{where}: {why}; holding (onInconclusive hold)",
                    )
                set_phase(w, Phase.PROGRESSING, f"{where}: holding, {why}")
                return parse_duration(cfg.interval)
        if not a.step_passed:
            set_phase(w, Phase.PROGRESSING, f"{where}: waiting for evidence: {undecided(st)}")
            return parse_duration(cfg.interval)
    remaining = 0.0
    if st.controls.resume_pending:
        pass
    elif step.pause == MANUAL:
        set_phase(w, Phase.PAUSED, f"{where}: analysis passed; waiting for controls.resume")
        return float("inf")
    elif step.pause_seconds is not None:
        remaining = step.pause_seconds - w.since(st.step_started_at)
    if remaining > 0:
        set_phase(w, Phase.PAUSED, f"{where}: analysis passed; pausing {remaining:.0f}s more")
        return remaining
    st.controls.resume_pending = False
    if st.current_step + 1 >= len(steps):
        promote(w, f"passed all {len(steps)} steps")
        return float("inf")
    for v in a.verdicts:  # the step's evidence carries over (a product of e-values)
        if v.step_log_evidence is not None:
            a.carried_evidence[v.check] = a.carried_evidence.get(v.check, 0.0) + v.step_log_evidence
    st.current_step += 1
    st.step_started_at = w.now
    a.step_passed = False
    a.inconclusive_warned = False
    nxt = steps[st.current_step].weight
    st.weights = Weights(stable=100 - nxt, canary=nxt)
    w.event(
        "Normal",
        "StepAdvanced",
        f"canary {st.canary.version} to {nxt}% (step {st.current_step + 1}/{len(steps)})",
    )
    set_phase(w, Phase.PROGRESSING, f"step {st.current_step + 1}/{len(steps)} at {nxt}%")
    return parse_duration(spec.rollout.analysis.interval)


def _conditions(w: Work) -> None:
    st, now = w.st, w.now
    ready: ConditionStatus = "True" if st.stable_ready else "False"
    set_condition(
        st, now, "Ready", ready, "StableReady" if st.stable_ready else "StableNotReady", ""
    )
    if st.canary is not None:
        set_condition(st, now, "Progressing", "True", st.phase.value, st.message)
    else:
        set_condition(st, now, "Progressing", "False", st.phase.value, st.message)
    vs = st.analysis.verdicts
    if vs:
        outcome = verdicts.run_outcome(vs)
        cond: ConditionStatus = (
            "True" if outcome == "pass" else "False" if outcome == "fail" else "Unknown"
        )
        bad = [v for v in vs if v.outcome != "pass"]
        msg = "; ".join(f"{v.check}: {v.message}" for v in bad[:3]) or "all checks passed"
        set_condition(st, now, "AnalysisHealthy", cond, outcome[0].upper() + outcome[1:], msg)


def _routing(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> RoutingInputs | None:
    if st.stable is None or not has_served(st):
        return None  # nothing has served yet: no table to write
    revisions = {"stable": st.stable.id}
    versions = {"stable": st.stable.version}
    if st.canary is not None:
        revisions["canary"] = st.canary.id
        versions["canary"] = st.canary.version
    weights = {"stable": st.weights.stable}
    if st.canary is not None:
        weights["canary"] = st.weights.canary
    return RoutingInputs(
        weights=weights,
        traffic=spec.traffic,
        revisions=revisions,
        versions=versions,
        options=guard.table_options(spec),
    )


def decide_invalid(
    status: ModelDeploymentStatus, message: str, now: datetime, generation: int | None = None
) -> Decision:
    """The spec does not validate: record why, change nothing else."""
    w = Work(status, now)
    st = w.st
    if generation is not None:
        st.observed_generation = generation
    if st.phase != Phase.INVALID_SPEC or st.message != message:
        w.event("Warning", "InvalidSpec", message)
    st.phase = Phase.INVALID_SPEC
    st.message = message
    set_condition(st, now, "SpecValid", "False", "InvalidSpec", message)
    return Decision(
        status=st,
        wanted=None,
        routing=None,
        events=tuple(w.events),
        counters=(),
        requeue_after=60.0,
    )
