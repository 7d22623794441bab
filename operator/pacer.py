"""Reconcile each ModelDeployment when something is due for it, and only then.

The engine's ``requeue_after`` (pure: from spec, status and ``now``) says when calling
again is useful: the next analysis run, the end of a pause, a readiness re-check. A kopf
timer per object would instead wake every object at a fixed interval and cost CPU for
every object on every tick, due or not. Here one asyncio task sleeps until the earliest
due time of all objects and hands the due ones to a few worker threads.

- :class:`DueTimes` is the pure part: a heap of due times, popped with an explicit
  ``now``; setting a key again supersedes its earlier time.
- :class:`Pacer` is the thin act part: thread-safe ``schedule``/``drop`` (called from
  kopf's handler threads and its own workers) and the sleeping task.

Nothing here survives a restart, and nothing needs to: kopf's resume handler reconciles
every object at start-up, and the status it reads (``analysis.lastRunAt``,
``stepStartedAt``, ...) gives the same due times again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class DueTimes:
    """Due time per key; the earliest first. Pure: time is always passed in."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def set(self, key: str, at: float) -> None:
        self._at[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key))
        if len(self._heap) > 64 + 4 * len(self._at):  # superseded entries: rebuild
            self._heap = [(t, next(self._seq), k) for k, t in self._at.items()]
            heapq.heapify(self._heap)

    def drop(self, key: str) -> None:
        self._at.pop(key, None)

    def pop_due(self, now: float) -> list[str]:
        """Keys due at ``now`` (earliest first), removed until set again."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._at.get(key) == at:
                del self._at[key]
                out.append(key)
        return out

    def next_at(self) -> float | None:
        """The earliest due time, or None when nothing is scheduled."""
        while self._heap and self._at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None


class Pacer:
    """One task that sleeps until the next due key and runs ``call(key)`` in a thread.

    ``call`` runs at most once at a time per due entry; a key is only run again once
    scheduled again (the reconcile does that with its own ``requeue_after``).
    """

    def __init__(
        self,
        call: Callable[[str], None],
        *,
        workers: int = 4,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call
        self._monotonic = monotonic
        self._times = DueTimes()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="due")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.runs = 0

    def schedule(self, key: str, at: float) -> None:
        """Run ``key`` at monotonic time ``at`` (replacing an earlier schedule). Thread-safe."""
        with self._lock:
            earliest = self._times.next_at()
            self._times.set(key, at)
        if earliest is None or at < earliest:
            self._poke()

    def drop(self, key: str) -> None:
        with self._lock:
            self._times.drop(key)

    def scheduled(self) -> int:
        with self._lock:
            return len(self._times)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def _run(self, key: str) -> None:
        try:
            self._call(key)
        except Exception:  # the call reschedules itself on failure; never kill the worker
            log.exception("due reconcile of %s failed", key)

    async def run(self) -> None:
        """Until cancelled: sleep to the earliest due time, hand out what is due."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                self._wake.clear()
                with self._lock:
                    due = self._times.pop_due(self._monotonic())
                    nxt = self._times.next_at()
                for key in due:
                    self.runs += 1
                    self._pool.submit(self._run, key)
                timeout = None if nxt is None else max(0.0, nxt - self._monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            self._loop = self._wake = None
            self._pool.shutdown(wait=False, cancel_futures=True)
