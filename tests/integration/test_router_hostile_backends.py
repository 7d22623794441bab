"""Issue 12 items 2 and 6 (router): a backend that answers badly, slowly or not at all.

Raw asyncio backends on 127.0.0.1 behind the router's real server. A canary that cannot
give a usable answer is counted as the canary's error and the client gets stable's answer
(nothing of the canary's reached the client yet, so the retry is safe); a stable that
does so is a 502 with the reason. Memory of the real router process under these backends
is checked in test_router_reliability_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from mlrollout.services.netutil import free_port
from mlrollout.services.router.proxy import Router, RouterConfig
from mlrollout.services.router.server import start_server
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.hostile import KINDS, hostile, read_request
from tests.doubles.router import FakeBackend, table_doc

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    router: Router
    client: httpx.AsyncClient
    ports: dict[str, int]
    servers: list[asyncio.Server] = field(default_factory=list)

    def metric(self, name: str, **labels: str) -> float:
        text = self.router.metrics.exposition().decode()
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


CONFIG = {
    "timeout": 10.0,
    "canary_timeout": 1.0,
    "response_header_timeout": 1.0,
    "max_response_bytes": 4 << 20,
}


@pytest.fixture
async def rig_with() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(stable: str | None, canary: str | None, **config: object) -> Rig:
        servers, ports = [], {}
        for track, kind in (("stable", stable), ("canary", canary)):
            ports[track] = free_port()
            if kind is None:
                servers.append(
                    await start_server(FakeBackend(f"{track}-v"), "127.0.0.1", ports[track])
                )
            else:
                servers.append(await asyncio.start_server(hostile(kind), "127.0.0.1", ports[track]))
        router = Router(RouterConfig(**{**CONFIG, **config}))  # type: ignore[arg-type]
        port = free_port()
        servers.append(await start_server(router, "127.0.0.1", port))
        doc = table_doc(1, ports["stable"], ports["canary"], 100)
        assert router.offer(json.dumps(doc).encode(), "test")
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        rig = Rig(router, client, ports, servers)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.client.aclose()
        await rig.router.aclose()
        for server in rig.servers:
            server.close()


CANARY_FAULTS = list(KINDS)


@pytest.mark.parametrize("kind", CANARY_FAULTS)
async def test_a_hostile_canary_costs_the_client_nothing_and_counts_against_the_canary(
    rig_with: Callable[..., Awaitable[Rig]], kind: str
) -> None:
    rig = await rig_with(None, kind)
    start = time.monotonic()
    resp = await rig.client.post("/predict", content=b"[1]")
    elapsed = time.monotonic() - start
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-mlrollout-track"] == "stable"
    assert resp.json()["version"] == "stable-v"
    assert elapsed < 5.0  # within the canary's per-try budget, not the 10 s timeout
    assert rig.metric("mlrollout_router_fallbacks_total", track="canary") == 1
    failed = rig.metric("mlrollout_router_requests_total", track="canary", outcome="server_error")
    failed += rig.metric("mlrollout_router_requests_total", track="canary", outcome="unreachable")
    assert failed == 1
    assert rig.metric("mlrollout_router_requests_total", track="canary", outcome="ok") == 0
    if kind not in ("silence", "rst"):  # it answered: a bad answer, not no answer
        assert (
            rig.metric("mlrollout_router_requests_total", track="canary", outcome="server_error")
            == 1
        )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("huge-headers", "headers larger than"),
        ("many-small-headers", "more than"),
        ("huge-body", "larger than"),
        ("garbage", "malformed"),
        ("slow-drip-headers", "headers not complete within"),
    ],
)
async def test_a_hostile_stable_is_a_502_with_the_reason(
    rig_with: Callable[..., Awaitable[Rig]], kind: str, reason: str
) -> None:
    rig = await rig_with(kind, None)
    doc = table_doc(2, rig.ports["stable"], rig.ports["canary"], 0)
    assert rig.router.offer(json.dumps(doc).encode(), "test")
    resp = await rig.client.post("/predict", content=b"[1]")
    assert resp.status_code == 502
    assert reason in resp.json()["error"]
    assert (
        rig.metric("mlrollout_router_requests_total", track="stable", outcome="server_error") == 1
    )


async def test_a_silent_canary_leaves_stable_the_rest_of_the_client_budget(
    rig_with: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_with(None, "silence", timeout=3.0, canary_timeout=0.5)
    start = time.monotonic()
    results = await asyncio.gather(
        *(rig.client.post("/predict", content=b"[1]") for _ in range(20))
    )
    assert [r.status_code for r in results] == [200] * 20
    assert {r.headers["x-mlrollout-track"] for r in results} == {"stable"}
    assert time.monotonic() - start < 2.5


async def test_many_large_answers_at_once_stay_within_the_buffer_budget(
    rig_with: Callable[..., Awaitable[Rig]],
) -> None:
    size = 3 << 20  # each answer is allowed (under 4 MiB), together they are not

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                writer.write(b"p" * (size - 1))
                await writer.drain()
                await asyncio.sleep(0.5)  # every answer is held open, nearly complete
                writer.write(b"p")
                await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(big, "127.0.0.1", port)
    rig = await rig_with(None, None, max_response_buffer_bytes=16 << 20)
    rig.servers.append(server)
    doc = table_doc(2, port, None, 0)
    assert rig.router.offer(json.dumps(doc).encode(), "test")
    results = await asyncio.gather(*(rig.client.get("/big") for _ in range(12)))
    statuses = sorted(r.status_code for r in results)
    assert 200 in statuses and 502 in statuses  # some fit, the rest were refused
    refused = [r for r in results if r.status_code == 502]
    assert all("buffer" in r.json()["error"] for r in refused)
    assert all(len(r.content) == size for r in results if r.status_code == 200)
    peak = max(pool.buffer.peak for pool in rig.router._pools.values())
    assert size <= peak <= 16 << 20
