"""Issue 12 (router): the real ``mlrollout router`` process under hostile tables and backends.

Memory is the router process's own peak RSS (``VmHWM`` in /proc/PID/status), held against
the 256Mi limit the operator sets on the router pod.
"""

from __future__ import annotations

import contextlib
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


POD_LIMIT = 256 << 20  # the router pod's memory limit (operator/builders/)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_router_memory_stays_under_the_pod_limit_under_hostile_backends(tmp_path: Path) -> None:
    """Every hostile backend kind as the canary (weight 100), 48 requests each, 24 at once:
    every client gets stable's answer and the router's peak RSS stays under 256Mi."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.doubles.hostile import KINDS, HostileBackend

    peaks: dict[str, int] = {}
    with fake_backend("v1") as (stable, _), HostileBackend(KINDS[0]) as canary:
        table = tmp_path / "table.json"
        write_table(table, table_doc(1, stable, canary.port, 100))
        options = ("--canary-timeout", "1", "--log-level", "ERROR")
        with router(table, *options) as (port, proc):
            base = f"http://127.0.0.1:{port}"
            start_rss = rss(proc.pid)

            def one(_: int) -> tuple[int, str]:
                with httpx.Client(base_url=base, timeout=30) as client:
                    r = client.post("/predict", content=b"[1]")
                    return r.status_code, r.headers.get("x-mlrollout-track", "")

            with ThreadPoolExecutor(24) as pool:
                for kind in KINDS:
                    canary.kind = kind
                    results = list(pool.map(one, range(48)))
                    assert set(results) == {(200, "stable")}, (kind, set(results))
                    peaks[kind] = peak_rss(proc.pid)
            fallbacks = metric(base, "mlrollout_router_fallbacks_total", track="canary")
            assert fallbacks == 48 * len(KINDS)
    print(f"router RSS at start {start_rss >> 20} MiB; peak after each kind (MiB):")
    for kind, peak in peaks.items():
        print(f"  {kind:20} {peak >> 20}")
    assert max(peaks.values()) < POD_LIMIT


@pytest.mark.slow
def test_router_memory_stays_under_the_pod_limit_under_hostile_clients(tmp_path: Path) -> None:
    """64 MB request headers, 16 MiB bodies dripped, and slow-loris connections at once."""
    import socket
    import threading

    with fake_backend("v1") as (stable, _):
        table = tmp_path / "table.json"
        write_table(table, table_doc(1, stable, None, 0))
        options = ("--header-timeout", "2", "--body-timeout", "2", "--log-level", "ERROR")
        with router(table, *options) as (port, proc):
            base = f"http://127.0.0.1:{port}"

            def huge_header() -> None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port)) as s,
                ):
                    s.sendall(b"GET /predict HTTP/1.1\r\nhost: x\r\nx-huge: ")
                    chunk = b"h" * (1 << 20)
                    for _ in range(64):
                        s.sendall(chunk)

            def big_body() -> None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port)) as s,
                ):
                    n = (16 << 20) - 1
                    s.sendall(
                        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % n
                    )
                    chunk = b"b" * (1 << 20)
                    for _ in range(15):  # all but the last MiB, then silence until the 408
                        s.sendall(chunk)
                    s.settimeout(10)
                    s.recv(1000)

            def slow_loris(holder: list[socket.socket]) -> None:
                for _ in range(200):
                    with contextlib.suppress(OSError):
                        s = socket.create_connection(("127.0.0.1", port))
                        s.sendall(b"GET /predict HTTP/1.1\r\nhost: x\r\n")
                        holder.append(s)

            held: list[socket.socket] = []
            threads = [threading.Thread(target=huge_header) for _ in range(16)]
            threads += [threading.Thread(target=big_body) for _ in range(12)]
            threads.append(threading.Thread(target=slow_loris, args=(held,)))
            for t in threads:
                t.start()
            # Other clients are served meanwhile.
            with httpx.Client(base_url=base, timeout=10) as client:
                for _ in range(20):
                    assert client.post("/predict", content=b"[1]").status_code == 200
            for t in threads:
                t.join(60)
            time.sleep(2.5)  # the slow-loris connections got their 408 and were closed
            answered = 0
            for s in held:
                s.settimeout(2)
                with contextlib.suppress(OSError):
                    answered += s.recv(100).startswith(b"HTTP/1.1 408")
                s.close()
            assert answered == len(held) > 0
            peak = peak_rss(proc.pid)
    print(f"router peak RSS under hostile clients: {peak >> 20} MiB")
    assert peak < POD_LIMIT
