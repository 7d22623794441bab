"""Steady prediction traffic, with delayed ground truth, and a report (``mlrollout loadgen``,
command line in ``loadgen_cli.py``).

Open loop: request *i* is due at ``start + i / rate`` whatever happened to earlier ones,
so a slow backend shows up as latency and failures rather than as quietly less traffic.
Concurrency is capped; bounded by ``--count`` and/or ``--duration`` (at least one is
required, so it can never run forever by accident). SIGINT/SIGTERM stop it early and it
still prints (and writes) its report.

Records come from a JSON file: a list (or JSON lines) of feature objects, or of
``{"record": {...}, "label": y}`` as ``mlrollout examples`` writes them. A record may
carry its true label under ``--label-field``; the label is then taken out of the features
and, for ``--feedback`` of the requests, posted to ``/feedback`` with the feedback id the
server issued for the prediction it belongs to (header ``x-mlrollout-feedback-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LABEL_FIELD = "label"
# The router names the track that answered; sending it back pins feedback to that track.
TRACK_HEADER = "x-mlrollout-track"
# The server-issued key a label is posted with (docs/serving.md, "Feedback").
FEEDBACK_ID_HEADER = "x-mlrollout-feedback-id"
VERSION_HEADER = "x-mlrollout-version"
SERIES_LIMIT = 3600  # one-second buckets kept at most (an hour of load)


class LoadgenError(ValueError):
    """Bad records file or settings; the message says what to fix."""


@dataclass(frozen=True)
class Record:
    features: dict[str, Any]
    label: Any = None


@dataclass(frozen=True)
class LoadConfig:
    url: str  # base URL; requests go to {url}/predict and {url}/feedback
    rate: float = 20.0  # requests per second
    count: int | None = None
    duration_s: float | None = None
    concurrency: int = 16
    batch: int = 1  # records per request
    feedback: float = 0.0  # fraction of predictions followed by their label
    timeout_s: float = 10.0
    offset: int = 0  # first record replayed
    seed: int | None = None  # shuffle the records' order with this seed (None: file order)

    def __post_init__(self) -> None:
        if self.count is None and self.duration_s is None:
            raise LoadgenError("give --count or --duration (or both): load must be bounded")
        if self.rate <= 0 or self.concurrency < 1 or self.batch < 1:
            raise LoadgenError("rate must be > 0; concurrency and batch must be >= 1")
        if not 0 <= self.feedback <= 1:
            raise LoadgenError("feedback must be a fraction in 0..1")
        if self.count is not None and self.count < 1:
            raise LoadgenError("count must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise LoadgenError("duration must be > 0")
        if self.offset < 0:
            raise LoadgenError("offset must be >= 0")


def replay_order(n: int, offset: int = 0, seed: int | None = None) -> list[int]:
    """Indices of the records in the order they are sent (pure, deterministic)."""
    order = list(range(n))
    if seed is not None:
        import random

        random.Random(seed).shuffle(order)
    k = offset % n if n else 0
    return order[k:] + order[:k]


@dataclass
class LoadReport:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "connect_error", ...
    latencies_s: list[float] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_failed: int = 0
    elapsed_s: float = 0.0
    versions: Counter[str] = field(default_factory=Counter)  # answering version (router header)
    # second since start -> {"sent", "ok", "failed", "versions": {v: n}}
    series: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, second: int, status: str, version: str | None) -> None:
        """Count one answered request in the totals and in its one-second bucket."""
        self.statuses[status] += 1
        ok = status.startswith("2")
        if ok and version:
            self.versions[version] += 1
        if second not in self.series and len(self.series) >= SERIES_LIMIT:
            return
        bucket = self.series.setdefault(second, {"sent": 0, "ok": 0, "failed": 0, "versions": {}})
        bucket["sent"] += 1
        bucket["ok" if ok else "failed"] += 1
        if ok and version:
            bucket["versions"][version] = bucket["versions"].get(version, 0) + 1

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def progress(self) -> str:
        """One line for the progress printed while the load runs."""
        versions = ", ".join(f"{v} {n}" for v, n in sorted(self.versions.items()))
        return (
            f"{self.elapsed_s:6.1f}s  {self.sent} sent, {self.ok} ok, "
            f"{self.answered - self.ok} failed" + (f"  [{versions}]" if versions else "")
        )

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("2"))

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    def quantile(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "statuses": dict(sorted(self.statuses.items())),
            "feedback_sent": self.feedback_sent,
            "feedback_failed": self.feedback_failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.sent / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "latency_p50_s": self.quantile(0.5),
            "latency_p99_s": self.quantile(0.99),
            "versions": dict(sorted(self.versions.items())),
            "series": [{"t": t, **b} for t, b in sorted(self.series.items())],
        }

    def summary(self) -> str:
        j = self.to_json()
        p50, p99 = j["latency_p50_s"], j["latency_p99_s"]
        lat = f", p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms" if p50 is not None else ""
        codes = ", ".join(f"{k}: {v}" for k, v in j["statuses"].items())
        versions = ", ".join(f"{k}: {v}" for k, v in j["versions"].items())
        return (
            f"{j['sent']} requests in {j['elapsed_s']:.1f} s ({j['rate_per_s']}/s): "
            f"{j['ok']} ok, {j['failed']} failed [{codes}]{lat}; "
            + (f"answered by version [{versions}]; " if versions else "")
            + f"feedback {j['feedback_sent']} sent, {j['feedback_failed']} failed"
        )


def parse_records(text: str, label_field: str | None = DEFAULT_LABEL_FIELD) -> list[Record]:
    """Records from a JSON list or JSON lines of objects (pure)."""
    stripped = text.strip()
    if not stripped:
        raise LoadgenError("the records file is empty")
    try:
        docs = json.loads(stripped)
    except json.JSONDecodeError:
        try:
            docs = [json.loads(line) for line in stripped.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise LoadgenError(
                f"records are not JSON (a list, or one object per line): {exc}"
            ) from None
    if isinstance(docs, dict) and not isinstance(docs.get("records"), list):
        docs = [docs]
    if isinstance(docs, dict) and isinstance(docs.get("records"), list):
        docs = docs["records"]
    records = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or not doc:
            raise LoadgenError(f"record {i} must be a non-empty JSON object, got {doc!r:.60}")
        if isinstance(doc.get("record"), dict):  # the examples' {"record": {...}, "label": y}
            features = dict(doc["record"])
            label = doc.get(label_field) if label_field else None
        else:
            features = dict(doc)
            label = features.pop(label_field, None) if label_field else None
        records.append(Record(features, label))
    if not records:
        raise LoadgenError("the records file holds no records")
    return records


def load_records(path: Path, label_field: str | None = DEFAULT_LABEL_FIELD) -> list[Record]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LoadgenError(f"cannot read records {path}: {exc.strerror or exc}") from None
    return parse_records(text, label_field)


def wants_feedback(i: int, fraction: float) -> bool:
    """Deterministic spread: request i gets feedback when the running share falls behind."""
    return int((i + 1) * fraction) > int(i * fraction)


async def generate(
    config: LoadConfig,
    records: Sequence[Record],
    stop: asyncio.Event | None = None,
    progress: Callable[[LoadReport], None] | None = None,
    progress_every_s: float = 5.0,
) -> LoadReport:
    import aiohttp

    stop = stop or asyncio.Event()
    report = LoadReport()
    order = replay_order(len(records), config.offset, config.seed)
    next_progress = progress_every_s
    limit = asyncio.Semaphore(config.concurrency)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    base = config.url.rstrip("/")
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        rows = [records[order[(i * config.batch + k) % len(records)]] for k in range(config.batch)]
        request_id = f"lg-{i}"
        track = version = feedback_id = None
        t0 = time.monotonic()
        try:
            async with session.post(
                f"{base}/predict",
                json=[r.features for r in rows],
                headers={"x-request-id": request_id},
            ) as resp:
                await resp.read()
                status = str(resp.status)
                track = resp.headers.get(TRACK_HEADER)
                feedback_id = resp.headers.get(FEEDBACK_ID_HEADER)
                version = resp.headers.get(VERSION_HEADER)
        except (aiohttp.ClientConnectionError, ConnectionError):
            status = "connect_error"
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError:
            status = "client_error"
        finally:
            limit.release()
        report.latencies_s.append(time.monotonic() - t0)
        report.add(int(t0 - started), status, version)
        labels = [r.label for r in rows]
        if (
            status.startswith("2")
            and feedback_id
            and wants_feedback(i, config.feedback)
            and None not in labels
        ):
            await _feedback(session, base, feedback_id, labels, track, report)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        i = 0
        while not stop.is_set():
            if config.count is not None and i >= config.count:
                break
            due = started + i / config.rate
            if config.duration_s is not None and due - started >= config.duration_s:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
                break  # stopped while waiting
            await limit.acquire()
            report.sent += 1
            if progress is not None and progress_every_s > 0:
                report.elapsed_s = time.monotonic() - started
                if report.elapsed_s >= next_progress:
                    next_progress += progress_every_s
                    progress(report)
            task = asyncio.create_task(one(session, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=config.timeout_s + 1)
    report.elapsed_s = time.monotonic() - started
    return report


async def _feedback(
    session: Any,
    base: str,
    feedback_id: str,
    labels: list[Any],
    track: str | None,
    report: LoadReport,
) -> None:
    body = {"feedback_id": feedback_id, "labels": labels}
    # Through the router, the label must reach the server that made the prediction.
    headers = {TRACK_HEADER: track} if track else {}
    try:
        async with session.post(f"{base}/feedback", json=body, headers=headers) as resp:
            await resp.read()
            ok = 200 <= resp.status < 300
    except Exception:  # feedback is best effort; it is counted, never fatal
        ok = False
    report.feedback_sent += 1
    report.feedback_failed += 0 if ok else 1
