"""What ``/metrics`` exposes is exactly what docs/metrics.md documents: names, types, labels.

A real ``mlrollout serve`` process for the model server, and the router on real sockets
in this process (its metrics do not depend on the process around them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlrollout.services.netutil import free_port
from mlrollout.services.router.proxy import Router, RouterConfig
from mlrollout.services.router.server import start_server
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import FakeBackend, table_doc
from tests.doubles.server import (
    descendants,
    http_status,
    serve_command,
    spawn,
    wait_ready,
)

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
COMMON = {"deployment", "model", "version", "track"}  # "L" in the doc


def documented(section: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``name -> (type, label names)`` from the tables of one part of docs/metrics.md."""
    text = DOC.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text[start : end if end > 0 else None].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"`mlrollout_[a-z_]+`", cells[0]):
            continue
        # Label names are the backticked words outside parentheses (those list values).
        labels_cell = re.sub(r"\([^)]*\)", "", cells[2])
        labels = set(re.findall(r"`([a-z0-9_]+)`", labels_cell))
        if re.match(r"L\b", labels_cell):
            labels |= COMMON
        out[cells[0].strip("`")] = (cells[1], frozenset(labels))
    assert out, f"no metric table under {section!r} in {DOC}"
    return out


def exposed(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """``name -> (type, label-name sets of its samples)`` from an exposition."""
    out: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        if name.endswith("_created"):
            continue  # prometheus_client's own; `mlrollout router` switches them off (cli.py)
        # The parser strips a counter's _total; the documented name keeps it.
        if family.type == "counter":
            name += "_total"
        label_sets = {frozenset(set(s.labels) - {"le"}) for s in family.samples}
        out[name] = (family.type, label_sets)
    return out


def assert_matches(
    doc: dict[str, tuple[str, frozenset[str]]],
    text: str,
    no_samples: tuple[str, ...] = (),
    other_model_kinds: tuple[str, ...] = (),
) -> None:
    """``other_model_kinds``: documented families that this kind of model does not export."""
    seen = exposed(text)
    doc = {name: row for name, row in doc.items() if name not in other_model_kinds}
    undocumented = sorted(n for n in seen if n.startswith("mlrollout_") and n not in doc)
    assert not undocumented, f"exposed but not in docs/metrics.md: {undocumented}"
    for name, (kind, labels) in doc.items():
        assert name in seen, f"{name} is documented but not exposed"
        got_kind, label_sets = seen[name]
        assert got_kind == kind, f"{name}: exposed as {got_kind}, documented as {kind}"
        expected = set() if name in no_samples else {labels}
        assert label_sets == expected, f"{name}: labels {label_sets}, documented {set(labels)}"


def post(url: str, body: Any) -> dict[str, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_model_server_metrics_are_the_documented_ones(
    serve_model: Any, example_artifacts: dict[str, Path]
) -> None:
    artifact = example_artifacts["v1"]
    lines = (artifact.parent / "traffic.jsonl").read_text().splitlines()[:1000]
    rows = [json.loads(line)["record"] for line in lines]
    with serve_model(artifact, args=("--deployment", "qa")) as srv:
        # One full drift window, so the per-window gauges have samples too.
        answer = post(srv.url + "/predict", {"records": rows})
        post(srv.url + "/feedback", {"feedback_id": answer["feedback_id"], "labels": [0] * 1000})
        with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    regressor_only = ("mlrollout_feedback_abs_error", "mlrollout_feedback_squared_error")
    assert_matches(documented("\n## Model server\n"), text, other_model_kinds=regressor_only)


async def test_router_metrics_are_the_documented_ones() -> None:
    stable, canary = FakeBackend("v1"), FakeBackend("v2")
    ports = {"stable": free_port(), "canary": free_port(), "router": free_port()}
    router = Router(RouterConfig())
    servers = [
        await start_server(stable, "127.0.0.1", ports["stable"]),
        await start_server(canary, "127.0.0.1", ports["canary"]),
        await start_server(router, "127.0.0.1", ports["router"]),
    ]
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['router']}", timeout=10)
    try:
        # Shadow, paired agreement and the guard on, so that each of their families has samples.
        doc = table_doc(
            1,
            ports["stable"],
            ports["canary"],
            50,
            shadowPercent=100,
            agreement={"percent": 100},
            guard={"alpha": 0.01, "minAgreement": 0.5},
        )
        assert router.offer(json.dumps(doc).encode(), "test")
        assert not router.offer(b"{not json", "test")
        for i in range(20):
            resp = await client.post("/predict", content=json.dumps([i]).encode())
            assert resp.status_code == 200
        await asyncio.gather(*router._shadow_tasks)
        text = (await client.get("/metrics")).text
    finally:
        await client.aclose()
        await router.aclose()
        for server in servers:
            server.close()
    # No canary was unreachable: the fallbacks family is exposed without samples.
    assert_matches(documented("\n## Router\n"), text, ("mlrollout_router_fallbacks_total",))


def test_a_killed_server_leaves_no_worker_serving_behind(
    example_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    # BentoML starts its workers in sessions of their own: after `kill -9` of
    # `mlrollout serve`, a worker would go on answering on the port with the old model.
    port = free_port()
    server = spawn(serve_command(str(example_artifacts["v1"]), port), port=port, log_dir=tmp_path)
    family: list[int] = []
    try:
        wait_ready(server, 90)
        family = descendants(server.pid)
        assert family, "the supervisor has workers"
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        status = None
        for _ in range(100):  # bounded: up to ~10 s for the worker to notice
            status = http_status(f"{server.url}/livez", timeout=1)
            if status is None:
                break
            time.sleep(0.1)
        assert status is None, "an orphaned worker still serves the port"
    finally:
        server.stop()
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
