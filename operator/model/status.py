"""``ModelDeployment.status`` (pure): phase, revisions, weights, analysis verdicts, history and
conditions, as the engine writes them and a restart reads them back.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Literal

from mlrollout.operator.model.base import _Status
from mlrollout.operator.model.spec import ModelRef, revision_id
from pydantic import (
    Field,
    field_validator,
)


class Phase(StrEnum):
    INITIALIZING = "Initializing"
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"
    INVALID_SPEC = "InvalidSpec"


Outcome = Literal["pass", "fail", "inconclusive", "noData", "providerError"]


ConditionStatus = Literal["True", "False", "Unknown"]


class Revision(_Status):
    id: str = Field(description="Short hash of the model spec (name, version, uri, sha256).")
    name: str = Field(description="Model name.")
    version: str = Field(description="Model version.")
    uri: str = Field(description="Model artifact URI.")
    sha256: str | None = Field(default=None, description="Expected sha256 of model.onnx.")
    track: Literal["stable", "canary"] = Field(
        default="stable",
        description="Track label the revision started with; kept after promotion.",
    )
    serving_since: datetime | None = Field(
        default=None,
        description="When the revision first served as stable (unset while it never has).",
    )

    @classmethod
    def of(cls, model: ModelRef, track: Literal["stable", "canary"]) -> Revision:
        return cls(
            id=revision_id(model),
            name=model.name,
            version=model.version,
            uri=model.uri,
            sha256=model.sha256,
            track=track,
        )

    def model_ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, uri=self.uri, sha256=self.sha256)


class Weights(_Status):
    stable: int = Field(default=100, description="Percent of traffic to stable.")
    canary: int = Field(default=0, description="Percent of traffic to the canary.")


class Verdict(_Status):
    """The outcome of one check in one analysis run."""

    check: str = Field(description="Check name (errorRate, latency, predictionDrift, ...).")
    test: str = Field(default="", description="The statistical test behind the outcome.")
    outcome: Outcome = Field(
        description=(
            "pass, fail, inconclusive (data, but not yet evidence either way), noData or "
            "providerError."
        )
    )
    value: float | None = Field(default=None, description="Observed value (canary).")
    threshold: float | None = Field(default=None, description="Limit the value was held to.")
    lower: float | None = Field(default=None, description="Anytime-valid lower bound.")
    upper: float | None = Field(default=None, description="Anytime-valid upper bound.")
    samples: int | None = Field(default=None, description="Sample size behind the value.")
    needed: int | None = Field(
        default=None, description="About how many more requests would decide (estimate)."
    )
    log_evidence: float | None = Field(
        default=None, description="log e-value of a sequential test, whole rollout."
    )
    step_log_evidence: float | None = Field(
        default=None, description="log e-value of a sequential test, current step only."
    )
    message: str = Field(default="", description="Human explanation of the outcome.")

    @field_validator("value", "threshold", "lower", "upper", "log_evidence", "step_log_evidence")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        # Status is JSON and the schema has no NaN/Inf: keep such values in the message only.
        return v if v is None or math.isfinite(v) else None


class AnalysisStatus(_Status):
    last_run_at: datetime | None = Field(default=None, description="When analysis last ran.")
    started_at: datetime | None = Field(
        default=None, description="When the rollout's first step began (counts start here)."
    )
    consecutive_failures: int = Field(
        default=0, description="Longest current streak of failed runs of one window check."
    )
    failure_streaks: dict[str, int] = Field(
        default_factory=dict, description="Failed runs in a row, per window check."
    )
    carried_evidence: dict[str, float] = Field(
        default_factory=dict,
        description="log e-values of sequential tests from completed steps, per check.",
    )
    hold_since: datetime | None = Field(
        default=None, description="Start of the current run of provider errors."
    )
    step_passed: bool = Field(
        default=False, description="Analysis has passed since the current step started."
    )
    inconclusive_warned: bool = Field(
        default=False, description="The step passed its stepDeadline without a decision."
    )
    verdicts: list[Verdict] = Field(default_factory=list, description="Verdicts of the last run.")


class HistoryEntry(_Status):
    """What happened to a revision, and when."""

    revision: str = Field(description="Revision id.")
    version: str = Field(description="Model version.")
    uri: str | None = Field(default=None, description="Model artifact URI (for undo).")
    sha256: str | None = Field(default=None, description="Expected sha256 of model.onnx.")
    outcome: Literal["deployed", "promoted", "rolledBack", "aborted", "superseded"] = Field(
        description="What happened to the revision."
    )
    at: datetime = Field(description="When it happened.")
    reason: str = Field(default="", description="Why.")


class RejectedRevision(_Status):
    """A rolled-back revision, not retried until the model changes or retry."""

    revision: str = Field(description="Revision id that was rolled back.")
    version: str = Field(description="Its model version.")
    at: datetime = Field(description="When it was rolled back.")
    reason: str = Field(default="", description="Why it was rolled back.")


class ControlsStatus(_Status):
    promote: str | None = Field(default=None, description="Last promote token seen.")
    resume: str | None = Field(default=None, description="Last resume token seen.")
    abort: str | None = Field(default=None, description="Last abort token seen.")
    retry: str | None = Field(default=None, description="Last retry token seen.")
    promote_pending: bool = Field(
        default=False, description="A promote was requested and waits for a ready canary."
    )
    resume_pending: bool = Field(
        default=False, description="A resume was requested and ends the current step's pause."
    )


class Condition(_Status):
    """A Kubernetes-style condition."""

    type: str = Field(description="Ready, Progressing, AnalysisHealthy, InputDrift, SpecValid.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )


class ModelDeploymentStatus(_Status):
    phase: Phase = Field(default=Phase.INITIALIZING, description="Where the deployment stands.")
    message: str = Field(default="", description="Human summary of the phase.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec last acted on."
    )
    stable: Revision | None = Field(default=None, description="The revision serving as stable.")
    stable_ready: bool = Field(default=False, description="The stable revision is ready.")
    canary: Revision | None = Field(default=None, description="The revision under analysis.")
    current_step: int = Field(default=0, description="Index into spec.rollout.steps.")
    step: str = Field(
        default="",
        description="The current step as n/m while a canary runs (for kubectl get), else empty.",
    )
    step_started_at: datetime | None = Field(
        default=None, description="When the current step's weight took effect."
    )
    not_ready_since: datetime | None = Field(
        default=None, description="Since when the revision being rolled out is not ready."
    )
    weights: Weights = Field(default_factory=Weights, description="Traffic split in force.")
    analysis: AnalysisStatus = Field(
        default_factory=AnalysisStatus, description="Analysis state of the current canary."
    )
    rejected_revisions: list[RejectedRevision] = Field(
        default_factory=list,
        description="Rolled-back revisions; not retried until the model changes or retry.",
    )
    history: list[HistoryEntry] = Field(
        default_factory=list, description="Recent revision outcomes, newest last (bounded)."
    )
    controls: ControlsStatus = Field(
        default_factory=ControlsStatus, description="Control tokens already acted on."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    routing_generation: int = Field(
        default=0, description="Generation of the routing table last written."
    )

    def to_json(self) -> dict[str, object]:
        """The status as it is stored (camelCase, JSON types, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


HISTORY_LIMIT = 20


REJECTED_LIMIT = 20
