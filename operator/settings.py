"""Operator configuration from the environment, checked once at start-up.

Which namespaces to watch is kopf's own command line (``--namespace`` / ``--all-namespaces``);
everything else is here. A bad value stops the operator with one clear line naming the
variable, rather than a crash-looping pod with a traceback.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "MLROLLOUT_"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorSettings:
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_timeout: float = 5.0
    metrics_port: int = 8000  # operator's own /metrics; 0 turns it off
    api_timeout: float = 10.0
    watch_server_timeout: int = 300  # API server ends each watch after this; kopf re-opens it
    watch_client_timeout: int = 330
    # Lowest log level kopf also posts as a Kubernetes Event. Not INFO: kopf's "handler
    # succeeded" lines would cost API writes per change; the operator's own Events
    # (Deployed, RolloutStarted, Promoted, ...) tell the story, through kube.py.
    posting_level: str = "WARNING"
    router_image: str | None = None  # default: the ModelDeployment's serving image
    annotations_prefix: str = "mlrollout.io"
    # "cluster": kopf watches namespaces and CRDs as they come and go (needs cluster-wide
    # list/watch); "namespaced": only the namespaces given on the command line, with kopf's
    # scanning off, because that mode's RBAC grants nothing cluster-wide.
    namespace_mode: str = "cluster"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            prometheus_url=_url(env, "PROMETHEUS_URL", d.prometheus_url),
            prometheus_timeout=_number(env, "PROMETHEUS_TIMEOUT", d.prometheus_timeout, 0.1, 120),
            metrics_port=int(_number(env, "METRICS_PORT", d.metrics_port, 0, 65535)),
            api_timeout=_number(env, "API_TIMEOUT", d.api_timeout, 0.5, 300),
            watch_server_timeout=int(
                _number(env, "WATCH_SERVER_TIMEOUT", d.watch_server_timeout, 1, 3600)
            ),
            watch_client_timeout=int(
                _number(env, "WATCH_CLIENT_TIMEOUT", d.watch_client_timeout, 1, 3600)
            ),
            posting_level=_choice(
                env, "POSTING_LEVEL", d.posting_level, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            router_image=env.get(PREFIX + "ROUTER_IMAGE") or None,
            annotations_prefix=env.get(PREFIX + "ANNOTATIONS_PREFIX") or d.annotations_prefix,
            namespace_mode=_choice(
                env, "NAMESPACE_MODE", d.namespace_mode, ("cluster", "namespaced")
            ),
        )


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{PREFIX}{name}={raw!r} must be between {lo:g} and {hi:g}")
    return value


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(PREFIX + name) or default
    if not raw.startswith(("http://", "https://")):
        raise SettingsError(f"{PREFIX}{name}={raw!r} must start with http:// or https://")
    if not urllib.parse.urlparse(raw).hostname:
        raise SettingsError(f"{PREFIX}{name}={raw!r} has no host (e.g. http://prometheus:9090)")
    return raw.rstrip("/")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    """The allowed spelling of the value, matched case-insensitively."""
    raw = env.get(PREFIX + name) or default
    for option in allowed:
        if raw.lower() == option.lower():
            return option
    raise SettingsError(f"{PREFIX}{name}={raw!r} must be one of {', '.join(allowed)}")
