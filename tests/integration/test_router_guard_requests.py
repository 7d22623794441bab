"""The router guard and paired agreement on the request path: real sockets, fake backends."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mlrollout.services.netutil import free_port
from mlrollout.services.router.proxy import Reply, Request, Router, RouterConfig
from mlrollout.services.router.server import start_server
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import FakeBackend, table_doc

pytestmark = pytest.mark.integration


class Flaky(FakeBackend):
    """Answers 500 to a share of requests (seeded, so the test is the same every run)."""

    def __init__(self, version: str, fail: float, seed: int = 5) -> None:
        super().__init__(version)
        self.fail = fail
        self.rng = random.Random(seed)
        self.seen = 0

    async def handle(self, req: Request) -> Reply:
        reply = await super().handle(req)
        if req.target != b"/healthz":
            self.seen += 1
            if self.rng.random() < self.fail:
                reply.status = 500
        return reply


def metric(router: Router, name: str, **labels: str) -> float:
    text = router.metrics.exposition().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
async def rig() -> AsyncIterator[Any]:
    made: list[tuple[Router, httpx.AsyncClient, list[asyncio.Server]]] = []

    async def make(stable: FakeBackend, canary: FakeBackend, **table: Any) -> Any:
        ports = {"stable": free_port(), "canary": free_port()}
        servers = [
            await start_server(stable, "127.0.0.1", ports["stable"]),
            await start_server(canary, "127.0.0.1", ports["canary"]),
        ]
        router = Router(RouterConfig())
        port = free_port()
        servers.append(await start_server(router, "127.0.0.1", port))
        weight = table.pop("canary_weight", 10)
        doc = table_doc(1, ports["stable"], ports["canary"], weight, **table)
        assert router.offer(json.dumps(doc).encode(), "test")
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
        made.append((router, client, servers))
        return router, client, doc

    yield make
    for router, client, servers in made:
        await client.aclose()
        await router.aclose()
        for server in servers:
            server.close()


async def test_guard_takes_a_failing_canary_to_weight_zero(rig: Any) -> None:
    canary = Flaky("v2", 0.5)
    router, client, doc = await rig(FakeBackend("v1"), canary, guard={"alpha": 0.01})
    tripped_at = None
    for i in range(600):
        await client.post("/predict", content=b'{"x": %d}' % i)
        if router.guard.tripped and tripped_at is None:
            tripped_at = i
    assert tripped_at is not None
    trip = router.guard.report()["trip"]
    # Every canary request after the trip went to stable: the canary saw only the requests
    # up to the trip, and bad answers are bounded by what the test needed.
    assert canary.seen == trip["evidence"]["canaryRequests"]
    assert trip["evidence"]["canaryErrors"] <= 10
    assert trip["evidence"]["stableErrors"] == 0
    assert metric(router, "mlrollout_router_guard_tripped", test="errors", version="v2") == 1
    assert metric(router, "mlrollout_router_weight", track="canary") == 0
    assert metric(router, "mlrollout_router_guard_e_value", test="errors") >= 100
    table = (await client.get("/-/table")).json()
    assert table["weights"] == doc["weights"]  # the table as received ...
    assert table["routerState"]["weights"] == {"stable": 100, "canary": 0}  # ... and as served
    assert table["routerState"]["guard"]["state"] == "tripped"
    status = (await client.get("/-/status")).json()
    assert status["guard"]["trip"]["message"].startswith("router guard: canary v2 errors")


async def test_forced_requests_are_not_evidence(rig: Any) -> None:
    router, client, _ = await rig(
        FakeBackend("v1"), Flaky("v2", 1.0), guard={"alpha": 0.01}, trackHeader="weighted"
    )
    for _ in range(20):
        r = await client.post("/predict", content=b"{}", headers={"x-mlrollout-track": "canary"})
        assert r.status_code == 500
    assert not router.guard.tripped
    assert router.guard.report()["evidence"]["canaryRequests"] == 0


async def test_an_unreachable_canary_trips_the_guard_and_clients_see_stable(rig: Any) -> None:
    canary = FakeBackend("v2")
    router, client, doc = await rig(FakeBackend("v1"), canary, guard={"alpha": 0.01})
    # Point the canary at a port nobody listens on (a killed process).
    doc = dict(doc, generation=2)
    doc["backends"] = dict(
        doc["backends"], canary={"url": f"http://127.0.0.1:{free_port()}", "version": "v2"}
    )
    assert router.offer(json.dumps(doc).encode(), "test")
    codes = [(await client.post("/predict", content=b"{}")).status_code for _ in range(300)]
    assert set(codes) == {200}  # fallbacks hide it from clients ...
    assert router.guard.tripped  # ... and the guard removes it
    assert router.guard.report()["trip"]["evidence"]["canaryErrors"] == 3


async def test_a_wrong_answers_canary_is_found_by_agreement(rig: Any) -> None:
    # Same answers distribution (labels 0..2 shifted by one), wrong on every row.
    router, client, _ = await rig(
        FakeBackend("v1"),
        FakeBackend("v2", shift=1),
        canary_weight=20,
        agreement={"percent": 100},
        guard={"alpha": 0.01, "minAgreement": 0.95},
    )
    for i in range(200):
        await client.post("/predict", content=b'{"x": %d}' % i)
        if router.guard.tripped:
            break
        await asyncio.sleep(0.002)  # let the mirrored request finish
    assert router.guard.tripped
    assert router.guard.report()["trip"]["test"] == "agreement"
    assert (
        metric(router, "mlrollout_router_agreement_total", result="disagree", source="canary") > 0
    )
    assert metric(router, "mlrollout_router_agreement_total", result="agree") == 0


async def test_agreeing_canary_counts_agreement_and_stays(rig: Any) -> None:
    router, client, _ = await rig(
        FakeBackend("v1"),
        FakeBackend("v2"),
        canary_weight=50,
        agreement={"percent": 100},
        guard={"alpha": 0.01, "minAgreement": 0.95},
    )
    for i in range(100):
        await client.post("/predict", content=b'{"x": %d}' % i)
    for _ in range(100):
        if router._shadow_inflight == 0:
            break
        await asyncio.sleep(0.01)
    agreed = metric(router, "mlrollout_router_agreement_total", result="agree", source="canary")
    assert 20 <= agreed <= 80  # half the requests served by the canary, each mirrored
    assert metric(router, "mlrollout_router_agreement_total", result="disagree") == 0
    # Mirrors of the canary's requests are not shadow traffic (that is stable -> canary).
    assert metric(router, "mlrollout_router_shadow_total") == 0
    assert not router.guard.tripped
