"""``spec.rollout.analysis`` (pure): how a canary is judged, the checks and their limits."""

from __future__ import annotations

from typing import Literal

from mlrollout.operator.model.base import _Spec
from mlrollout.operator.model.units import Duration, Int, parse_duration
from pydantic import (
    Field,
    model_validator,
)


class OnProviderError(_Spec):
    action: Literal["hold", "rollback"] = Field(
        default="hold",
        description=(
            "What to do while Prometheus cannot answer: hold the step (after maxHold the "
            "phase turns Degraded, still holding), or roll back once maxHold has passed. "
            "Never promotes."
        ),
    )
    max_hold: Duration = Field(
        default="10m",
        description="How long provider errors may last before the action's consequence.",
    )

    @model_validator(mode="after")
    def _max_hold_fits(self) -> OnProviderError:
        parse_duration(self.max_hold)  # refuses what Go's time.Duration cannot hold
        return self


class ErrorRateCheck(_Spec):
    enabled: bool = Field(default=True, description="Run this check.")
    max_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        alias="max",
        description=(
            "Highest allowed canary server-error rate (server_error / requests): rolled back "
            "when an anytime-valid bound shows the rate above it; a pass needs the bound below."
        ),
    )
    max_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description=(
            "Tolerance for promotion: a step passes only when an anytime-valid upper bound "
            "of the canary's error rate minus stable's (requests since the rollout began) is "
            "at most this. Rollback does not wait for it: evidence that the canary fails more "
            "often than stable at all (sequential split test) rolls back at once."
        ),
    )


class LatencyCheck(_Spec):
    enabled: bool = Field(default=True, description="Run this check.")
    quantile: float = Field(default=0.95, gt=0, lt=1, description="Latency quantile to judge.")
    max_seconds: float = Field(
        default=1.0, gt=0, description="Highest allowed canary latency at the quantile."
    )
    max_ratio: float | None = Field(
        default=1.5,
        gt=0,
        description=(
            "Highest allowed canary/stable latency ratio at the quantile (tolerance both "
            "ways: rolled back when confidently above it, passed when confidently below). "
            "Resolved on histogram bucket edges, so the buckets must be finer than it."
        ),
    )


class InputDriftCheck(_Spec):
    enabled: bool = Field(default=True, description="Run this check.")
    max_psi_increase: float = Field(
        default=0.1,
        ge=0,
        description=(
            "Largest allowed excess of the canary's input PSI (live inputs vs its own "
            "training profile) over stable's, per feature. Input drift both versions share "
            "does not fail the canary."
        ),
    )


class PredictionDriftCheck(_Spec):
    enabled: bool = Field(default=True, description="Run this check.")
    max_psi: float = Field(
        default=0.2,
        ge=0,
        description=(
            "Largest allowed PSI between the canary's and stable's prediction distributions "
            "over the window (both see the same traffic)."
        ),
    )


class FeedbackAccuracyCheck(_Spec):
    enabled: bool = Field(default=True, description="Run this check.")
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Lowest allowed canary accuracy on feedback."
    )
    max_decrease: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Largest allowed accuracy drop versus stable (count-based, with confidence).",
    )
    min_samples: Int = Field(
        default=50, ge=1, description="Feedback events needed before judging accuracy."
    )


class AgreementCheck(_Spec):
    """Paired agreement: canary and stable answer the same requests (traffic.agreement)."""

    enabled: bool = Field(default=True, description="Run this check.")
    min: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description=(
            "Lowest allowed share of mirrored requests that canary and stable answer the same "
            "(same class; regression within the router's tolerance). Rolled back when an "
            "anytime-valid bound shows the share below it; a pass needs the bound above."
        ),
    )


