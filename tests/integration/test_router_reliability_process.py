"""Issue 12 (router): the real ``mlrollout router`` process under hostile tables and backends.

Memory is the router process's own peak RSS (``VmHWM`` in /proc/PID/status), held against
the 256Mi limit the operator sets on the router pod.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import fake_backend, router, table_doc, write_table

pytestmark = pytest.mark.integration


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_hostile_tables_are_counted_and_a_later_rollback_still_applies(tmp_path: Path) -> None:
    with fake_backend("v1") as (stable, _), fake_backend("v2") as (canary, _):
        table = tmp_path / "table.json"
        write_table(table, table_doc(1, stable, canary, 100))
        idna: dict[str, Any] = table_doc(2, stable, canary, 100)
        idna["backends"]["canary"]["url"] = "http://a..b:18002"
        long_label: dict[str, Any] = table_doc(2, stable, canary, 100)
        long_label["backends"]["canary"]["url"] = "http://" + "a" * 64 + ":18002"
        hostile: list[str] = ["[" * 100_000, json.dumps(idna), json.dumps(long_label)]
        with router(table) as (port, _), httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            base = f"http://127.0.0.1:{port}"
            assert c.post("/predict", content=b"[1]").headers["x-mlrollout-track"] == "canary"
            for i, text in enumerate(hostile, start=1):
                write_table(table, text)
                wait_for(
                    lambda i=i: metric(base, "mlrollout_router_table_rejected_total") == i,  # type: ignore[misc]
                    f"rejection {i}",
                )
                assert c.get("/readyz").status_code == 200
                assert metric(base, "mlrollout_router_table_source_up") == 1
            write_table(table, table_doc(3, stable, canary, 0))  # the rollback
            wait_for(lambda: metric(base, "mlrollout_router_table_generation") == 3, "rollback")
            assert c.post("/predict", content=b"[1]").headers["x-mlrollout-track"] == "stable"
            big = tmp_path / "big.json"
            big.write_bytes(b" " * (2 << 20) + json.dumps(table_doc(4, stable, None, 0)).encode())
            big.replace(table)
            wait_for(lambda: metric(base, "mlrollout_router_table_rejected_total") == 4, "size")
            assert "larger than" in c.get("/-/status").json()["lastRejected"]["error"]
