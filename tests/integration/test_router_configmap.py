"""The ConfigMap source against a small fake Kubernetes API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from mlrollout.services.netutil import free_port
from mlrollout.services.router.proxy import Router, RouterConfig
from mlrollout.services.router.source import ConfigMapSource, KubeAccess

from tests.doubles.router import table_doc

pytestmark = pytest.mark.integration

PATH = "/api/v1/namespaces/ml/configmaps"


class FakeApi:
    """One ConfigMap; watch streams the events put on ``events``; ``fail`` answers 500."""

    def __init__(self) -> None:
        self.version = 1
        self.table: Any = table_doc(1, 8001, 8002, 10)
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.fail = False
        self.auth: list[str] = []
        self.watches = 0

    def obj(self) -> dict[str, Any]:
        data = self.table if isinstance(self.table, str) else json.dumps(self.table)
        meta = {"name": "routes", "namespace": "ml", "resourceVersion": str(self.version)}
        return {"kind": "ConfigMap", "metadata": meta, "data": {"table.json": data}}

    def update(self, table: Any) -> None:
        self.table, self.version = table, self.version + 1
        self.events.put_nowait({"type": "MODIFIED", "object": self.obj()})

    async def get(self, request: web.Request) -> web.StreamResponse:
        self.auth.append(request.headers.get("Authorization", ""))
        if self.fail:
            return web.Response(status=500, text="etcd is down")
        return web.json_response(self.obj())

    async def watch(self, request: web.Request) -> web.StreamResponse:
        assert request.query["fieldSelector"] == "metadata.name=routes"
        if self.fail:
            return web.Response(status=500, text="etcd is down")
        self.watches += 1
        resp = web.StreamResponse()
        await resp.prepare(request)
        while (event := await self.events.get()) is not None:
            await resp.write(json.dumps(event).encode() + b"\n")
        return resp  # None ends this watch, as the API server does after timeoutSeconds


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get(f"{PATH}/routes", fake.get)
    app.router.add_get(PATH, fake.watch)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake, f"http://127.0.0.1:{port}"
    fake.events.put_nowait(None)
    await runner.cleanup()


async def until(check: Any, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_configmap_changes_apply_and_bad_ones_are_refused(api: tuple[FakeApi, str]) -> None:
    fake, server = api
    router = Router(RouterConfig())
    source = ConfigMapSource("ml", "routes", KubeAccess(server, token="secret"), max_backoff=0.2)
    task = asyncio.create_task(source.run(router.offer, lambda m: router.reject(m, "test")))
    try:
        await until(lambda: router.table is not None, "the first table")
        assert fake.auth[0] == "Bearer secret"
        assert router.source == "configmap ml/routes key table.json"
        await until(lambda: fake.watches == 1, "the watch")

        fake.update(table_doc(2, 8001, 8002, 50))
        await until(lambda: router.table and router.table.generation == 2, "generation 2")

        fake.update("{broken")
        fake.update(table_doc(1, 8001, 8002, 0))  # lower generation
        await until(
            lambda: router.last_error is not None and "lower" in str(router.last_error), "rejection"
        )
        assert router.table is not None and router.table.generation == 2

        # The API goes away: the router keeps its table and picks up changes once it is back.
        fake.fail = True
        fake.events.put_nowait(None)
        await asyncio.sleep(0.5)
        assert router.table.generation == 2
        fake.fail = False
        fake.table, fake.version = table_doc(3, 8001, 8002, 100), fake.version + 1
        await until(lambda: router.table and router.table.generation == 3, "generation 3")
        assert router.table.canary_weight == 100
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await router.aclose()
