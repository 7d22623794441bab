"""Bodies of the kopf handlers: one reconcile per call, serialised per object.

``main.py`` only registers these. Every entry point (create, spec update, resume, and a
reconcile falling due) runs :func:`reconcile_object`, which builds the Kubernetes
plug-ins for this object, calls ``reconcile.reconcile`` and puts the new status into
``patch.status`` (kopf's patch in change handlers; written by ``main.py`` otherwise).

Why the extra state here:

- due reconciles (``pacer.py``) run concurrently with change handlers, so a per-object
  lock serialises the reconciles of one object;
- kopf applies ``patch.status`` after the handler returns, so the next run may still see
  the old status in its body. The status we last decided is kept in memory and used
  instead until the stored status catches up (it is only a cache: after a restart the
  stored status is the truth, which is why everything needed to resume lives there);
- the engine says when calling again is useful (``requeue_after``); that due time is
  handed to ``Deps.on_due`` (the pacer), so nothing runs for an object before then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mlrollout.operator import builders as b
from mlrollout.operator import opmetrics
from mlrollout.operator.decide import decide_invalid
from mlrollout.operator.interfaces import (
    DeploymentKey,
    Event,
    MetricsProvider,
    Runtime,
    TrafficRouter,
)
from mlrollout.operator.model import HistoryEntry, Traffic
from mlrollout.operator.reconcile import ReconcileResult, load_status, reconcile
from mlrollout.operator.settings import OperatorSettings
from pydantic import ValidationError

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]


class Plugins(Protocol):
    """Builds the per-object plug-ins (Kubernetes ones in production, fakes in tests)."""

    def runtime(self, owner: b.Owner, traffic: Traffic, emit: Emit) -> Runtime: ...

    def router(self, owner: b.Owner, traffic: Traffic) -> TrafficRouter: ...


# After a failed reconcile, try again this many seconds later (kopf's change-handler
# backoff in main.py is the same).
RETRY_SECONDS = 5.0


@dataclass
class _Memory:
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: dict[str, Any] | None = None  # last decided; may be ahead of the stored one
    due: float = float("inf")  # monotonic time before which a due run has nothing to do
    body: Mapping[str, Any] | None = None  # as last seen by a change handler
    written: dict[str, Any] | None = None  # status as last written (by whichever path)


@dataclass
class Deps:
    settings: OperatorSettings
    plugins: Plugins
    metrics: MetricsProvider
    reconcile: Callable[..., ReconcileResult] = reconcile
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic
    # Told (uid, monotonic due time) whenever an object's next due time is decided.
    on_due: Callable[[str, float], None] | None = None
    # Told each decision's events (notifications); must not block (webhook.py queues).
    notify: Callable[[DeploymentKey, Mapping[str, Any], Sequence[Event], datetime], None] | None = (
        None
    )
    memory: dict[str, _Memory] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def of(self, uid: str) -> _Memory:
        with self._guard:
            return self.memory.setdefault(uid, _Memory())

    def forget(self, uid: str) -> None:
        with self._guard:
            self.memory.pop(uid, None)

    def known(self, uid: str) -> _Memory | None:
        with self._guard:
            return self.memory.get(uid)

    def set_due(self, uid: str, memory: _Memory, due: float) -> None:
        memory.due = due
        if self.on_due is not None and self.known(uid) is memory:
            self.on_due(uid, due)


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge-patch turning ``old`` into ``new``.

    Keys absent from ``new`` become ``None`` (deleted): a plain update would leave e.g. a
    finished canary in status forever. Lists are replaced whole, as merge-patch does.
    """
    old = old or {}
    out: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = status_patch(before, value)
            if sub:
                out[key] = sub
        elif before != value or key not in old:
            out[key] = value
    return out


def _traffic(spec: Mapping[str, Any]) -> Traffic:
    # An invalid spec never reaches the router (reconcile stops at InvalidSpec), so the
    # default is only a placeholder there.
    try:
        return Traffic.model_validate(dict(spec.get("traffic") or {}))
    except ValidationError:
        return Traffic()


def reconcile_object(
    deps: Deps,
    *,
    body: Mapping[str, Any],
    patch: Any,
    emit: Emit,
    reason: str,
    force: bool = True,
) -> float | None:
    """Reconcile one ModelDeployment and stage its new status in ``patch.status``.

    Returns the engine's ``requeue_after`` (seconds), or None when a due run
    (``force=False``) was skipped because nothing is due yet or another reconcile of the
    object is running (which decides the next due time itself).
    Raises what the plug-ins raise; the object falls due again ``RETRY_SECONDS`` later.
    """
    meta = body.get("metadata", {})
    uid, name, namespace = meta["uid"], meta["name"], meta["namespace"]
    memory = deps.of(uid) if force else deps.known(uid)
    if memory is None:  # a due run for an object deleted meanwhile
        return None
    if force:
        memory.body = body
    if not force and deps.monotonic() < memory.due:
        return None
    if not memory.lock.acquire(blocking=force):
        return None  # a change handler is reconciling this object right now
    try:
        spec = dict(body.get("spec") or {})
        stored = dict(body.get("status") or {})
        if not force and memory.written is not None:
            stored = memory.written  # the handler's body predates our own later writes
        current = memory.status if memory.status is not None else stored
        owner = b.Owner(name=name, namespace=namespace, uid=uid)
        traffic = _traffic(spec)
        try:
            bad_name = _name_problem(name)
            if bad_name is not None:
                result = _invalid(current, bad_name, deps.clock(), meta.get("generation"), emit)
            else:
                result = deps.reconcile(
                    DeploymentKey(namespace, name),
                    spec,
                    current,
                    deps.clock(),
                    runtime=deps.plugins.runtime(owner, traffic, emit),
                    router=deps.plugins.router(owner, traffic),
                    metrics=deps.metrics,
                    generation=meta.get("generation"),
                )
        except Exception:
            opmetrics.analysis_error(namespace, name)
            deps.set_due(uid, memory, deps.monotonic() + RETRY_SECONDS)
            raise
        changes = status_patch(stored, result.status)
        for key, value in changes.items():
            patch.status[key] = value
        memory.status = dict(result.status)
        memory.written = dict(result.status)  # the caller writes ``changes`` next
        deps.set_due(uid, memory, deps.monotonic() + result.requeue_after)
        _announce(current, result, emit)
        _measure(namespace, name, current, result)
        if deps.notify is not None and result.events:
            try:
                deps.notify(DeploymentKey(namespace, name), spec, result.events, deps.clock())
            except Exception:  # a notification never costs a reconcile
                log.exception("%s/%s: notifications not sent", namespace, name)
        log.debug("%s/%s reconciled (%s): %d status fields", namespace, name, reason, len(changes))
        return result.requeue_after
    finally:
        memory.lock.release()


