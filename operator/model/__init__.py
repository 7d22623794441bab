"""The ModelDeployment resource: pydantic models of spec and status.

Split by part: ``units`` (durations, quantities), ``base`` (model config), ``analysis``
(``spec.rollout.analysis``), ``spec``, ``status`` and ``cel`` (cross-field rules for the
API server); every public name is importable from here.

These models are the one source of the CRD (``operator/crd.py`` renders them), of spec
validation in local mode, and of the status the engine reads and writes. Every field
carries a description because ``kubectl explain`` shows it to users.

Rules that span fields are written twice on purpose: as a pydantic validator (checked in
local mode and by the operator before acting) and as a CEL rule in ``CEL_RULES`` (``cel.py``)
(checked by the API server before the object is stored). ``tests/unit/test_model_spec.py``
keeps the two in step with one table of bad specs.
"""

from __future__ import annotations

from mlrollout.operator.api import GROUP, KIND, PLURAL, VERSION
from mlrollout.operator.model.analysis import (
    AgreementCheck,
    Analysis,
    CustomCheck,
    ErrorRateCheck,
    FeedbackAccuracyCheck,
    InputDriftCheck,
    LatencyCheck,
    Metrics,
    OnProviderError,
    PredictionDriftCheck,
)
from mlrollout.operator.model.cel import CEL_RULES
from mlrollout.operator.model.spec import (
    MAX_RESOURCES,
    NOTIFY_EVENTS,
    AgreementMirror,
    Autoscaling,
    Controls,
    EnvVar,
    Gateway,
    ModelDeploymentSpec,
    ModelRef,
    Notifications,
    NotifyEvent,
    ParentRef,
    Resources,
    Rollout,
    RouterGuard,
    Serving,
    Step,
    Traffic,
    Webhook,
    revision_id,
)
from mlrollout.operator.model.status import (
    HISTORY_LIMIT,
    REJECTED_LIMIT,
    AnalysisStatus,
    Condition,
    ConditionStatus,
    ControlsStatus,
    HistoryEntry,
    ModelDeploymentStatus,
    Outcome,
    Phase,
    RejectedRevision,
    Revision,
    Verdict,
    Weights,
)
from mlrollout.operator.model.units import (
    DURATION_PATTERN,
    MANUAL,
    MAX_DURATION_NANOS,
    MAX_DURATION_TEXT,
    PAUSE_PATTERN,
    QUANTITY_MAX_LENGTH,
    QUANTITY_PATTERN,
    Duration,
    Int,
    Pause,
    Quantity,
    go_duration_nanos,
    parse_duration,
    parse_quantity,
    quantity_value,
)

__all__ = [
    "CEL_RULES",
    "DURATION_PATTERN",
    "GROUP",
    "HISTORY_LIMIT",
    "KIND",
    "MANUAL",
    "MAX_DURATION_NANOS",
    "MAX_DURATION_TEXT",
    "MAX_RESOURCES",
    "NOTIFY_EVENTS",
    "PAUSE_PATTERN",
    "PLURAL",
    "QUANTITY_MAX_LENGTH",
    "QUANTITY_PATTERN",
    "REJECTED_LIMIT",
    "VERSION",
    "AgreementCheck",
    "AgreementMirror",
    "Analysis",
    "AnalysisStatus",
    "Autoscaling",
    "Condition",
    "ConditionStatus",
    "Controls",
    "ControlsStatus",
    "CustomCheck",
    "Duration",
    "EnvVar",
    "ErrorRateCheck",
    "FeedbackAccuracyCheck",
    "Gateway",
    "HistoryEntry",
    "InputDriftCheck",
    "Int",
    "LatencyCheck",
    "Metrics",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelRef",
    "Notifications",
    "NotifyEvent",
    "OnProviderError",
    "Outcome",
    "ParentRef",
    "Pause",
    "Phase",
    "PredictionDriftCheck",
    "Quantity",
    "RejectedRevision",
    "Resources",
    "Revision",
    "Rollout",
    "RouterGuard",
    "Serving",
    "Step",
    "Traffic",
    "Verdict",
    "Webhook",
    "Weights",
    "go_duration_nanos",
    "parse_duration",
    "parse_quantity",
    "quantity_value",
    "revision_id",
]
