"""Issue 12 item 1: no table, however hostile, stops the table watcher or goes uncounted.

A rejected table is counted and logged with the last good table kept in force; a source
that dies makes the router unready (``/readyz`` 503) and shows in metrics.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlrollout.services.router.proxy import Request, Router, RouterConfig
from mlrollout.services.router.source import FileSource, watch_source
from mlrollout.services.router.table import TableError, parse_table
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import table_doc, write_table

HOSTILE_URLS = [
    "http://a..b:18002",  # empty label: UnicodeError from the IDNA codec
    "http://" + "a" * 64 + ".example:18002",  # a label longer than 63
    "http://" + "a" * 300 + ":18002",
    "http://.:18002",
    "http://127.0.0.1:0",
]


def sample(router: Router, name: str, **labels: str) -> float | None:
    text = router.metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def good(generation: int, weight: int = 10) -> bytes:
    return json.dumps(table_doc(generation, 8001, 8002, weight)).encode()


def with_canary_url(generation: int, url: str) -> bytes:
    doc = table_doc(generation, 8001, 8002, 10)
    doc["backends"]["canary"]["url"] = url
    return json.dumps(doc).encode()


def ready(router: Router) -> int:
    reply = router._local(Request(b"GET", b"/readyz", [], b""))
    assert reply is not None
    return reply.status


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_parse_table_refuses_hosts_it_cannot_connect_to(url: str) -> None:
    with pytest.raises(TableError, match=r"backends\.canary\.url"):
        parse_table(with_canary_url(1, url))


async def test_deeply_nested_json_is_a_counted_rejection() -> None:
    router = Router(RouterConfig())
    assert router.offer(good(1), "test")
    for depth in (1000, 100_000):
        assert not router.offer(b"[" * depth, "test")
    assert not router.offer(b'{"generation": 2, "backends": ' + b'{"a": ' * 100_000, "test")
    assert router.table is not None and router.table.generation == 1
    assert sample(router, "mlrollout_router_table_rejected_total") == 3
    assert router.last_error is not None and "nested" in str(router.last_error["error"])
    assert router.offer(good(2, 0), "test")  # a later rollback still applies
    assert router.table.canary_weight == 0
    await router.aclose()


@pytest.mark.parametrize("url", HOSTILE_URLS)
async def test_a_backend_host_that_is_no_valid_name_is_a_counted_rejection(url: str) -> None:
    router = Router(RouterConfig())
    assert router.offer(good(1), "test")
    assert not router.offer(with_canary_url(2, url), "test")
    assert router.table is not None and router.table.generation == 1
    assert sample(router, "mlrollout_router_table_rejected_total") == 1
    assert router.offer(good(3, 0), "test")
    await router.aclose()


async def test_an_unexpected_error_while_applying_is_a_counted_rejection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router(RouterConfig())
    assert router.offer(good(1), "test")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("mlrollout.services.router.proxy.Upstream", boom)
    assert not router.offer(json.dumps(table_doc(2, 8003, 8004, 50)).encode(), "test")
    assert router.table is not None and router.table.generation == 1
    assert sample(router, "mlrollout_router_table_rejected_total") == 1
    assert "injected fault" in str(router.last_error)
    await router.aclose()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=30,
        ).map(lambda d: json.dumps(d).encode()),
        st.builds(
            lambda gen, url, w: with_canary_url(gen, url).replace(
                b'"canary": 10', b'"canary": %d' % w
            ),
            st.integers(min_value=2, max_value=5),
            st.text(max_size=80).map(lambda t: "http://" + t),
            st.integers(min_value=-5, max_value=105),
        ),
    )
)
def test_offer_never_raises(data: bytes) -> None:
    async def run() -> None:
        router = Router(RouterConfig())
        router.offer(good(1), "seed")
        before = sample(router, "mlrollout_router_table_rejected_total") or 0
        applied = router.offer(data, "fuzz")
        after = sample(router, "mlrollout_router_table_rejected_total") or 0
        assert router.table is not None
        assert applied or after == before + 1 or data == good(1)
        await router.aclose()

    asyncio.run(run())


def test_file_source_refuses_an_oversized_table_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(b" " * (2 << 20) + good(1))
    rejected: list[str] = []
    source = FileSource(path, max_bytes=1 << 20)
    source.poll(lambda data, origin: rejected.append("offered") or True, reject=rejected.append)
    assert len(rejected) == 1 and "larger than 1048576 bytes" in rejected[0]
    source.poll(lambda data, origin: rejected.append("offered") or True, reject=rejected.append)
    assert len(rejected) == 1  # the same file is refused once, not on every poll
    write_table(path, table_doc(1, 8001, 8002, 10))
    source.poll(lambda data, origin: rejected.append("offered") or True, reject=rejected.append)
    assert rejected[-1] == "offered"


async def test_the_watcher_survives_hostile_tables_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    write_table(path, table_doc(1, 8001, 8002, 10))
    router = Router(RouterConfig())
    source = FileSource(path, interval=0.01, recheck=0.05)
    task = asyncio.create_task(watch_source(router, source))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if router.table is not None:
                break
        for gen, data in [
            (1, b"[" * 100_000),
            (1, with_canary_url(2, "http://a..b:18002")),
            (1, b"\xff\xfe" * 1000),
            (3, good(3, 0)),  # the rollback after the hostile tables
        ]:
            write_table(path, data.decode("latin-1"))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if router.table is not None and router.table.generation == gen:
                    break
            assert router.table is not None and router.table.generation == gen
        assert router.table.canary_weight == 0
        assert sample(router, "mlrollout_router_table_rejected_total") == 3
        assert not task.done()
        assert ready(router) == 200
        assert sample(router, "mlrollout_router_table_source_up") == 1
    finally:
        task.cancel()
        await router.aclose()


class _DyingSource:
    def __init__(self) -> None:
        self.runs = 0

    def describe(self) -> str:
        return "dying source"

    async def run(self, offer: object, reject: object = None) -> None:
        self.runs += 1
        if self.runs == 1:
            assert callable(offer)
            offer(good(1), "dying source")  # type: ignore[operator]
            raise RuntimeError("the source crashed")
        await asyncio.sleep(3600)


async def test_a_dead_source_makes_the_router_unready_and_shows_in_metrics() -> None:
    router = Router(RouterConfig())
    source = _DyingSource()
    task = asyncio.create_task(watch_source(router, source, backoff=0.3))
    try:
        await asyncio.sleep(0.1)
        assert router.table is not None  # the table it gave stays in force
        assert ready(router) == 503
        assert sample(router, "mlrollout_router_table_source_up") == 0
        assert sample(router, "mlrollout_router_table_source_failures_total") == 1
        status = router._local(Request(b"GET", b"/-/status", [], b""))
        assert status is not None and b"the source crashed" in status.body
        await asyncio.sleep(0.5)  # restarted after the back-off
        assert source.runs == 2
        assert ready(router) == 200
        assert sample(router, "mlrollout_router_table_source_up") == 1
    finally:
        task.cancel()
        await router.aclose()