class CustomCheck(_Spec):
    """A PromQL check that must stay within [min, max]."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="Name of the check in verdicts and events.",
    )
    query: str = Field(
        min_length=1,
        max_length=4096,
        description=(
            "PromQL returning one number. Placeholders: {{deployment}}, {{namespace}}, "
            "{{version}} (the canary's), {{track}} (always 'canary')."
        ),
    )
    min_value: float | None = Field(default=None, alias="min", description="Lowest passing value.")
    max_value: float | None = Field(default=None, alias="max", description="Highest passing value.")

    @model_validator(mode="after")
    def _bounds(self) -> CustomCheck:
        if self.min_value is None and self.max_value is None:
            raise ValueError(f"custom check {self.name!r}: set min, max or both")
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValueError(f"custom check {self.name!r}: min must be <= max")
        return self


class Metrics(_Spec):
    error_rate: ErrorRateCheck = Field(
        default_factory=ErrorRateCheck, description="Server-error rate, absolute and vs stable."
    )
    latency: LatencyCheck = Field(
        default_factory=LatencyCheck, description="Latency quantile, absolute and vs stable."
    )
    input_drift: InputDriftCheck | None = Field(
        default=None, description="Canary input drift vs its own profile, relative to stable's."
    )
    prediction_drift: PredictionDriftCheck | None = Field(
        default=None, description="Canary prediction distribution vs stable's."
    )
    feedback_accuracy: FeedbackAccuracyCheck | None = Field(
        default=None, description="Accuracy from delayed ground truth (feedback endpoint)."
    )
    agreement: AgreementCheck | None = Field(
        default=None,
        description=(
            "Agreement of canary and stable on mirrored requests (needs traffic.agreement "
            "with percent > 0); catches wrong answers without labels."
        ),
    )
    custom: list[CustomCheck] = Field(
        default_factory=list,
        max_length=20,
        description="Extra PromQL checks; names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _unique_custom(self) -> Metrics:
        names = [c.name for c in self.custom]
        if len(names) != len(set(names)):
            raise ValueError("metrics.custom: check names must be unique")
        return self


class Analysis(_Spec):
    interval: Duration = Field(
        default="30s",
        description=(
            "Time between analysis runs. The sequential tests may run as often as you like "
            "without raising the false-rollback probability: shorter acts sooner."
        ),
    )
    window: Duration = Field(
        default="2m",
        description=(
            "Deprecated and ignored: the tests use all counts since the step (or the "
            "rollout) began. Kept so that existing specs stay valid."
        ),
    )
    alpha: float = Field(
        default=0.01,
        gt=0,
        le=0.5,
        description=(
            "Per-rollout probability of rolling back a canary that is no worse than stable "
            "(and of passing a step on a bound that does not hold), however often analysis "
            "runs; split among the sequential checks."
        ),
    )
    pass_risk: float = Field(
        default=0.05,
        gt=0,
        le=0.5,
        description=(
            "Per-rollout probability that a step passes on confidence bounds that do not "
            "hold (a canary worse than a tolerance promoted); split among the sequential "
            "checks. Larger passes healthy canaries on fewer requests."
        ),
    )
    min_samples: Int = Field(
        default=100,
        ge=1,
        description=(
            "Canary requests at the current step before the step may pass (a failure needs "
            "no minimum: the tests are valid at any sample size)."
        ),
    )
    failure_limit: Int = Field(
        default=2,
        ge=1,
        le=100,
        description=(
            "Failed runs in a row of one window check (inputDrift, custom) that roll the "
            "canary back. Sequential checks roll back on their first crossing."
        ),
    )
    step_deadline: Duration = Field(
        default="10m",
        description=(
            "How long a step may go without evidence either way before onInconclusive "
            "applies (counted from the step's start)."
        ),
    )
    on_inconclusive: Literal["hold", "rollback", "promote"] = Field(
        default="hold",
        description=(
            "What happens at stepDeadline when the evidence is still insufficient: hold the "
            "step (Warning event, status says how many more requests would decide), roll "
            "back, or pass the step anyway."
        ),
    )
    on_provider_error: OnProviderError = Field(
        default_factory=OnProviderError, description="What to do when Prometheus cannot answer."
    )
    max_staleness: Duration = Field(
        default="2m",
        description="Metrics older than this count as a provider error (scraping stopped).",
    )
    metrics: Metrics = Field(default_factory=Metrics, description="The checks to run.")

    @model_validator(mode="after")
    def _positive_durations(self) -> Analysis:
        # 0s would mean a hot analysis loop, queries over no time, or every answer stale.
        for name, text in (
            ("interval", self.interval),
            ("window", self.window),
            ("stepDeadline", self.step_deadline),
            ("maxStaleness", self.max_staleness),
        ):
            if parse_duration(text) <= 0:
                raise ValueError(f"rollout.analysis.{name} must be longer than 0s")
        return self
