"""The rollout engine: ``decide(spec, status, observations, now) -> Decision`` (pure).

One call moves a ModelDeployment at most one step. The order inside a call is fixed:

1. controls (retry, abort, promote, resume tokens: each acted on once);
2. target: which revision the spec asks for versus stable, canary and rejected ones;
3. progress: readiness, analysis verdicts, step advance, promotion or rollback.

``wanted_revisions`` and ``plan_queries`` run steps 1-2 on their own so that the act
layer can start revisions and run queries before calling ``decide``; the steps are
idempotent, so ``decide`` reaches the same target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mlrollout.operator.decide.analysis as verdicts
import mlrollout.operator.decide.checks as checks
import mlrollout.operator.decide.guard as guard
from mlrollout.operator import queries
from mlrollout.operator.decide.conditions import set_condition
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
from mlrollout.operator.interfaces import (
    DeploymentKey,
    Event,
    ProviderError,
    RevisionSpec,
    RevisionState,
    RoutingInputs,
    Sample,
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
class Observations:
    """What the act layer saw: revision readiness and query results by name."""

    revisions: Mapping[str, RevisionState] = field(default_factory=dict)
    metrics: Mapping[str, Sequence[Sample] | ProviderError] = field(default_factory=dict)
    # The router guard's report (docs/routing.md): a trip naming the canary is its rollback.
    router_guard: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    status: ModelDeploymentStatus
    wanted: dict[str, RevisionSpec] | None  # None: leave the runtime as it is (InvalidSpec)
    routing: RoutingInputs | None  # None: leave the routes as they are
    events: tuple[Event, ...]
    counters: tuple[Counter, ...]
    requeue_after: float


def _revision_specs(
    spec: ModelDeploymentSpec, st: ModelDeploymentStatus
) -> dict[str, RevisionSpec]:
    out: dict[str, RevisionSpec] = {}
    for rev in (st.stable, st.canary):
        if rev is not None:
            out[rev.id] = RevisionSpec(
                revision=rev.id, track=rev.track, model=rev.model_ref(), serving=spec.serving
            )
    return out


def wanted_revisions(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
) -> dict[str, RevisionSpec]:
    """The revisions to run before deciding: stable, plus the canary the spec asks for."""
    return _revision_specs(spec, prepare(spec, status, now).st)


def _analysis_due(spec: ModelDeploymentSpec, st: ModelDeploymentStatus, now: datetime) -> bool:
    last = st.analysis.last_run_at
    return last is None or (now - last).total_seconds() >= parse_duration(
        spec.rollout.analysis.interval
    )


def _context(
    spec: ModelDeploymentSpec, st: ModelDeploymentStatus, now: datetime, key: DeploymentKey | None
) -> checks.Context:
    assert st.stable is not None and st.canary is not None
    step_start = st.step_started_at or now
    rollout_start = st.analysis.started_at or step_start
    return checks.Context(
        analysis=spec.rollout.analysis,
        deployment=key.name if key else "",
        namespace=key.namespace if key else "",
        stable_version=st.stable.version,
        canary_version=st.canary.version,
        step_seconds=max(0.0, (now - step_start).total_seconds()),
        rollout_seconds=max(0.0, (now - rollout_start).total_seconds()),
        steps=len(spec.rollout.steps),
        carried=dict(st.analysis.carried_evidence),
        guard_alpha=_guard_alpha(spec),
    )


def _guard_alpha(spec: ModelDeploymentSpec) -> float:
    """What the router guard spends of ``analysis.alpha`` (both its tests)."""
    g = guard.table_options(spec).get("guard")
    if not isinstance(g, Mapping):
        return 0.0
    return float(g["alpha"]) * (2 if g.get("minAgreement") is not None else 1)


def plan_queries(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    key: DeploymentKey,
    states: Mapping[str, RevisionState],
    now: datetime,
) -> dict[str, str]:
    """The PromQL queries ``decide`` needs now (empty when no analysis is due)."""
    st = prepare(spec, status, now).st
    if st.stable is None or not _analysis_due(spec, st, now):
        return {}
    out = queries.stable_drift_queries(key.name, key.namespace, st.stable.version)
    canary = st.canary
    if (
        canary is not None
        and _ready(states, canary.id)
        and not st.controls.promote_pending
        and st.step_started_at is not None  # a step that starts now has no traffic to judge
    ):
        out.update(checks.plan(_context(spec, st, now, key)))
    return out


def _ready(states: Mapping[str, RevisionState], rev: str) -> bool:
    state = states.get(rev)
    return state is not None and state.ready


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
    st.stable_ready = _ready(observations.revisions, st.stable.id)
    set_condition(st, now, "SpecValid", "True", "Valid", "")
    requeue = parse_duration(spec.rollout.analysis.interval)
    if _analysis_due(spec, st, now) and _stable_drift(w, observations) and st.canary is None:
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
        wanted=_revision_specs(spec, st),
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
    if _router_guard(w, obs):  # also for a canary that is no longer ready (a dead process)
        return parse_duration(spec.rollout.analysis.interval)
    if not _ready(obs.revisions, canary.id):
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
    if _analysis_due(spec, st, w.now) and not just_started:
        _judge(w, spec, obs)
        if st.canary is None:  # rolled back
            return interval
    return min(interval, _advance(w, spec))


def _router_guard(w: Work, obs: Observations) -> bool:
    """Roll back when the router reports that its guard took this canary off traffic."""
    st = w.st
    assert st.canary is not None
    state = obs.revisions.get(st.canary.id)
    trip = guard.trip_of(obs.router_guard, st.canary.version, state.url if state else None)
    if trip is None:
        return False
    verdict = guard.verdict(trip)
    st.analysis.verdicts = [verdict]
    st.analysis.last_run_at = w.now
    w.count("mlrollout_operator_verdicts_total", check=verdict.check, result=verdict.outcome)
    w.event("Warning", "RouterGuard", verdict.message)
    rollback(w, "rolledBack", verdict.message)
    return True


def _judge(w: Work, spec: ModelDeploymentSpec, obs: Observations) -> None:
    st = w.st
    assert st.canary is not None
    cfg = spec.rollout.analysis
    ctx = _context(spec, st, w.now, None)
    results = verdicts.evaluate(ctx, obs.metrics)
    outcome = verdicts.run_outcome(results)
    a = st.analysis
    a.last_run_at = w.now
    a.verdicts = results
    for v in results:
        w.count("mlrollout_operator_verdicts_total", check=v.check, result=v.outcome)
    summary = "; ".join(f"{v.check} {v.outcome}: {v.message}" for v in results) or "no checks"
    sequential = {c.name for c in checks.enabled_checks(cfg) if c.sequential}
    # Each window check keeps its own streak: another check's noData or pass neither
    # breaks nor extends it.
    streaks = dict(a.failure_streaks)
    for v in results:
        if v.check in sequential:
            continue
        if v.outcome == "fail":
            streaks[v.check] = streaks.get(v.check, 0) + 1
        elif v.outcome == "pass":
            streaks[v.check] = 0
    a.failure_streaks = {k: n for k, n in streaks.items() if n}
    a.consecutive_failures = max(a.failure_streaks.values(), default=0)
    if outcome != "providerError":
        a.hold_since = None
    crossed = [v for v in results if v.outcome == "fail" and v.check in sequential]
    if crossed:
        w.event("Warning", "AnalysisFailed", summary)
        reason = "; ".join(f"{v.check} ({v.test}): {v.message}" for v in crossed)
        rollback(w, "rolledBack", f"sequential test crossed: {reason}")
        return
    if outcome == "fail":
        limit = cfg.failure_limit
        worst = ", ".join(f"{k} {n}/{limit}" for k, n in sorted(a.failure_streaks.items()))
        w.event("Warning", "AnalysisFailed", f"failed runs in a row: {worst}: {summary}")
        over = sorted(k for k, n in a.failure_streaks.items() if n >= limit)
        if over:
            rollback(
                w,
                "rolledBack",
                f"analysis failed {limit} times in a row ({', '.join(over)})",
            )
        return
    # A pass counts for the step only if the run saw time at the step's weight and the
    # step's minimum of canary requests.
    served = _step_requests(obs)
    started = st.step_started_at
    a.step_passed = (
        outcome == "pass" and started is not None and w.now > started and served >= cfg.min_samples
    )
    if outcome == "pass":
        if a.step_passed:
            w.event("Normal", "AnalysisPassed", summary)
        else:
            w.event(
                "Normal",
                "AnalysisInconclusive",
                f"{served} canary requests at this step, need {cfg.min_samples}: {summary}",
            )
        return
    if outcome in ("noData", "inconclusive"):
        w.event(
            "Normal", "AnalysisNoData" if outcome == "noData" else "AnalysisInconclusive", summary
        )
        return
    w.count("mlrollout_operator_analysis_errors_total")
    a.hold_since = a.hold_since or w.now
    held = w.since(a.hold_since)
    policy = cfg.on_provider_error
    max_hold = parse_duration(policy.max_hold)
    w.event("Warning", "AnalysisProviderError", f"held {held:.0f}s of {max_hold:.0f}s: {summary}")
    if held >= max_hold and policy.action == "rollback":
        rollback(w, "rolledBack", f"metrics unavailable for {held:.0f}s (onProviderError rollback)")


def _step_requests(obs: Observations) -> int:
    value = obs.metrics.get(queries.REQUESTS.format(track="canary") + "@" + checks.STEP)
    if value is None or isinstance(value, ProviderError):
        return 0
    return checks.count(sum(s.value for s in value if s.value == s.value) if value else None)


def _undecided(st: ModelDeploymentStatus) -> str:
    """What the open checks still need, for status and events."""
    parts = []
    for v in st.analysis.verdicts:
        if v.outcome in ("inconclusive", "noData"):
            more = f" (about {v.needed} more requests)" if v.needed else ""
            parts.append(f"{v.check} {v.outcome}{more}")
    return ", ".join(parts) or "no passing run yet"


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
            open_ = _undecided(st)
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
            set_phase(w, Phase.PROGRESSING, f"{where}: waiting for evidence: {_undecided(st)}")
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


def _stable_drift(w: Work, obs: Observations) -> bool:
    """Report stable's input drift as a condition; False when it was not observed."""
    found = verdicts.stable_input_drift(obs.metrics)
    if found is None:
        return False
    status, reason, message = found
    changed = set_condition(w.st, w.now, "InputDrift", status, reason, message)
    if changed and status == "True":
        w.event("Warning", "InputDrift", message)
    return True


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
