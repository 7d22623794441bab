"""Which rollout events to tell which webhooks, and the bodies to send (pure).

The engine's events are the source: RolloutStarted, Promoted, RolledBack or Aborted, and
InputDrift (stable drift). ``messages`` turns them into one body per webhook and event,
as mlrollout's JSON document or as a Slack incoming-webhook body (``{"text": ...}``).
Sending is the act layer's job (``operator/webhook.py``): bounded, in the background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlrollout.operator.interfaces import DeploymentKey, Event
from mlrollout.operator.model import Notifications, parse_duration
from pydantic import ValidationError

# engine event reason -> notification event name
EVENT_NAMES: dict[str, str] = {
    "RolloutStarted": "rolloutStarted",
    "Promoted": "promoted",
    "RolledBack": "rolledBack",
    "Aborted": "rolledBack",
    "InputDrift": "stableDrift",
}
_EMOJI = {
    "rolloutStarted": ":arrows_counterclockwise:",
    "promoted": ":white_check_mark:",
    "rolledBack": ":x:",
    "stableDrift": ":warning:",
}


@dataclass(frozen=True)
class Message:
    url: str
    body: dict[str, Any]
    timeout_s: float


def notifications_of(spec: Mapping[str, Any]) -> Notifications | None:
    raw = spec.get("notifications")
    if not raw:
        return None
    try:
        return Notifications.model_validate(raw)
    except (ValidationError, TypeError):
        return None  # an invalid spec is reported as InvalidSpec; nothing is sent


def messages(
    key: DeploymentKey, spec: Mapping[str, Any], events: Sequence[Event], now: datetime
) -> list[Message]:
    """One message per (webhook, event it subscribes to), in event order."""
    config = notifications_of(spec)
    if config is None or not config.webhooks:
        return []
    out = []
    for event in events:
        name = EVENT_NAMES.get(event.reason)
        if name is None:
            continue
        doc = {
            "deployment": key.name,
            "namespace": key.namespace,
            "event": name,
            "reason": event.reason,
            "type": event.type,
            "message": event.message,
            "time": now.isoformat(),
            "model": (spec.get("model") or {}).get("name"),
        }
        for hook in config.webhooks:
            if name not in hook.events:
                continue
            body = doc if hook.format == "json" else slack_body(doc)
            out.append(Message(hook.url, body, parse_duration(hook.timeout)))
    return out


def slack_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack (and Mattermost, Rocket.Chat) incoming-webhook body."""
    emoji = _EMOJI.get(str(doc["event"]), "")
    text = f"{emoji} *{doc['namespace']}/{doc['deployment']}* {doc['event']}: {doc['message']}"
    return {"text": text.strip(), "username": "mlrollout"}
