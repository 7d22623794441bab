"""What each control (``mlrollout promote|abort|retry|pause|resume|undo``) changes in the
spec and what the operator will do with it (pure): ``plan_control`` and ``plan_undo``
return the merge patch and a sentence, or raise ``Refused`` saying why not now.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Exit codes of `mlrollout status` and `mlrollout dev --until-decided` (documented in
# docs/cli.md): scripts tell the outcomes apart without parsing text.
from mlrollout.operator.ctl.view import (
    Snapshot,
    history_rows,
    steps_of,
    wanted_revision,
    weights_of,
)


class Refused(ValueError):
    """The action makes no sense in the rollout's current state; the message says why."""


@dataclass(frozen=True)
class Action:
    """A change to the spec and what the operator will do with it."""

    patch: dict[str, Any]  # merge patch of the ModelDeployment (``{"spec": {...}}``)
    message: str


def new_token(action: str, now: datetime) -> str:
    return f"{action}-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def _controls(patch: Mapping[str, Any]) -> dict[str, Any]:
    return {"spec": {"controls": dict(patch)}}


def plan_control(snap: Snapshot, action: str, now: datetime, full: bool = False) -> Action:
    """The spec change for promote / abort / retry / pause / resume, and its consequence."""
    st = snap.status
    canary = st.get("canary") or {}
    stable = st.get("stable") or {}
    ctl = snap.spec.get("controls") or {}
    steps = steps_of(snap.spec)
    step = int(st.get("currentStep", 0))
    phase = str(st.get("phase") or "")
    token = new_token(action, now)
    if action in ("promote", "abort", "pause") and not canary:
        raise Refused(
            f"{snap.name} has no canary to {action} (phase {phase or 'unknown'}: "
            f"{st.get('message', '')})"
        )
    if action == "promote" and full:
        return Action(
            _controls({"promote": token}),
            f"canary {canary.get('version')} becomes stable as soon as it is ready, skipping "
            f"the remaining steps and analysis; stable {stable.get('version')} then stops.",
        )
    if action == "promote":
        where = f"step {step + 1}/{len(steps)}"
        after = (
            "then it is promoted (last step)"
            if step + 1 >= len(steps)
            else f"then it moves to {steps[step + 1].get('weight')}% (step {step + 2})"
        )
        return Action(
            _controls({"resume": token}),
            f"canary {canary.get('version')} leaves its pause at {where} once its analysis has "
            f"passed; {after}. Use --full to promote now.",
        )
    if action == "abort":
        return Action(
            _controls({"abort": token}),
            f"canary {canary.get('version')} is rolled back now: all traffic to stable "
            f"{stable.get('version')}. It stays rejected until spec.model changes or "
            "`mlrollout retry`.",
        )
    if action == "retry":
        wanted = wanted_revision(snap.spec)
        rejected = [r for r in st.get("rejectedRevisions") or [] if r.get("revision") == wanted]
        if not rejected:
            raise Refused(
                f"{snap.name}: the model in the spec was not rolled back, nothing to retry"
            )
        return Action(
            _controls({"retry": token}),
            f"{rejected[-1].get('version')} is no longer rejected: a new canary starts against "
            f"stable {stable.get('version')} at step 1.",
        )
    if action == "pause":
        if ctl.get("paused"):
            raise Refused(f"{snap.name} is already paused (spec.controls.paused)")
        return Action(
            _controls({"paused": True}),
            f"canary {canary.get('version')} stays at step {step + 1}/{len(steps)} "
            f"({weights_of(st)[1]}%); analysis keeps running and can still roll it back. "
            "`mlrollout resume` continues.",
        )
    if action == "resume":
        patch: dict[str, Any] = {}
        parts = []
        if ctl.get("paused"):
            patch["paused"] = False
            parts.append("spec.controls.paused is cleared")
        elif canary and phase == "Paused":
            patch["resume"] = token
            parts.append(f"the pause at step {step + 1}/{len(steps)} ends")
        if not patch:
            raise Refused(f"{snap.name} is not paused (phase {phase or 'unknown'})")
        return Action(
            _controls(patch),
            "; ".join(parts) + ": the canary advances once its analysis passes.",
        )
    raise ValueError(f"unknown action {action!r}")


def plan_undo(snap: Snapshot, now: datetime, to_revision: str | None = None) -> Action:
    """Roll out an earlier revision again: set spec.model back to it (and retry if rejected)."""
    st = snap.status
    rows = history_rows(snap)
    current = (st.get("stable") or {}).get("id")
    if to_revision is None:
        candidates = [
            r for r in rows if r["outcome"] in ("deployed", "promoted") and r["revision"] != current
        ]
        if not candidates:
            raise Refused(f"{snap.name}: no earlier stable revision in the history to go back to")
        target = candidates[-1]
    else:
        matches = [
            r
            for r in rows
            if str(r["number"]) == to_revision or r["revision"].startswith(to_revision)
        ]
        if not matches:
            known = ", ".join(f"{r['number']} ({r['version']})" for r in rows) or "none"
            raise Refused(f"{snap.name}: no revision {to_revision} in the history (known: {known})")
        target = matches[-1]
    if target["revision"] == wanted_revision(snap.spec):
        raise Refused(f"{snap.name}: the spec already asks for {target['version']}")
    if not target["uri"]:
        raise Refused(
            f"{snap.name}: revision {target['number']} ({target['version']}) has no recorded URI "
            "(history written by an older operator); set spec.model yourself"
        )
    model = dict(snap.spec.get("model") or {})
    model.update({"version": target["version"], "uri": target["uri"]})
    sha = _sha_of(st, target["revision"], rows)
    model["sha256"] = sha  # None removes a checksum that belonged to the other model
    patch: dict[str, Any] = {"spec": {"model": model}}
    rejected = {str(r.get("revision")) for r in st.get("rejectedRevisions") or []}
    message = (
        f"spec.model goes back to {target['version']} (revision {target['number']}, "
        f"{target['revision']}): it rolls out as a canary against stable "
        f"{(st.get('stable') or {}).get('version')}"
    )
    if target["revision"] == current:
        message = f"spec.model goes back to stable {target['version']}: the canary is superseded"
    if target["revision"] in rejected:
        patch["spec"]["controls"] = {"retry": new_token("retry", now)}
        message += " (it was rolled back before; a retry token clears that)"
    return Action(patch, message + ".")


def _sha_of(st: Mapping[str, Any], revision: str, rows: Sequence[Mapping[str, Any]]) -> Any:
    for key in ("stable", "canary"):
        rev = st.get(key) or {}
        if rev.get("id") == revision:
            return rev.get("sha256")
    for h in st.get("history") or []:
        if h.get("revision") == revision and "sha256" in h:
            return h.get("sha256")
    return None
