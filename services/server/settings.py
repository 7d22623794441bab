"""Per-instance server settings, carried from ``mlrollout serve`` to BentoML workers by env.

Pure: no BentoML import, so the CLI can validate settings before starting anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mlrollout.services.model.feedback import DEFAULT_CAPACITY_BYTES, MIN_CAPACITY_BYTES

from .app import DEFAULT_MAX_BODY_BYTES
from .guard import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_HEADER_BYTES,
    HttpLimits,
)

TRACKS = ("stable", "canary")
# OpenTelemetry's exclude list is matched with re.search against the full URL.
HOT_ROUTES = ("/predict", "/feedback", "/metrics", "/v2/", "/livez", "/readyz", "/healthz")


class SettingsError(ValueError):
    """A setting has a value the server cannot run with."""


@dataclass(frozen=True)
class Settings:
    artifact: str = ""
    sha256: str = ""
    deployment: str = "default"
    track: str = "stable"
    workers: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    tracing: bool = False
    access_log: bool = False
    # Rows per drift test window: smaller windows alarm sooner on low traffic, at the cost of
    # power per window (the false-alarm rate per window stays as stated; docs/drift.md).
    drift_window: int = 1000
    # Predictions kept for feedback, in bytes (docs/serving.md, "Feedback"); 0 = off.
    feedback_bytes: int = DEFAULT_CAPACITY_BYTES
    # HTTP limits enforced before a request reaches the app (guard.py) and on the body.
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    @property
    def http_limits(self) -> HttpLimits:
        return HttpLimits(self.max_header_bytes, self.header_timeout_s, self.body_timeout_s)

    def __post_init__(self) -> None:
        if self.track not in TRACKS:
            raise SettingsError(f"track must be one of {', '.join(TRACKS)}, got {self.track!r}")
        if self.workers != 1:
            # Each worker keeps its own counters, so a scrape would see whichever worker
            # answered and Prometheus would read the jumps as counter resets.
            raise SettingsError(
                f"workers must be 1 (got {self.workers}): metrics are kept per process; "
                "scale with more replicas instead"
            )
        if self.max_body_bytes < 1024:
            raise SettingsError(
                f"max body size must be at least 1024 bytes, got {self.max_body_bytes}"
            )
        if not 50 <= self.drift_window <= 1_000_000:
            raise SettingsError(
                f"drift window must be between 50 and 1000000 rows, got {self.drift_window}"
            )
        if not self.deployment or len(self.deployment) > 63:
            raise SettingsError("deployment must be a name of 1 to 63 characters")
        if self.feedback_bytes != 0 and not MIN_CAPACITY_BYTES <= self.feedback_bytes <= 1 << 40:
            raise SettingsError(
                f"feedback store size must be 0 (off) or at least {MIN_CAPACITY_BYTES} bytes, "
                f"got {self.feedback_bytes}"
            )
        for problem in self.http_limits.problems():
            raise SettingsError(problem)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            artifact=env.get("MLROLLOUT_ARTIFACT", ""),
            sha256=env.get("MLROLLOUT_SHA256", ""),
            deployment=env.get("MLROLLOUT_DEPLOYMENT", "default"),
            track=env.get("MLROLLOUT_TRACK", "stable"),
            workers=env_int(env, "MLROLLOUT_WORKERS", 1),
            max_body_bytes=env_int(env, "MLROLLOUT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            tracing=env.get("MLROLLOUT_TRACING", "0") not in ("", "0", "false"),
            access_log=env.get("MLROLLOUT_ACCESS_LOG", "0") not in ("", "0", "false"),
            drift_window=env_int(env, "MLROLLOUT_DRIFT_WINDOW", 1000),
            feedback_bytes=env_int(env, "MLROLLOUT_FEEDBACK_BYTES", DEFAULT_CAPACITY_BYTES),
            max_header_bytes=env_int(env, "MLROLLOUT_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES),
            header_timeout_s=env_float(env, "MLROLLOUT_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=env_float(env, "MLROLLOUT_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S),
        )

    def to_env(self) -> dict[str, str]:
        return {
            "MLROLLOUT_ARTIFACT": self.artifact,
            "MLROLLOUT_SHA256": self.sha256,
            "MLROLLOUT_DEPLOYMENT": self.deployment,
            "MLROLLOUT_TRACK": self.track,
            "MLROLLOUT_WORKERS": str(self.workers),
            "MLROLLOUT_MAX_BODY_BYTES": str(self.max_body_bytes),
            "MLROLLOUT_TRACING": "1" if self.tracing else "0",
            "MLROLLOUT_ACCESS_LOG": "1" if self.access_log else "0",
            "MLROLLOUT_DRIFT_WINDOW": str(self.drift_window),
            "MLROLLOUT_FEEDBACK_BYTES": str(self.feedback_bytes),
            "MLROLLOUT_MAX_HEADER_BYTES": str(self.max_header_bytes),
            "MLROLLOUT_HEADER_TIMEOUT_S": repr(self.header_timeout_s),
            "MLROLLOUT_BODY_TIMEOUT_S": repr(self.body_timeout_s),
        }


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
