"""The rules that span fields, as CEL for the API server (``x-kubernetes-validations``).

Each is also a pydantic validator on the model it is keyed by (checked in local mode and
by the operator before acting); ``tests/unit/test_model_spec.py`` keeps the two in step.
"""

from __future__ import annotations

from mlrollout.operator.model.analysis import Analysis, CustomCheck, OnProviderError
from mlrollout.operator.model.spec import (
    Autoscaling,
    ModelDeploymentSpec,
    Resources,
    Rollout,
    Serving,
    Step,
    Traffic,
    Webhook,
)
from mlrollout.operator.model.units import MAX_DURATION_TEXT
from pydantic import (
    BaseModel,
)

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
