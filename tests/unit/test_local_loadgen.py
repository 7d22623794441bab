"""The load generator: records parsing, pacing bounds, outcomes and feedback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from mlrollout.operator.local.loadgen import (
    LoadConfig,
    LoadgenError,
    Record,
    generate,
    parse_records,
    replay_order,
    wants_feedback,
)
from mlrollout.services.netutil import free_port


def test_parse_list_and_json_lines_and_labels() -> None:
    as_list = parse_records('[{"a": 1, "label": "x"}, {"a": 2}]')
    assert as_list == [Record({"a": 1}, "x"), Record({"a": 2}, None)]
    as_lines = parse_records('{"a": 1, "y": 0}\n\n{"a": 2, "y": 1}\n', label_field="y")
    assert as_lines == [Record({"a": 1}, 0), Record({"a": 2}, 1)]
    assert parse_records('{"records": [{"a": 1}]}') == [Record({"a": 1})]
    wrapped = '{"record": {"a": 1, "label": 5}, "label": 1}\n{"record": {"a": 2}, "label": 0}'
    assert parse_records(wrapped) == [Record({"a": 1, "label": 5}, 1), Record({"a": 2}, 0)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("[1, 2]", "record 0"),
        ("{nope", "not JSON"),
        ("[]", "no records"),
        ("[{}]", "non-empty"),
    ],
)
def test_bad_records_are_explained(text: str, match: str) -> None:
    with pytest.raises(LoadgenError, match=match):
        parse_records(text)


def test_load_must_be_bounded() -> None:
    with pytest.raises(LoadgenError, match="bounded"):
        LoadConfig(url="http://127.0.0.1:1")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1.0])
def test_feedback_fraction_is_exact_over_a_run(fraction: float) -> None:
    picked = sum(wants_feedback(i, fraction) for i in range(1000))
    assert picked == round(1000 * fraction)


class FakeModel:
    """Answers /predict (every 5th request with 500) and records /feedback bodies."""

    def __init__(self) -> None:
        self.predictions: list[Any] = []
        self.feedback: list[Any] = []

    async def predict(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.predictions.append(body)
        rid = request.headers["x-request-id"]
        if len(self.predictions) % 5 == 0:
            return web.json_response({"error": "boom"}, status=500)
        version = "v2" if len(self.predictions) % 2 else "v1"
        headers = {
            "x-request-id": rid,
            "x-mlrollout-track": "canary",
            "x-mlrollout-version": version,
            "x-mlrollout-feedback-id": f"fb-{rid}",
        }
        return web.json_response({"predictions": [0] * len(body)}, headers=headers)

    async def fb(self, request: web.Request) -> web.Response:
        self.feedback.append((await request.json(), request.headers.get("x-mlrollout-track")))
        return web.json_response({"matched": 1})


@pytest.fixture
async def fake_model() -> AsyncIterator[tuple[str, FakeModel]]:
    model = FakeModel()
    app = web.Application()
    app.router.add_post("/predict", model.predict)
    app.router.add_post("/feedback", model.fb)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", model
    finally:
        await runner.cleanup()


async def test_counts_outcomes_and_sends_feedback(fake_model) -> None:
    url, model = fake_model
    records = [Record({"a": i}, i % 2) for i in range(3)]
    config = LoadConfig(url=url, rate=500, count=20, batch=2, feedback=0.5)
    report = await generate(config, records)
    assert report.sent == 20 and len(model.predictions) == 20
    assert report.statuses == {"200": 16, "500": 4}
    assert report.failed == 4
    assert all(len(body) == 2 for body in model.predictions)
    assert report.feedback_sent == len(model.feedback) > 0
    first, track = model.feedback[0]
    # Labels go with the server-issued feedback id, not the client's request id.
    assert first["feedback_id"].startswith("fb-lg-") and len(first["labels"]) == 2
    assert track == "canary"  # sent back to the track that made the prediction
    assert json.loads(json.dumps(report.to_json()))["sent"] == 20


async def test_stop_event_ends_an_unbounded_count(fake_model) -> None:
    url, _model = fake_model
    stop = asyncio.Event()
    config = LoadConfig(url=url, rate=50, duration_s=60)
    task = asyncio.create_task(generate(config, [Record({"a": 1})], stop))
    await asyncio.sleep(0.3)
    stop.set()
    report = await asyncio.wait_for(task, 10)
    assert 1 <= report.sent < 60 * 50


async def test_unreachable_backend_is_counted_not_raised() -> None:
    config = LoadConfig(url=f"http://127.0.0.1:{free_port()}", rate=100, count=3, timeout_s=2)
    report = await generate(config, [Record({"a": 1})])
    assert report.statuses == {"connect_error": 3}
    assert report.failed == 3 and report.feedback_sent == 0


async def test_counts_per_version_and_per_second_with_progress(fake_model) -> None:
    url, _model = fake_model
    seen: list[str] = []
    config = LoadConfig(url=url, rate=40, count=60)
    report = await generate(
        config, [Record({"a": 1})], None, lambda r: seen.append(r.progress()), 0.5
    )
    doc = report.to_json()
    assert sum(doc["versions"].values()) == report.ok == 48
    assert set(doc["versions"]) == {"v1", "v2"}
    series = doc["series"]
    assert [b["t"] for b in series] == sorted(b["t"] for b in series) and len(series) >= 2
    assert sum(b["sent"] for b in series) == 60
    assert sum(b["ok"] for b in series) == 48 and sum(b["failed"] for b in series) == 12
    assert seen and "sent" in seen[0] and "ok" in seen[0]  # progress while running


def test_replay_order_offset_and_seed() -> None:
    assert replay_order(5) == [0, 1, 2, 3, 4]
    assert replay_order(5, offset=2) == [2, 3, 4, 0, 1]
    shuffled = replay_order(50, seed=7)
    assert sorted(shuffled) == list(range(50)) and shuffled != list(range(50))
    assert replay_order(50, seed=7) == shuffled  # same seed, same order
    assert replay_order(50, offset=3, seed=7)[:2] == shuffled[3:5]


async def test_offset_picks_the_first_record_sent(fake_model) -> None:
    url, model = fake_model
    records = [Record({"a": i}) for i in range(4)]
    await generate(LoadConfig(url=url, rate=500, count=2, offset=3), records)
    assert sorted(b[0]["a"] for b in model.predictions) == [0, 3]


def test_exit_code_when_everything_failed() -> None:
    from mlrollout.operator.local.loadgen import LoadReport
    from mlrollout.operator.local.loadgen_cli import exit_code

    report = LoadReport(sent=3)
    for _ in range(3):
        report.add(0, "connect_error", None)
    code, why = exit_code(report, None)
    assert code == 1 and "every request failed (connect_error x3)" in why
    fine = LoadReport(sent=2)
    fine.add(0, "200", "v1")
    fine.add(0, "500", None)
    assert exit_code(fine, None) == (0, "")
    assert exit_code(fine, 0.2)[0] == 1


def test_cli_exits_non_zero_when_every_request_failed(tmp_path) -> None:
    import subprocess
    import sys

    records = tmp_path / "r.jsonl"
    records.write_text('{"a": 1}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlrollout.services.cli",
            "loadgen",
            f"http://127.0.0.1:{free_port()}",
            "--records",
            str(records),
            "--count",
            "3",
            "--rate",
            "50",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "every request failed" in out.stderr
    assert out.stderr.startswith("sending 50 requests/s")
