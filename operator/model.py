"""The ModelDeployment resource: pydantic models of spec and status.

These models are the one source of the CRD (``operator/crd.py`` renders them), of spec
validation in local mode, and of the status the engine reads and writes. Every field
carries a description because ``kubectl explain`` shows it to users.

Rules that span fields are written twice on purpose: as a pydantic validator (checked in
local mode and by the operator before acting) and as a CEL rule in ``CEL_RULES`` below
(checked by the API server before the object is stored). ``tests/unit/test_model_spec.py``
keeps the two in step with one table of bad specs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

# The API names live in api.py; they stay importable from here.
from mlrollout.operator.api import GROUP as GROUP
from mlrollout.operator.api import KIND as KIND
from mlrollout.operator.api import PLURAL as PLURAL
from mlrollout.operator.api import VERSION as VERSION
from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import WithJsonSchema

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h)")
_UNIT_NANOS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
MANUAL = "manual"
# Go's time.Duration is an int64 of nanoseconds: 2562047h47m16.854775807s at most. The API
# server's CEL duration() refuses longer ones, so the models do too.
MAX_DURATION_NANOS = 2**63 - 1
MAX_DURATION_TEXT = "2562047h47m16.854775807s"


def go_duration_nanos(text: str) -> int:
    """Nanoseconds in ``text`` exactly as Go's ``time.ParseDuration`` computes them (integer
    part times the unit, plus the fraction scaled in float64 and truncated), refusing what
    overflows an int64. Only the grammar of ``DURATION_PATTERN`` is accepted."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    total = 0
    for whole, fraction, unit_name in _DURATION_PART.findall(text):
        unit = _UNIT_NANOS[unit_name]
        value = int(whole)
        if value > (1 << 63) // unit:
            raise _too_long(text)
        value *= unit
        if fraction:
            # Go keeps the leading fraction digits while they fit in an int64.
            f, scale = 0, 1.0
            for digit in fraction:
                if f > ((1 << 63) - 1) // 10 or f * 10 + int(digit) > 1 << 63:
                    break
                f, scale = f * 10 + int(digit), scale * 10
            value += int(float(f) * (float(unit) / scale))
            if value > 1 << 63:
                raise _too_long(text)
        total += value
        if total > 1 << 63:
            raise _too_long(text)
    if total > MAX_DURATION_NANOS:
        raise _too_long(text)
    return total


def _too_long(text: str) -> ValueError:
    return ValueError(f"invalid duration {text!r}: longer than Go allows ({MAX_DURATION_TEXT})")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``5m`` or ``1h30m`` (Go/Prometheus style)."""
    return go_duration_nanos(text) / 1e9


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _pause(value: str) -> str:
    if value != MANUAL and not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(
            f"invalid pause {value!r}: use a duration (e.g. 30s, 5m, 1h30m) or 'manual'"
        )
    return value


# A duration field: the CRD keeps the pattern (the API server checks it); local mode and the
# operator say what to write ("use e.g. 30s, 5m, 1h30m") instead of showing the regex.
Duration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
PAUSE_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h))+|manual)$"
Pause = Annotated[
    str, AfterValidator(_pause), WithJsonSchema({"type": "string", "pattern": PAUSE_PATTERN})
]


class _Spec(BaseModel):
    """Spec models accept exactly what the API server accepts (kubectl, fieldValidation=Strict):

    - unknown fields are an error (a typo must not be silently ignored locally);
    - strict types: no ``"10"`` for a number, no ``true`` for an integer, no ``"yes"`` for a
      boolean; a whole float (``10.0``) is an integer, as kube-openapi takes it and as kubectl
      sends it (``Int``);
    - ``null`` for a field is as if it were absent, as the API server prunes it (or applies
      the field's default);
    - no NaN or infinity (JSON has none).

    ``tests/unit/test_spec_parity.py`` checks this against the CRD over generated specs.
    """

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: object) -> object:
        if isinstance(data, dict) and any(v is None for v in data.values()):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            return {k: v for k, v in data.items() if not (v is None and k in known)}
        return data


_MAX_SAFE_FLOAT_INT = 2**53 - 1


def _json_integer(value: object) -> object:
    """Integers as the API server takes them: int64, or a whole float within 2^53."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_FLOAT_INT:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError("integer out of the 64-bit range")
    return value


Int = Annotated[int, BeforeValidator(_json_integer)]


class _Status(BaseModel):
    # Status written by a newer or older operator must still load: ignore what we do not know.
    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="ignore",
    )


