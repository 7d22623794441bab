"""Notifications: which events go to which webhook (pure), and sending that never blocks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mlrollout.operator.interfaces import DeploymentKey, Event
from mlrollout.operator.notify import Message, messages, slack_body
from mlrollout.operator.webhook import WebhookSender

KEY = DeploymentKey("team-a", "wine")
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EVENTS = (
    Event("Normal", "RolloutStarted", "canary v2 against stable v1"),
    Event("Normal", "AnalysisPassed", "errorRate pass"),
    Event("Warning", "RolledBack", "canary v2: analysis failed 2 times in a row (errorRate)"),
    Event("Warning", "InputDrift", "stable v1: alcohol drifted"),
)


def spec(*hooks: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"name": "wine"}, "notifications": {"webhooks": list(hooks)}}


def test_each_webhook_gets_the_events_it_asked_for() -> None:
    out = messages(
        KEY,
        spec(
            {"url": "http://127.0.0.1:1/all"},
            {"url": "http://127.0.0.1:1/slack", "format": "slack", "events": ["rolledBack"]},
        ),
        EVENTS,
        NOW,
    )
    assert [(m.url.rsplit("/", 1)[1], m.body.get("event")) for m in out] == [
        ("all", "rolloutStarted"),
        ("all", "rolledBack"),
        ("slack", None),  # a Slack body has text only
        ("all", "stableDrift"),
    ]
    doc = out[0].body
    assert doc == {
        "deployment": "wine",
        "namespace": "team-a",
        "event": "rolloutStarted",
        "reason": "RolloutStarted",
        "type": "Normal",
        "message": "canary v2 against stable v1",
        "time": "2026-01-01T12:00:00+00:00",
        "model": "wine",
    }
    assert out[2].body["text"].startswith(":x: *team-a/wine* rolledBack: canary v2")
    assert out[0].timeout_s == 5.0


def test_no_notifications_configured_or_invalid_sends_nothing() -> None:
    assert messages(KEY, {"model": {}}, EVENTS, NOW) == []
    assert messages(KEY, spec({"url": "ftp://nope"}), EVENTS, NOW) == []


def test_aborted_counts_as_rolled_back() -> None:
    out = messages(KEY, spec({"url": "http://x/h"}), (Event("Warning", "Aborted", "a"),), NOW)
    assert [m.body["event"] for m in out] == ["rolledBack"]
    assert slack_body(out[0].body)["username"] == "mlrollout"


class _Hook(BaseHTTPRequestHandler):
    received: list[Any]
    delay = 0.0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        self.received.append(json.loads(body))
        try:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up (its timeout), as intended

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "delay": 0.0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond()


def test_sender_posts_json_in_the_background(endpoint: tuple[str, type[_Hook]]) -> None:
    url, hook = endpoint
    sender = WebhookSender()
    sender.send(messages(KEY, spec({"url": url}), EVENTS, NOW))
    _wait(lambda: len(hook.received) == 3)
    assert [b["event"] for b in hook.received] == ["rolloutStarted", "rolledBack", "stableDrift"]
    sender.close()
    assert (sender.sent, sender.failed, sender.dropped) == (3, 0, 0)


def test_a_slow_endpoint_never_blocks_and_a_full_queue_drops(
    endpoint: tuple[str, type[_Hook]],
) -> None:
    url, hook = endpoint
    hook.delay = 1.5  # longer than the webhook timeout below
    sender = WebhookSender(max_queue=2)
    message = Message(url, {"event": "rolledBack"}, timeout_s=0.5)
    t0 = time.monotonic()
    sender.send([message] * 10)
    assert time.monotonic() - t0 < 0.2  # send() returned at once
    # The queue holds 2 (3 when the worker took one before the rest arrived).
    assert sender.dropped in (7, 8)
    _wait(lambda: sender.failed + sender.sent == 10 - sender.dropped, timeout=15)
    assert sender.failed >= 1  # timed out: counted and logged, not raised


def test_an_unreachable_endpoint_is_counted() -> None:
    sender = WebhookSender()
    sender.send([Message("http://127.0.0.1:9/h", {"event": "promoted"}, timeout_s=1.0)])
    _wait(lambda: sender.failed == 1)
