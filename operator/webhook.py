"""Send notification messages in the background (act layer of ``notify.py``).

A bounded queue and one daemon thread: ``send`` never blocks (a rollback is never held up
by a slow or hostile endpoint), each POST has the webhook's timeout (at most 30 s), a
response is read up to 64 KiB, and when the queue is full new messages are dropped and
counted. No retries: a notification is a courtesy, the status and Events are the record.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from mlrollout.operator.notify import Message

log = logging.getLogger(__name__)
MAX_QUEUE = 256
MAX_RESPONSE = 64 * 1024

Post = Callable[[Message], int]


def post_json(message: Message) -> int:
    """POST the body as JSON; return the HTTP status (raises OSError on network errors)."""
    request = urllib.request.Request(
        message.url,
        data=json.dumps(message.body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "mlrollout-notify"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=message.timeout_s) as resp:
            resp.read(MAX_RESPONSE)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class WebhookSender:
    def __init__(self, post: Post = post_json, max_queue: int = MAX_QUEUE) -> None:
        self._post = post
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages``; returns at once."""
        if not messages:
            return
        self._start()
        for message in messages:
            try:
                self._queue.put_nowait(message)
            except queue.Full:
                self.dropped += 1
                log.warning("notification queue full: dropped %s", message.body.get("event"))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="mlrollout-notify", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            try:
                status = self._post(message)
                ok = 200 <= status < 300
            except Exception as exc:  # any endpoint failure is logged, never raised
                log.warning("notification to %s failed: %s", _host(message.url), exc)
                ok = False
            else:
                if not ok:
                    log.warning("notification to %s: HTTP %d", _host(message.url), status)
            if ok:
                self.sent += 1
            else:
                self.failed += 1

    def close(self, timeout: float = 5.0) -> None:
        """Let queued messages go out for up to ``timeout`` seconds, then stop."""
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)


def _host(url: str) -> str:
    # Never log the whole URL: incoming-webhook URLs often carry a secret path.
    return url.split("/")[2] if "//" in url else "?"