# --------------------------------------------------------------------------- spec


class ModelRef(_Spec):
    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="Model name, as in the artifact's model card (model.json).",
    )
    version: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Model version. Changing it (or uri/sha256) starts a canary rollout.",
    )
    uri: str = Field(
        min_length=1,
        max_length=2048,
        description=(
            "Where the model artifact lives: an http(s) URL of a .tar.gz or a directory path "
            "(local mode). The artifact holds model.onnx, profile.json and model.json."
        ),
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[a-f0-9]{64}$",
        description="Expected sha256 of model.onnx; the server refuses to load a mismatch.",
    )


class Autoscaling(_Spec):
    min_replicas: Int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: Int = Field(default=3, ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization_percentage: Int = Field(
        default=70,
        ge=1,
        le=100,
        alias="targetCPUUtilizationPercentage",
        description="Average CPU utilisation (percent of requests) the autoscaler aims for.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must be <= maxReplicas")
        return self


# Kubernetes quantities as strings ("500m", "1.5Gi", "1e9"); the API server refuses others
# only when the operator creates the Deployment, too late for a clear status.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX = {
    **{"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0},
    **{s: 1000.0**i for i, s in enumerate("kMGTPE", 1)},
    **{s + "i": 1024.0**i for i, s in enumerate("KMGTPE", 1)},
}
_EXACT_SUFFIX = {
    **{"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)},
    **{s: Decimal(1000) ** i for i, s in enumerate("kMGTPE", 1)},
    **{s + "i": Decimal(1024) ** i for i, s in enumerate("KMGTPE", 1)},
}
_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def quantity_value(text: str) -> Decimal:
    """The exact value of a Kubernetes quantity, for comparisons as the API server makes them."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}: use e.g. 500m, 2, 256Mi, 1Gi")
    number, suffix = match.group(1), match.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return Decimal(number + suffix)
    factor = _EXACT_SUFFIX[suffix]
    return Decimal(number) * factor


def parse_quantity(text: str) -> float:
    """The value of a Kubernetes quantity ("500m" -> 0.5, "1Gi" -> 1073741824.0)."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}: use e.g. 500m, 2, 256Mi, 1Gi")
    number, suffix = match.group(1), match.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return float(number + suffix)
    return float(number) * _SUFFIX[suffix]


QUANTITY_MAX_LENGTH = 64


def _quantity(text: str) -> str:
    if len(text) > QUANTITY_MAX_LENGTH:
        raise ValueError(f"quantity is longer than {QUANTITY_MAX_LENGTH} characters")
    parse_quantity(text)
    return text


def _quantity_text(value: object) -> object:
    # YAML users write `cpu: 2` and `nvidia.com/gpu: 1`, as in any Deployment; a negative
    # number becomes "-1", which the pattern refuses (the CRD's CEL rule refuses the integer).
    value = _json_integer(value)
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# In the CRD: int-or-string with the pattern (the shape Kubernetes uses for quantities);
# locally the validator gives the clearer message.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
        }
    ),
]


def _resource_name_ok(name: str) -> bool:
    # What a container may request: the standard names, hugepages, or an extended resource
    # with a domain (nvidia.com/gpu).
    return name in _STANDARD_RESOURCES or name.startswith("hugepages-") or "/" in name


MAX_RESOURCES = 16


