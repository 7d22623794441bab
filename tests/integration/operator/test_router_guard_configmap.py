"""The guard's trip travels through the ConfigMap: router writes ``guard.json``, the
operator's ConfigMapRouter reads it, and a later table without that canary clears it.

The router runs in this process against two fake backends on 127.0.0.1; the Kubernetes
API is the emulator (its merge-patch is the one the router sends).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import kubernetes
import pytest
from mlrollout.operator import builders as b
from mlrollout.operator import k8s_routers as routers
from mlrollout.operator.decide import guard
from mlrollout.operator.kube import Kube
from mlrollout.services.netutil import free_port
from mlrollout.services.router import cli as router_cli
from mlrollout.services.router.proxy import Reply, Request, Router, RouterConfig
from mlrollout.services.router.server import start_server
from mlrollout.services.router.source import ConfigMapSource, KubeAccess
from mlrollout.services.router.table import parse_table

from tests.doubles.router import FakeBackend

pytestmark = pytest.mark.integration


class Failing(FakeBackend):
    def __init__(self) -> None:
        super().__init__("2")
        self.rng = random.Random(11)

    async def handle(self, req: Request) -> Reply:
        reply = await super().handle(req)
        if self.rng.random() < 0.5:
            reply.status = 500
        return reply


async def test_trip_reaches_the_operator_and_is_cleared_after_the_rollback(cluster: Any) -> None:
    config = kubernetes.client.Configuration()
    config.host = cluster.url
    kube = Kube(config, timeout=5)
    ns = "guard-cm"
    cluster.call(lambda e: e.namespaces.add(ns))
    md = kube.create(
        {
            "apiVersion": "mlrollout.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": ns},
            "spec": {"model": {"name": "m", "version": "1", "uri": "https://x/m.tgz"}},
        }
    )
    owner = b.Owner("m", ns, md["metadata"]["uid"])
    operator_side = routers.ConfigMapRouter(kube, owner)

    ports = {"stable": free_port(), "canary": free_port()}
    servers = [
        await start_server(FakeBackend("1"), "127.0.0.1", ports["stable"]),
        await start_server(Failing(), "127.0.0.1", ports["canary"]),
    ]
    table = {
        "generation": 1,
        "deployment": "m",
        "backends": {
            "stable": {"url": f"http://127.0.0.1:{ports['stable']}", "version": "1"},
            "canary": {"url": f"http://127.0.0.1:{ports['canary']}", "version": "2"},
        },
        "weights": {"stable": 90, "canary": 10},
        "stickyHeader": None,
        "shadowPercent": 0,
        "guard": {"alpha": 0.005, "maxRatio": 1},
    }
    await asyncio.to_thread(operator_side.set_routes, parse_table(table))
    assert operator_side.guard_report() is None

    router = Router(RouterConfig())
    source = ConfigMapSource(ns, b.routes_configmap_name("m"), KubeAccess(cluster.url))
    router.on_trip = router_cli._report_trips(source)
    assert router.offer(json.dumps(table).encode(), source.describe())
    port = free_port()
    servers.append(await start_server(router, "127.0.0.1", port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(400):
                await client.post("/predict", content=b'{"i": %d}' % i)
                if router.guard.tripped:
                    break
        assert router.guard.tripped
        for _ in range(100):  # the report is written off the request path
            report = await asyncio.to_thread(operator_side.guard_report)
            if report is not None:
                break
            await asyncio.sleep(0.05)
        assert report is not None and report["state"] == "tripped"
        trip = guard.trip_of(report, "2", table["backends"]["canary"]["url"])
        assert trip is not None and trip["test"] == "errors"
        assert guard.verdict(trip).check == "routerGuard"
        # The table is untouched by the router's write.
        in_force = await asyncio.to_thread(operator_side.get_routes)
        assert in_force is not None and in_force.to_doc() == table

        # Another replica (or this router after a restart) adopts the trip from the
        # ConfigMap as its table source delivers it: the canary is off everywhere.
        replica = Router(RouterConfig())
        replica_source = ConfigMapSource(ns, b.routes_configmap_name("m"), KubeAccess(cluster.url))
        replica_source.on_guard = replica.adopt_trip
        cm = kube.get("ConfigMap", ns, b.routes_configmap_name("m"))
        replica_source._deliver(cm, replica.offer, lambda message: None)
        assert replica.table is not None and replica.guard.tripped
        assert replica.state()["weights"] == {"stable": 100, "canary": 0}
        assert replica.guard.report()["trip"]["adopted"] is True
        await replica.aclose()
        # A table for the same canary (the operator has not acted yet) keeps the report ...
        same = table | {"generation": 2, "weights": {"stable": 80, "canary": 20}}
        await asyncio.to_thread(operator_side.set_routes, parse_table(same))
        assert await asyncio.to_thread(operator_side.guard_report) == report
        # ... the operator's rollback (a table without that canary) clears it.
        rolled_back = {
            **table,
            "generation": 3,
            "backends": {"stable": table["backends"]["stable"]},
            "weights": {"stable": 100},
        }
        del rolled_back["guard"]
        await asyncio.to_thread(operator_side.set_routes, parse_table(rolled_back))
        assert await asyncio.to_thread(operator_side.guard_report) is None
        cm = kube.get("ConfigMap", ns, b.routes_configmap_name("m"))
        assert set(cm["data"]) == {b.TABLE_KEY}
    finally:
        await router.aclose()
        for server in servers:
            server.close()


def test_router_and_operator_agree_on_the_key() -> None:
    from mlrollout.services.router.source import GUARD_KEY

    assert GUARD_KEY == b.GUARD_KEY
