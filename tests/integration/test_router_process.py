"""`mlrollout router --table FILE` as a real process in front of fake backend processes."""

from __future__ import annotations

import contextlib
import math
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import fake_backend, router, table_doc, write_table

pytestmark = pytest.mark.integration


@pytest.fixture
def backends() -> Iterator[tuple[int, int, Any]]:
    with fake_backend("v1") as (stable, _), fake_backend("v2") as (canary, canary_proc):
        yield stable, canary, canary_proc


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def generation(base: str) -> int:
    return int(httpx.get(f"{base}/-/table").json()["generation"])


@contextlib.contextmanager
def background_load(
    base: str, workers: int = 4, limit: int = 4000
) -> Iterator[list[httpx.Response | Exception]]:
    """Send requests from ``workers`` threads until the block ends (at most ``limit``)."""
    results: list[httpx.Response | Exception] = []
    stop = threading.Event()

    def worker(n: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(limit // workers):
                if stop.is_set():
                    return
                try:
                    results.append(client.post("/predict", content=b"[%d, %d]" % (n, i)))
                except httpx.HTTPError as exc:
                    results.append(exc)

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(worker, n) for n in range(workers)]
        try:
            yield results
        finally:
            stop.set()
            for f in futures:
                f.result(timeout=60)


def test_split_converges_to_the_weights(tmp_path: Path, backends: tuple[int, int, Any]) -> None:
    stable, canary, _ = backends
    table = tmp_path / "table.json"
    write_table(table, table_doc(1, stable, canary, 30))
    n = 1000
    with router(table) as (port, _), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        tracks = Counter(
            client.post("/predict", content=b"[1]").headers["x-mlrollout-track"] for _ in range(n)
        )
        served = metric(
            f"http://127.0.0.1:{port}", "mlrollout_router_requests_total", track="canary"
        )
    # 5 binomial standard deviations: a correct router fails this about once in 1.7 million runs.
    tolerance = 5 * math.sqrt(n * 0.3 * 0.7)
    assert abs(tracks["canary"] - 0.3 * n) < tolerance, tracks
    assert tracks["canary"] + tracks["stable"] == n
    assert served == tracks["canary"]


def test_sticky_users_stay_put_and_raising_the_weight_only_adds_canary_users(
    tmp_path: Path, backends: tuple[int, int, Any]
) -> None:
    stable, canary, _ = backends
    table = tmp_path / "table.json"
    write_table(table, table_doc(1, stable, canary, 20, stickyHeader="x-user-id"))
    users = [f"user-{i}" for i in range(60)]
    with router(table) as (port, _), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:

        def seen() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {u: set() for u in users}
            for _ in range(3):
                for u in users:
                    r = client.post("/predict", content=b"[1]", headers={"x-user-id": u})
                    out[u].add(r.headers["x-mlrollout-track"])
            return out

        before = seen()
        assert all(len(tracks) == 1 for tracks in before.values())
        assert {next(iter(t)) for t in before.values()} == {"stable", "canary"}
        write_table(table, table_doc(2, stable, canary, 60, stickyHeader="x-user-id"))
        wait_for(lambda: generation(f"http://127.0.0.1:{port}") == 2, "generation 2")
        after = seen()
    assert all(len(tracks) == 1 for tracks in after.values())
    for u in users:
        if before[u] == {"canary"}:
            assert after[u] == {"canary"}, u
    assert sum(after[u] == {"canary"} for u in users) > sum(before[u] == {"canary"} for u in users)


def test_weight_change_drops_no_request(tmp_path: Path, backends: tuple[int, int, Any]) -> None:
    stable, canary, _ = backends
    table = tmp_path / "table.json"
    write_table(table, table_doc(1, stable, canary, 0))
    with router(table) as (port, _):
        base = f"http://127.0.0.1:{port}"
        with background_load(base) as results:
            wait_for(lambda: len(results) > 100, "first requests")
            write_table(table, table_doc(2, stable, canary, 100))
            wait_for(lambda: generation(base) == 2, "generation 2")
            mark = len(results)
            wait_for(lambda: len(results) > mark + 100, "requests after the change")
        assert metric(base, "mlrollout_router_table_generation") == 2
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
    tracks = [r.headers["x-mlrollout-track"] for r in results if isinstance(r, httpx.Response)]
    assert tracks[0] == "stable" and tracks[-1] == "canary"
    # Requests still in flight may finish on the old table, so look a few back from the end.
    assert set(tracks[-50:]) == {"canary"}


def test_killing_the_canary_mid_load_loses_no_request(
    tmp_path: Path, backends: tuple[int, int, Any]
) -> None:
    stable, canary, canary_proc = backends
    table = tmp_path / "table.json"
    write_table(table, table_doc(1, stable, canary, 50))
    with router(table) as (port, _):
        base = f"http://127.0.0.1:{port}"
        with background_load(base) as results:
            wait_for(lambda: len(results) > 200, "load on both backends")
            canary_proc.kill()
            mark = len(results)
            wait_for(lambda: len(results) > mark + 300, "requests after the kill")
        fallbacks = metric(base, "mlrollout_router_fallbacks_total", track="canary")
    failures = [r for r in results if not isinstance(r, httpx.Response) or r.status_code != 200]
    assert failures == []
    assert fallbacks > 0
    assert {r.headers["x-mlrollout-track"] for r in results[-100:]} == {"stable"}  # type: ignore[union-attr]


def test_bad_tables_are_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, backends: tuple[int, int, Any]
) -> None:
    stable, canary, _ = backends
    table = tmp_path / "table.json"
    write_table(table, table_doc(5, stable, canary, 0))
    bad: list[dict[str, Any] | str] = [
        "{ not json",
        table_doc(6, stable, canary, 120),
        table_doc(4, stable, canary, 100),  # lower generation
        {**table_doc(7, stable, canary, 10), "weights": {"stable": 90, "blue": 10}},
    ]
    with router(table) as (port, _), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        base = f"http://127.0.0.1:{port}"
        for i, doc in enumerate(bad, start=1):
            write_table(table, doc)
            wait_for(
                lambda i=i: metric(base, "mlrollout_router_table_rejected_total") == i,  # type: ignore[misc]
                f"rejection {i}",
            )
            assert generation(base) == 5
            r = client.post("/predict", content=b"[1]")
            assert (r.status_code, r.headers["x-mlrollout-track"]) == (200, "stable")
        table.unlink()  # the source disappears: keep serving
        time.sleep(0.4)
        assert client.post("/predict", content=b"[1]").status_code == 200
        assert metric(base, "mlrollout_router_table_generation") == 5
        status = client.get("/-/status").json()
        assert "must be an integer in 0..100" not in status["lastRejected"]["error"]
        assert "unknown backend 'blue'" in status["lastRejected"]["error"]


