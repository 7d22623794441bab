"""Table sources and the keep-the-last-good-table rule (no network)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mlrollout.services.router.proxy import Router, RouterConfig
from mlrollout.services.router.source import FileSource
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import table_doc, write_table


def sample(router: Router, name: str, **labels: str) -> float | None:
    text = router.metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_file_source_offers_only_changes(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    write_table(path, table_doc(1, 8001, 8002, 10))
    got: list[bytes] = []
    source = FileSource(path)

    def offer(data: bytes, origin: str) -> bool:
        assert origin == f"file {path}"
        got.append(data)
        return True

    source.poll(offer)
    source.poll(offer)
    source.poll(offer, force=True)  # re-read, same content: nothing new
    assert len(got) == 1
    write_table(path, table_doc(2, 8001, 8002, 20))
    source.poll(offer)
    assert [json.loads(d)["generation"] for d in got] == [1, 2]


def test_file_source_survives_a_missing_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.json"
    source = FileSource(path)
    got: list[bytes] = []

    def offer(data: bytes, origin: str) -> bool:
        got.append(data)
        return True

    with caplog.at_level(logging.ERROR):
        source.poll(offer)
        source.poll(offer)
    assert got == []
    # Issue 13: no table yet is how every local run starts, not an error (router.log
    # showed an ERROR on every start).
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    write_table(path, table_doc(1, 8001, None, 0))
    source.poll(offer)
    assert len(got) == 1
    # A table that was there and went away is an error, said once.
    path.unlink()
    with caplog.at_level(logging.ERROR):
        source.poll(offer)
        source.poll(offer)
    assert sum("cannot read routing table" in r.message for r in caplog.records) == 1


async def test_router_keeps_the_last_good_table(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(RouterConfig())
    assert sample(router, "mlrollout_router_table_generation") == -1
    assert router.offer(json.dumps(table_doc(2, 8001, 8002, 10)).encode(), "test")
    bad = [
        b"{oops",
        json.dumps(table_doc(3, 8001, 8002, 120)).encode(),
        json.dumps(table_doc(1, 8001, 8002, 50)).encode(),  # lower generation
    ]
    with caplog.at_level(logging.ERROR):
        for data in bad:
            assert not router.offer(data, "test")
    assert router.table is not None and router.table.generation == 2
    assert router.table.canary_weight == 10
    assert sample(router, "mlrollout_router_table_rejected_total", deployment="demo") == 3
    assert sample(router, "mlrollout_router_table_generation", deployment="demo") == 2
    assert "generation 2 stays" in caplog.records[-1].message
    assert router.last_error is not None and "lower" in str(router.last_error["error"])
    assert sample(router, "mlrollout_router_weight", track="canary", version="v2") == 10
    await router.aclose()


async def test_weight_gauges_follow_the_table() -> None:
    router = Router(RouterConfig())
    router.offer(json.dumps(table_doc(1, 8001, 8002, 10)).encode(), "test")
    router.offer(json.dumps(table_doc(2, 8001, None, 0)).encode(), "test")
    assert sample(router, "mlrollout_router_weight", track="stable") == 100
    assert sample(router, "mlrollout_router_weight", track="canary") is None
    assert len(router._pools) == 1  # the canary's pool is closed
    await router.aclose()
