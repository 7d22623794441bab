"""FileRouter waits for the router to apply a table before the act layer stops revisions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mlrollout.operator.local.router import FileRouter
from mlrollout.services.router.table import RoutingTable, parse_table


def table(generation: int) -> RoutingTable:
    return parse_table({
        "generation": generation,
        "deployment": "d",
        "backends": {"stable": {"url": "http://127.0.0.1:1", "version": "v1"}},
        "weights": {"stable": 100},
    })  # fmt: skip


class FakeRouter:
    """Serves /-/table: the file's table, but only ``delay`` seconds after it changed."""

    def __init__(self, path: Path, delay: float) -> None:
        self.path, self.delay = path, delay
        self.applied: dict[str, Any] | None = None
        self.seen: tuple[float, str] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                doc = outer.in_force()
                body = json.dumps(doc).encode() if doc else b"{}"
                self.send_response(200 if doc else 404)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/-/table"

    def in_force(self) -> dict[str, Any] | None:
        text = self.path.read_text() if self.path.exists() else ""
        if self.seen is None or self.seen[1] != text:
            self.seen = (time.monotonic(), text)
        if text and time.monotonic() - self.seen[0] >= self.delay:
            self.applied = json.loads(text)
        return self.applied


@pytest.fixture
def fake(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FakeRouter]:
    router = FakeRouter(tmp_path / "table.json", delay=request.param)
    thread = threading.Thread(target=router.server.serve_forever, daemon=True)
    thread.start()
    yield router
    router.server.shutdown()


@pytest.mark.parametrize("fake", [0.3], indirect=True)
def test_set_routes_returns_once_the_router_has_the_table(fake: FakeRouter) -> None:
    files = FileRouter(fake.path, confirm_url=fake.url, confirm_timeout=5)
    files.set_routes(table(1))
    assert fake.applied is not None and fake.applied["generation"] == 1
    files.set_routes(table(2))
    assert fake.applied["generation"] == 2


@pytest.mark.parametrize("fake", [60.0], indirect=True)
def test_a_router_that_never_applies_it_costs_at_most_the_timeout(
    fake: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    files = FileRouter(fake.path, confirm_url=fake.url, confirm_timeout=0.3)
    start = time.monotonic()
    files.set_routes(table(1))
    assert time.monotonic() - start < 5
    assert fake.applied is None
    assert "did not apply routing table generation 1" in caplog.text


def test_no_router_listening_does_not_wait(tmp_path: Path) -> None:
    files = FileRouter(
        tmp_path / "t.json", confirm_url="http://127.0.0.1:1/-/table", confirm_timeout=30
    )
    start = time.monotonic()
    files.set_routes(table(1))
    assert time.monotonic() - start < 5
    assert json.loads((tmp_path / "t.json").read_text())["generation"] == 1