def test_router_starts_without_a_table_and_becomes_ready_when_it_appears(
    tmp_path: Path, backends: tuple[int, int, Any]
) -> None:
    stable, canary, _ = backends
    table = tmp_path / "later.json"
    with router(table) as (port, _), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.get("/readyz").status_code == 503
        assert client.post("/predict", content=b"[1]").status_code == 503
        assert metric(f"http://127.0.0.1:{port}", "mlrollout_router_table_generation") == -1
        write_table(table, table_doc(1, stable, canary, 0))
        wait_for(lambda: client.get("/readyz").status_code == 200, "readiness")
        assert client.post("/predict", content=b"[1]").status_code == 200


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    with fake_backend("v1", "--delay", "1.0") as (stable, _):
        table = tmp_path / "table.json"
        write_table(table, table_doc(1, stable, None, 0))
        with router(table) as (port, proc), ThreadPoolExecutor(1) as pool:
            base = f"http://127.0.0.1:{port}"
            pending = pool.submit(httpx.post, f"{base}/predict", content=b"[1]", timeout=10)
            wait_for(lambda: httpx.get(f"{base}/-/status").json()["inflight"] == 1, "in flight")
            proc.terminate()
            assert pending.result(timeout=10).status_code == 200
            assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--configmap", "no-slash"], "--configmap must be NAMESPACE/NAME"),
        (["--table", "t.json", "--configmap", "a/b"], "not allowed with argument"),
        ([], "one of the arguments --table --configmap is required"),
        (["--table", "t.json", "--timeout", "0"], "argument --timeout: must be > 0"),
    ],
)
def test_cli_refuses_bad_arguments(args: list[str], message: str) -> None:
    from tests.doubles.router import ROUTER_CMD

    out = subprocess.run([*ROUTER_CMD, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert message in out.stderr
