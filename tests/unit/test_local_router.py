"""The file router: valid tables only, atomically, never a lower generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlrollout.operator.local.router import FileRouter
from mlrollout.services.router.table import RoutingTable, TableError, parse_table


def _doc(generation: int, canary: int = 0) -> dict:
    backends = {"stable": {"url": "http://127.0.0.1:8001", "version": "v1"}}
    weights = {"stable": 100 - canary}
    if canary:
        backends["canary"] = {"url": "http://127.0.0.1:8002", "version": "v2"}
        weights["canary"] = canary
    return {
        "generation": generation,
        "deployment": "fraud",
        "backends": backends,
        "weights": weights,
        "stickyHeader": None,
        "shadowPercent": 0,
    }


def _table(generation: int, canary: int = 0) -> RoutingTable:
    return parse_table(_doc(generation, canary))


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    router = FileRouter(tmp_path / "run" / "table.json")
    assert router.get_routes() is None
    router.set_routes(_table(1))
    router.set_routes(_table(2, canary=10))
    assert router.get_routes() == _table(2, canary=10)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["table.json"]


def test_invalid_table_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    router = FileRouter(tmp_path / "table.json")
    router.set_routes(_table(1))
    bad = _doc(2, canary=10)
    bad["weights"] = {"stable": 70, "canary": 10}  # does not add up to 100
    with pytest.raises(TableError):
        router.set_routes(parse_table(bad))
    assert router.get_routes() == _table(1)


def test_lower_generation_is_an_error_not_a_silent_no_op(tmp_path: Path) -> None:
    router = FileRouter(tmp_path / "table.json")
    router.set_routes(_table(5))
    with pytest.raises(TableError, match="lower"):
        router.set_routes(_table(4, canary=10))
    router.set_routes(_table(5))  # the same table again: nothing to do
    assert json.loads((tmp_path / "table.json").read_text())["generation"] == 5


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text("{not json")
    with pytest.raises(TableError, match="not valid JSON"):
        FileRouter(path).get_routes()