class Resources(_Spec):
    requests: dict[str, Quantity] = Field(
        default_factory=lambda: {"cpu": "100m", "memory": "256Mi"},
        max_length=MAX_RESOURCES,
        description="Resource requests per model server container (Kubernetes quantities).",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=lambda: {"memory": "1Gi"},
        max_length=MAX_RESOURCES,
        description=(
            "Resource limits per model server container (Kubernetes quantities). Replaced "
            "whole when set; a request may not exceed its limit."
        ),
    )

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _null_quantities_are_absent(cls, value: object) -> object:
        # The API server prunes a null map value as it prunes a null field.
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if v is not None}
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for kind, values in (("requests", self.requests), ("limits", self.limits)):
            bad = [n for n in values if not _resource_name_ok(n)]
            if bad:
                raise ValueError(
                    f"resources.{kind}: unknown resource name {bad[0]!r} (use cpu, memory, "
                    "ephemeral-storage, hugepages-<size> or a domain-qualified name)"
                )
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and quantity_value(request) > quantity_value(limit):
                raise ValueError(
                    f"resources: requests.{name} {request} is more than limits.{name} {limit}"
                )
        return self


class EnvVar(_Spec):
    """An environment variable of the model server container."""

    name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable name.",
    )
    value: str = Field(default="", description="Environment variable value.")


class Serving(_Spec):
    replicas: Int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Fixed replica count per revision (default 1). Exclusive with autoscaling.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Horizontal autoscaling per revision. Exclusive with replicas.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Model server container resources."
    )
    image: str = Field(
        default="ghcr.io/mlrollout/serving:0.1.0",
        min_length=1,
        description="Model server image (runs `mlrollout serve`).",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables for the model server container; names are unique.",
        # A list map: the API server refuses a name given twice instead of keeping the last.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _unique_env(self) -> Serving:
        names = [e.name for e in self.env]
        if len(names) != len(set(names)):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"serving.env: names must be unique, {', '.join(dup)} given twice")
        return self

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> Serving:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("serving: set either replicas or autoscaling, not both")
        return self

    @property
    def effective_replicas(self) -> int:
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


class Step(_Spec):
    """One canary step: a traffic weight, held until analysis passes and the pause ends."""

    weight: Int = Field(
        ge=0,
        le=100,
        description=(
            "Percent of traffic sent to the canary. 0 runs the step on mirrored traffic only "
            "(needs traffic.shadowPercent > 0)."
        ),
    )
    pause: Pause | None = Field(
        default=None,
        description=(
            "Least time at this weight (e.g. 30s, 5m), counted from the step's start; the "
            "step also needs a passing analysis run. Absent: advance as soon as analysis "
            "passes. 'manual': wait for controls.resume (or controls.promote)."
        ),
    )

    @model_validator(mode="after")
    def _pause_fits(self) -> Step:
        if self.pause is not None and self.pause != MANUAL:
            parse_duration(self.pause)  # refuses what Go's time.Duration cannot hold
        return self

    @property
    def pause_seconds(self) -> float | None:
        """Seconds to pause; None when absent or manual."""
        if self.pause is None or self.pause == MANUAL:
            return None
        return parse_duration(self.pause)


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


class Rollout(_Spec):
    steps: list[Step] = Field(
        default_factory=lambda: [Step(weight=10), Step(weight=50)],
        min_length=1,
        max_length=20,
        description="Canary weights, in order; after the last step the canary is promoted.",
    )
    progress_deadline: Duration = Field(
        default="10m",
        description=(
            "How long a revision may stay not ready. A canary past it is rolled back; a first "
            "deployment past it turns Degraded."
        ),
    )
    analysis: Analysis = Field(default_factory=Analysis, description="How the canary is judged.")

    @model_validator(mode="after")
    def _deadline_positive(self) -> Rollout:
        # 0s would roll back every canary before it could start.
        if parse_duration(self.progress_deadline) <= 0:
            raise ValueError("rollout.progressDeadline must be longer than 0s")
        return self

    @model_validator(mode="after")
    def _steps_non_decreasing(self) -> Rollout:
        weights = [s.weight for s in self.steps]
        if any(b < a for a, b in itertools.pairwise(weights)):
            raise ValueError("rollout.steps: weights must be non-decreasing")
        return self


class ParentRef(_Spec):
    """A Gateway (Gateway API) the HTTPRoute attaches to."""

    name: str = Field(min_length=1, description="Gateway name.")
    namespace: str | None = Field(default=None, description="Gateway namespace (default: own).")
    section_name: str | None = Field(default=None, description="Listener name on the Gateway.")