class StatusPatch:
    """``patch.status`` outside kopf: what a due reconcile must write itself."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}


WriteStatus = Callable[[str, str, dict[str, Any]], None]


def reconcile_due(deps: Deps, uid: str, emit: Emit, write_status: WriteStatus) -> bool:
    """The reconcile of an object that fell due (the pacer calls this from a thread).

    Uses the body the last change handler saw and the status decided since; writes the
    status change itself (``write_status(namespace, name, merge patch)``). False when
    there was nothing to run (deleted, not due after all, or busy).
    """
    memory = deps.known(uid)
    body = None if memory is None else memory.body
    if memory is None or body is None:
        return False
    patch = StatusPatch()
    if reconcile_object(deps, body=body, patch=patch, emit=emit, reason="due", force=False) is None:
        return False
    if patch.status:
        meta = body["metadata"]
        try:
            write_status(meta["namespace"], meta["name"], patch.status)
        except Exception:
            memory.written = None  # unknown now: diff against the body next time
            deps.set_due(uid, memory, deps.monotonic() + RETRY_SECONDS)
            raise
    return True


def _name_problem(name: str) -> str | None:
    try:
        b.check_owner_name(name)
    except b.BuildError as exc:
        return str(exc)
    return None


def _invalid(
    current: Mapping[str, Any], message: str, now: datetime, generation: int | None, emit: Emit
) -> ReconcileResult:
    """Children cannot be named after the object: say so in status, touch nothing (the API
    server would refuse every child, and retrying would never help)."""
    decision = decide_invalid(load_status(current), message, now, generation)
    for event in decision.events:
        emit(event)
    return ReconcileResult(
        status=decision.status.to_json(),
        events=decision.events,
        requeue_after=decision.requeue_after,
        decision=decision,
        state=decision.status,
    )


# Engine events that already say what a phase change means; other events (analysis
# summaries, ignored controls) accompany a change without announcing it.
PHASE_EVENTS = frozenset(
    {
        "Deploying",
        "Deployed",
        "RolloutStarted",
        "StepAdvanced",
        "Promoted",
        "RolledBack",
        "Aborted",
        "Superseded",
        "Retry",
        "InvalidSpec",
        "ProgressDeadlineExceeded",
        "StableNotReady",
        "AnalysisUnavailable",
    }
)


def _announce(old: Mapping[str, Any], result: ReconcileResult, emit: Emit) -> None:
    """Every phase change gets an Event, even one the engine did not explain."""
    before, after = old.get("phase"), result.status.get("phase")
    if before != after and not any(e.reason in PHASE_EVENTS for e in result.events):
        message = f"phase {before or 'none'} -> {after}"
        if after in ("RolledBack", "Degraded", "InvalidSpec"):
            emit(Event(type="Warning", reason=str(after), message=message))
        else:
            emit(Event(type="Normal", reason=str(after), message=message))


def _measure(namespace: str, name: str, old: Mapping[str, Any], result: ReconcileResult) -> None:
    state = result.state
    opmetrics.observe(namespace, name, str(state.phase), state.weights.canary)
    for counter in getattr(result.decision, "counters", ()):
        opmetrics.count(namespace, name, counter.name, counter.labels, counter.value)
    # Only history entries this reconcile added count (the history is a bounded window).
    seen = {_entry_key(e) for e in load_status(old).history} if old.get("history") else set()
    new = [e for e in state.history if _entry_key(e) not in seen]
    opmetrics.outcomes(
        namespace,
        name,
        promoted=sum(e.outcome == "promoted" for e in new),
        rolled_back=sum(e.outcome == "rolledBack" for e in new),
    )


def _entry_key(entry: HistoryEntry) -> tuple[str, str, datetime]:
    return (entry.revision, entry.outcome, entry.at)


def forget_object(deps: Deps, *, body: Mapping[str, Any]) -> None:
    """On deletion: children go with their owner references; drop our memory and series."""
    meta = body.get("metadata", {})
    deps.forget(meta.get("uid", ""))
    opmetrics.forget(meta.get("namespace", ""), meta.get("name", ""))
