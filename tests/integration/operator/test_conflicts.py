"""Concurrent writers against the real API server: 409s are handled, nothing is lost.

No operator process: these drive ``kube.py`` and the routers directly, with real
optimistic concurrency (``resourceVersion`` preconditions) and real create races.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from mlrollout.operator import builders as b
from mlrollout.operator import k8s_routers as routers
from mlrollout.operator.interfaces import RoutesChanged
from mlrollout.operator.kube import Kube
from mlrollout.operator.reconcile import _put_routes
from mlrollout.services.router.table import RoutingTable, parse_table

pytestmark = pytest.mark.integration
NS = "conflicts"


@pytest.fixture(scope="module")
def kube(kcluster: Any) -> Kube:
    kcluster.kubectl("create", "namespace", NS, check=False)
    return kcluster.kube


def owner(kube: Kube, name: str) -> b.Owner:
    md = kube.create(
        {
            "apiVersion": "mlrollout.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"name": name, "version": "1", "uri": "https://x/m.tgz"}},
        }
    )
    return b.Owner(name, NS, md["metadata"]["uid"])


def test_concurrent_read_modify_writes_lose_no_update(kube: Kube) -> None:
    """Eight writers add to one counter; each write carries the version it read, so the
    server refuses (409) whichever was overtaken, and ``update`` reads again."""
    counter = {"name": "counter", "namespace": NS}
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": counter, "data": {"n": "0"}})
    decisions = 0
    lock = threading.Lock()

    def add_one(current: dict[str, Any] | None) -> dict[str, Any]:
        nonlocal decisions
        assert current is not None
        with lock:
            decisions += 1
        time.sleep(0.02)  # widen the window between read and write
        return {"data": {"n": str(int(current["data"]["n"]) + 1)}}

    def writer(_: int) -> None:
        for _ in range(5):
            kube.update("ConfigMap", NS, "counter", add_one, attempts=100)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))
    final = kube.get("ConfigMap", NS, "counter")
    assert final is not None and final["data"]["n"] == "40"
    assert decisions > 40  # conflicts happened and were decided again


def test_racing_creates_make_one_object(kube: Kube) -> None:
    o = owner(kube, "race")
    svc = b.public_service(o)
    start = threading.Barrier(6)

    def apply(_: int) -> dict[str, Any]:
        start.wait()
        return kube.apply(svc)

    with ThreadPoolExecutor(6) as pool:
        uids = {r["metadata"]["uid"] for r in pool.map(apply, range(6))}
    assert len(uids) == 1


def test_a_table_changed_between_read_and_write_is_read_again(kube: Kube) -> None:
    """Another writer (a second operator, a human with kubectl) puts a table in force
    right after ours was read: our guarded write gets a real 409, we read theirs and
    continue its generation instead of overwriting it."""
    o = owner(kube, "routes")
    router = routers.ConfigMapRouter(kube, o)
    url = b.revision_url(o, "r1")
    kube.apply(b.revision_service(o, "r1"))
    doc = {
        "generation": 0, "deployment": o.name,
        "backends": {"stable": {"url": url, "version": "1"}},
        "weights": {"stable": 100}, "stickyHeader": None, "shadowPercent": 0,
    }  # fmt: skip
    table = parse_table(doc)
    router.set_routes(table.with_generation(3))
    assert router.get_routes() is not None

    # Theirs lands between our read and our write.
    theirs = {**doc, "generation": 7, "stickyHeader": "x-user"}
    name = b.routes_configmap_name(o.name)
    kube.merge_patch("ConfigMap", NS, name, {"data": {b.TABLE_KEY: json.dumps(theirs)}})
    with pytest.raises(RoutesChanged):
        router.set_routes(table.with_generation(4))

    class Overtaken(routers.ConfigMapRouter):
        """Reads, then lets another writer in once, like above."""

        raced = False

        def get_routes(self) -> RoutingTable | None:
            out = super().get_routes()
            if not self.raced:
                self.raced = True
                bump = {**theirs, "generation": 9}
                kube.merge_patch("ConfigMap", NS, name, {"data": {b.TABLE_KEY: json.dumps(bump)}})
            return out

    written = _put_routes(Overtaken(kube, o), table, last=3)
    assert written == 10  # after theirs (9), not after what we first read (7)
    stored = router.get_routes()
    assert stored is not None
    assert stored.generation == 10 and stored.sticky_header is None