class Gateway(_Spec):
    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=16, description="Gateways the HTTPRoute attaches to."
    )
    hostnames: list[str] = Field(
        default_factory=list, max_length=16, description="Hostnames the HTTPRoute matches."
    )


class AgreementMirror(_Spec):
    """Paired agreement: the router mirrors a share of one track's requests to the other."""

    percent: float = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Percent of the requests served by `source` that the router also sends to the "
            "other track, comparing the two answers row by row (mlrollout_router_agreement_total)."
        ),
    )
    source: Literal["canary", "stable"] = Field(
        default="canary",
        description=(
            "Whose requests are mirrored: canary (its live answers checked against stable; "
            "each mirror costs stable one prediction) or stable (shadow traffic to the canary)."
        ),
    )
    relative_tolerance: float = Field(
        default=1e-3, ge=0, description="Numbers (scores, regression outputs) within this agree."
    )
    absolute_tolerance: float = Field(
        default=0.0001, ge=0, description="Numbers within this absolute difference agree."
    )


class RouterGuard(_Spec):
    """Sequential tests the built-in router runs on its own live counts (docs/routing.md)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Let the router take the canary to weight 0 at once when its errors (or, with "
            "analysis.metrics.agreement, its disagreements) cross an anytime-valid test; the "
            "operator then records the rollback. Needs the builtin router."
        ),
    )
    alpha: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description=(
            "Probability that the guard takes off a canary no worse than stable, over the "
            "canary's whole life (per router replica and test). Default: "
            "rollout.analysis.alpha / 2."
        ),
    )
    max_ratio: float = Field(
        default=1.0,
        ge=1,
        le=1e6,
        description=(
            "Tolerated ratio of the canary's error rate to stable's: the guard acts only on "
            "evidence of a larger ratio."
        ),
    )


class Traffic(_Spec):
    router: Literal["builtin", "gatewayAPI"] = Field(
        default="builtin",
        description=(
            "builtin: the mlrollout router (weights, sticky header, shadow traffic). "
            "gatewayAPI: an HTTPRoute with weighted backends (no shadow)."
        ),
    )
    gateway: Gateway | None = Field(default=None, description="Required when router=gatewayAPI.")
    sticky_header: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9-]+$",
        description="Request header whose value pins a caller to one track (e.g. x-user-id).",
    )
    shadow_percent: Int = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent of stable traffic mirrored to the canary; responses discarded.",
    )
    track_header: Literal["off", "weighted", "always"] = Field(
        default="off",
        description=(
            "Whether a client may pick the track with the x-mlrollout-track header. off: "
            "ignored. weighted: stable, or a canary while its weight is above 0. always: also "
            "a canary at weight 0 (e.g. a shadow step). A rolled-back canary is never "
            "reachable. Feedback is pinned to the track that predicted in every mode."
        ),
    )

    agreement: AgreementMirror | None = Field(
        default=None,
        description="Paired agreement: mirror and compare answers (needs the builtin router).",
    )
    guard: RouterGuard = Field(
        default_factory=RouterGuard,
        description="The router guard (builtin router only; ignored with gatewayAPI).",
    )

    @model_validator(mode="after")
    def _gateway(self) -> Traffic:
        if self.router == "gatewayAPI" and self.gateway is None:
            raise ValueError("traffic.gateway is required when traffic.router is gatewayAPI")
        if self.router == "gatewayAPI" and self.shadow_percent:
            raise ValueError("traffic.shadowPercent needs the builtin router")
        if self.router == "gatewayAPI" and self.track_header != "off":
            raise ValueError("traffic.trackHeader needs the builtin router")
        if self.router == "gatewayAPI" and self.agreement is not None and self.agreement.percent:
            raise ValueError("traffic.agreement needs the builtin router")
        return self


class Controls(_Spec):
    promote: str | None = Field(
        default=None,
        max_length=128,
        description="Set to a new token to promote the canary now (skips remaining steps).",
    )
    resume: str | None = Field(
        default=None,
        max_length=128,
        description="Set to a new token to end a pause (manual or timed) at the current step.",
    )
    abort: str | None = Field(
        default=None, max_length=128, description="Set to a new token to roll the canary back."
    )
    retry: str | None = Field(
        default=None,
        max_length=128,
        description="Set to a new token to try a rolled-back revision again.",
    )
    paused: bool = Field(
        default=False,
        description=(
            "Hold the canary at its current step while true (analysis keeps running and can "
            "still roll it back; promote and abort still act). Set false to continue."
        ),
    )


NotifyEvent = Literal["rolloutStarted", "promoted", "rolledBack", "stableDrift"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("rolloutStarted", "promoted", "rolledBack", "stableDrift")


class Webhook(_Spec):
    """An HTTP endpoint told about rollout events (JSON, or a Slack-compatible body)."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description=(
            "Where to POST (http or https). Anyone who can read the ModelDeployment can read "
            "it: use an endpoint that does not rely on a secret in its URL, or a relay."
        ),
    )
    format: Literal["json", "slack"] = Field(
        default="json",
        description="json: mlrollout's event document; slack: a Slack incoming-webhook body.",
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        min_length=1,
        description="Which events to send: rolloutStarted, promoted, rolledBack, stableDrift.",
    )
    timeout: Duration = Field(
        default="5s",
        description="Longest wait for the endpoint per event (at most 30s); never delays a rollout.",
    )

    @model_validator(mode="after")
    def _timeout_bounded(self) -> Webhook:
        if not 0 < parse_duration(self.timeout) <= 30:
            raise ValueError("notifications.webhooks[].timeout must be in (0s, 30s]")
        return self


