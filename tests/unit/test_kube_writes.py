"""kube.py's writes on the wire: who they are from (field manager), and what a 409 does.

A scripted HTTP server on 127.0.0.1 records every request and answers from a queue, so a
conflict can be put exactly between a read and a write. The same behaviour against the
real API server (managedFields, a real concurrent writer) is in
tests/integration/operator/test_real_cluster.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes
import pytest
from mlrollout.operator.kube import FIELD_MANAGER, RETRY_429, Conflict, Kube, KubeError

SVC = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "m", "namespace": "ns"},
    "spec": {"ports": [{"name": "http", "port": 80}]},
}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Script:
    """Answers (status, body) in order; when empty, 200 with the request's body."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[tuple[Kube, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            body = json.loads(raw) if raw else None
            script.seen.append(
                Seen(self.command, url.path, parse_qs(url.query), dict(self.headers), body)
            )
            echo = body if isinstance(body, dict) else {}
            status, answer = script.answers.pop(0) if script.answers else (200, echo)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield Kube(config, timeout=5), script
    finally:
        server.shutdown()
        server.server_close()


def status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {"kind": "Status", "code": code, "reason": reason, "message": message or reason}


def with_rv(obj: dict[str, Any], rv: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}


def test_every_write_names_the_operator_as_field_manager(api: tuple[Kube, Script]) -> None:
    kube, script = api
    assert FIELD_MANAGER == "mlrollout-operator"
    kube.create(SVC)
    kube.merge_patch("Service", "ns", "m", {"metadata": {"labels": {"a": "b"}}})
    kube.merge_patch("ModelDeployment", "ns", "m", {"status": {"phase": "x"}}, sub="status")
    kube.json_patch(
        "Service", "ns", "m", [{"op": "add", "path": "/metadata/labels/c", "value": "d"}]
    )
    kube.get("Service", "ns", "m")
    kube.delete("Service", "ns", "m")
    writes = [s for s in script.seen if s.method in ("POST", "PATCH", "PUT")]
    assert len(writes) == 4
    for s in writes:
        assert s.query.get("fieldManager") == [FIELD_MANAGER], (s.method, s.path)
    # Every request says who it is from, so audit logs and managedFields agree.
    for s in script.seen:
        assert s.headers["User-Agent"].startswith(FIELD_MANAGER + "/"), s.headers


def test_create_conflict_patches_what_exists(api: tuple[Kube, Script]) -> None:
    kube, script = api
    other = with_rv({**SVC, "spec": {"ports": [{"name": "http", "port": 81}]}}, "7")
    script.answers = [
        (404, status(404, "NotFound")),  # GET: absent
        (409, status(409, "AlreadyExists")),  # POST: another writer was first
        (200, other),  # GET: theirs
    ]
    kube.apply(SVC)
    assert [s.method for s in script.seen] == ["GET", "POST", "GET", "PATCH"]
    assert script.seen[-1].body["spec"]["ports"][0]["port"] == 80


def test_create_racing_a_delete_creates_again(api: tuple[Kube, Script]) -> None:
    """409 AlreadyExists, then the object is gone when read back: create once more."""
    kube, script = api
    script.answers = [
        (404, status(404, "NotFound")),  # GET: absent
        (409, status(409, "AlreadyExists")),  # POST: someone else's copy exists ...
        (404, status(404, "NotFound")),  # GET: ... and was deleted since
        (201, with_rv(SVC, "9")),  # POST again
    ]
    out = kube.apply(SVC)
    assert out["metadata"]["resourceVersion"] == "9"
    assert [s.method for s in script.seen] == ["GET", "POST", "GET", "POST"]


def test_guarded_write_sends_the_resource_version_read(api: tuple[Kube, Script]) -> None:
    kube, script = api
    kube.merge_patch(
        "ConfigMap", "ns", "m-routes", {"data": {"table.json": "{}"}}, resource_version="41"
    )
    assert script.seen[-1].body["metadata"]["resourceVersion"] == "41"
    script.answers = [(409, status(409, "Conflict", "the object has been modified"))]
    with pytest.raises(Conflict):
        kube.merge_patch(
            "ConfigMap", "ns", "m-routes", {"data": {"table.json": "{}"}}, resource_version="41"
        )


def test_update_retries_a_conflict_on_a_fresh_read(api: tuple[Kube, Script]) -> None:
    """Read-modify-write: the change is recomputed from what the other writer left."""
    kube, script = api
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    script.answers = [
        (200, {**with_rv(cm, "1"), "data": {"n": "1"}}),  # first read
        (409, status(409, "Conflict", "the object has been modified")),
        (200, {**with_rv(cm, "2"), "data": {"n": "5"}}),  # fresh read: another writer's 5
        (200, {**with_rv(cm, "3"), "data": {"n": "6"}}),
    ]
    bumps: list[str] = []

    def bump(current: dict[str, Any] | None) -> dict[str, Any]:
        assert current is not None
        n = int(current["data"]["n"])
        bumps.append(current["metadata"]["resourceVersion"])
        return {"data": {"n": str(n + 1)}}

    out = kube.update("ConfigMap", "ns", "c", bump)
    assert out["data"] == {"n": "6"}
    assert bumps == ["1", "2"]
    patches = [s for s in script.seen if s.method == "PATCH"]
    assert [p.body["metadata"]["resourceVersion"] for p in patches] == ["1", "2"]
    assert patches[-1].body["data"] == {"n": "6"}


def test_update_gives_up_after_bounded_attempts(api: tuple[Kube, Script]) -> None:
    kube, script = api
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    conflict = (409, status(409, "Conflict", "the object has been modified"))
    for i in range(10):
        script.answers += [(200, {**with_rv(cm, str(i)), "data": {}}), conflict]
    with pytest.raises(Conflict):
        kube.update("ConfigMap", "ns", "c", lambda cur: {"data": {"x": "1"}}, attempts=4)
    assert sum(s.method == "PATCH" for s in script.seen) == 4


def test_too_many_requests_is_retried_after_the_servers_delay(api: tuple[Kube, Script]) -> None:
    """API priority and fairness (or storage still initialising) answers 429 with a
    Retry-After; the request is sent again, a bounded number of times."""
    kube, script = api
    script.answers = [
        (429, status(429, "TooManyRequests", "storage is (re)initializing")),
        (429, status(429, "TooManyRequests", "too many requests")),
        (200, {"kind": "ServiceList", "metadata": {}, "items": []}),
    ]
    assert kube.list("Service", "ns") == []
    assert len(script.seen) == 3
    script.answers = [(429, status(429, "TooManyRequests"))] * 10
    with pytest.raises(KubeError, match="429"):
        kube.get("Service", "ns", "m")
    assert len(script.seen) == 3 + 1 + RETRY_429  # the first try and the retries


def test_create_first_skips_the_read_and_falls_back_on_conflict(api: tuple[Kube, Script]) -> None:
    kube, script = api
    kube.apply(SVC, create_first=True)
    assert [s.method for s in script.seen] == ["POST"]
    script.answers = [(409, status(409, "AlreadyExists")), (200, with_rv(SVC, "3"))]
    kube.apply({**SVC, "spec": {"ports": [{"name": "http", "port": 82}]}}, create_first=True)
    assert [s.method for s in script.seen[1:]] == ["POST", "GET", "PATCH"]
