"""``ModelDeployment.spec`` (pure): the model, how it is served, the rollout steps, traffic,
controls and notifications; ``revision_id`` names a model revision.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Literal

from mlrollout.operator.model.analysis import Analysis
from mlrollout.operator.model.base import _Spec
from mlrollout.operator.model.units import (
    MANUAL,
    Duration,
    Int,
    Pause,
    Quantity,
    parse_duration,
    quantity_value,
)
from pydantic import (
    Field,
    field_validator,
    model_validator,
)


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


_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")


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


def revision_id(model: ModelRef) -> str:
    """Short stable hash of the model spec: the identity of a revision."""
    canonical = json.dumps(
        {"name": model.name, "version": model.version, "uri": model.uri, "sha256": model.sha256},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]