class Notifications(_Spec):
    webhooks: list[Webhook] = Field(
        default_factory=list, max_length=5, description="Endpoints told about rollout events."
    )


class ModelDeploymentSpec(_Spec):
    model: ModelRef = Field(description="The model to serve; changing it starts a rollout.")
    serving: Serving = Field(default_factory=Serving, description="How each revision runs.")
    rollout: Rollout = Field(default_factory=Rollout, description="How a new model rolls out.")
    traffic: Traffic = Field(default_factory=Traffic, description="How traffic reaches models.")
    controls: Controls = Field(
        default_factory=Controls,
        description="One-shot operator actions that work from Git: change a token to act.",
    )
    notifications: Notifications | None = Field(
        default=None,
        description="Webhooks told when a rollout starts, is promoted or rolled back, or stable drifts.",
    )

    @model_validator(mode="after")
    def _agreement_gate_needs_mirroring(self) -> ModelDeploymentSpec:
        gate = self.rollout.analysis.metrics.agreement
        mirror = self.traffic.agreement
        if gate is not None and gate.enabled and (mirror is None or not mirror.percent):
            raise ValueError(
                "rollout.analysis.metrics.agreement needs traffic.agreement.percent > 0 "
                "(the router mirrors that share of requests to compare the answers)"
            )
        return self

    @model_validator(mode="after")
    def _shadow_for_zero_weight(self) -> ModelDeploymentSpec:
        if any(s.weight == 0 for s in self.rollout.steps) and self.traffic.shadow_percent == 0:
            raise ValueError(
                "a rollout step with weight 0 needs traffic.shadowPercent > 0 "
                "(only mirrored traffic reaches the canary)"
            )
        return self


# CEL rules enforced by the API server, keyed by the model they attach to. Each mirrors a
# model_validator above.
CEL_RULES: dict[type[BaseModel], list[dict[str, str]]] = {
    ModelDeploymentSpec: [
        {
            "rule": "!has(self.rollout) || !has(self.rollout.steps) || "
            "!self.rollout.steps.exists(s, s.weight == 0) || (has(self.traffic) && "
            "has(self.traffic.shadowPercent) && self.traffic.shadowPercent > 0)",
            "message": "a step with weight 0 needs traffic.shadowPercent > 0",
        },
        {
            "rule": "!has(self.rollout) || !has(self.rollout.analysis) || "
            "!has(self.rollout.analysis.metrics) || !has(self.rollout.analysis.metrics.agreement)"
            " || (has(self.rollout.analysis.metrics.agreement.enabled) && "
            "!self.rollout.analysis.metrics.agreement.enabled) || (has(self.traffic) && "
            "has(self.traffic.agreement) && has(self.traffic.agreement.percent) && "
            "self.traffic.agreement.percent > 0)",
            "message": "the agreement gate needs traffic.agreement.percent > 0",
        },
    ],
    Resources: [
        *(
            {
                "rule": f"!has(self.{kind}) || self.{kind}.all(k, k in ['cpu', 'memory', "
                "'ephemeral-storage'] || k.startsWith('hugepages-') || k.contains('/'))",
                "message": f"{kind}: unknown resource name (use cpu, memory, ephemeral-storage, "
                "hugepages-<size> or a domain-qualified name)",
            }
            for kind in ("requests", "limits")
        ),
        *(
            {
                "rule": f"!has(self.{kind}) || self.{kind}.all(k, type(self.{kind}[k]) != int "
                f"|| self.{kind}[k] >= 0)",
                "message": f"{kind}: a quantity may not be negative",
            }
            for kind in ("requests", "limits")
        ),
        {
            "rule": "!has(self.requests) || !has(self.limits) || self.requests.all(k, "
            "!(k in self.limits) || quantity(string(self.requests[k])).compareTo("
            "quantity(string(self.limits[k]))) <= 0)",
            "message": "a request may not exceed its limit",
        },
    ],
    Step: [
        {
            "rule": "!has(self.pause) || self.pause == 'manual' || "
            "duration(self.pause) >= duration('0s')",
            "message": f"pause must be a duration Go can hold (at most {MAX_DURATION_TEXT})",
        }
    ],
    OnProviderError: [
        {
            "rule": "duration(self.maxHold) >= duration('0s')",
            "message": f"maxHold must be a duration Go can hold (at most {MAX_DURATION_TEXT})",
        }
    ],
    Autoscaling: [
        {
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must be <= maxReplicas",
        }
    ],
    Serving: [
        {
            "rule": "!(has(self.replicas) && has(self.autoscaling))",
            "message": "set either replicas or autoscaling, not both",
        }
    ],
    CustomCheck: [
        {"rule": "has(self.min) || has(self.max)", "message": "set min, max or both"},
        {
            "rule": "!(has(self.min) && has(self.max)) || self.min <= self.max",
            "message": "min must be <= max",
        },
    ],
    Rollout: [
        {
            "rule": "self.steps.map(s, s.weight).isSorted()",
            "message": "steps weights must be non-decreasing",
        },
        {
            "rule": "duration(self.progressDeadline) > duration('0s')",
            "message": "progressDeadline must be longer than 0s",
        },
    ],
    Analysis: [
        {
            "rule": f"duration(self.{name}) > duration('0s')",
            "message": f"{name} must be longer than 0s",
        }
        for name in ("interval", "window", "maxStaleness", "stepDeadline")
    ],
    Webhook: [
        {
            "rule": "!has(self.timeout) || (duration(self.timeout) > duration('0s') && "
            "duration(self.timeout) <= duration('30s'))",
            "message": "timeout must be in (0s, 30s]",
        }
    ],
    Traffic: [
        {
            "rule": "self.router != 'gatewayAPI' || has(self.gateway)",
            "message": "gateway is required when router is gatewayAPI",
        },
        {
            "rule": "self.router != 'gatewayAPI' || !has(self.shadowPercent) || "
            "self.shadowPercent == 0",
            "message": "shadowPercent needs the builtin router",
        },
        {
            "rule": "self.router != 'gatewayAPI' || !has(self.trackHeader) || "
            "self.trackHeader == 'off'",
            "message": "trackHeader needs the builtin router",
        },
        {
            "rule": "self.router != 'gatewayAPI' || !has(self.agreement) || "
            "!has(self.agreement.percent) || self.agreement.percent == 0.0",
            "message": "agreement needs the builtin router",
        },
    ],
}


def revision_id(model: ModelRef) -> str:
    """Short stable hash of the model spec: the identity of a revision."""
    canonical = json.dumps(
        {"name": model.name, "version": model.version, "uri": model.uri, "sha256": model.sha256},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- status


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
