"""Reliability suite, model server part (issue 12): raw-socket abuse, HTTP fuzzing of every
endpoint, and the feedback store's memory bound, against a real ``mlrollout serve``.

Each defect the issue found has a regression test here that failed before the fix:
a 64 MB header was accepted and stalled other requests; dripped headers kept a
connection 150 s+; ``Upgrade: websocket`` / ``CONNECT`` got a 500 after 60 s; a partial
body then silence got a 504 after 60 s not counted in ``mlrollout_model_requests_total``.
Socket timeouts below are far above the server's limits (2 s here) and far below the
old behaviour (60 s+): they decide pass or fail, never a latency figure.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.doubles.server import RunningServer, descendants

pytestmark = pytest.mark.integration

LIMIT_S = 2  # header and body time limits of the server under test
FEEDBACK_BYTES = 512 << 10  # the store is full after ~370 predictions of 1,000 rows
SOCKET_TIMEOUT_S = 20  # an answer later than this is the old hang


@pytest.fixture(scope="module")
def server(serve_model: Any, example_artifacts: dict[str, Path]) -> Iterator[RunningServer]:
    args = (
        "--deployment", "rel", "--header-timeout", str(LIMIT_S), "--body-timeout", str(LIMIT_S),
        "--feedback-bytes", str(FEEDBACK_BYTES),
    )  # fmt: skip
    with serve_model(example_artifacts["v1"], args=args) as srv:
        yield srv


def connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_S)
    sock.settimeout(SOCKET_TIMEOUT_S)
    return sock


def read_response(
    sock: socket.socket, rest: bytearray | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (content-length bodies only), or raise on a closed socket.
    Bytes read past it stay in ``rest`` for the next call (pipelined answers)."""
    data = rest if rest is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} bytes: {bytes(data[:200])!r}")
        data += chunk
    end = data.index(b"\r\n\r\n")
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(data) < end + 4 + length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    body = bytes(data[end + 4 : end + 4 + length])
    del data[: end + 4 + length]
    return status, headers, body


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def get(server: RunningServer, path: str) -> int:
    try:
        with urllib.request.urlopen(server.url + path, timeout=SOCKET_TIMEOUT_S) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def metric(server: RunningServer, name: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=SOCKET_TIMEOUT_S) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def record_body(example_artifacts: dict[str, Path], n: int = 1) -> bytes:
    lines = (example_artifacts["v1"].parent / "traffic.jsonl").read_text().splitlines()[:n]
    return json.dumps({"records": [json.loads(line)["record"] for line in lines]}).encode()


# --- header size -------------------------------------------------------------------------


def test_a_header_over_64_kib_is_431_and_does_not_stall_others(server: RunningServer) -> None:
    sent = 0
    outcome: dict[str, Any] = {}

    def hostile() -> None:
        nonlocal sent
        sock = connect(server)
        try:
            sock.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\nx-big: ")
            chunk = b"a" * (1 << 20)
            for _ in range(64):  # 64 MB of one header value
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError as exc:  # the server closed the connection on us: expected
            outcome["send_error"] = type(exc).__name__
        try:
            outcome["response"] = read_response(sock)
        except OSError as exc:
            outcome["read_error"] = repr(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=hostile)
    thread.start()
    others = [get(server, "/livez") for _ in range(20)]
    thread.join(SOCKET_TIMEOUT_S * 2)
    assert not thread.is_alive()
    assert others == [200] * 20
    status, headers, body = outcome["response"]
    assert status == 431, outcome
    assert headers["connection"] == "close"
    assert "65536-byte limit" in json.loads(body)["error"]
    # Refused on arrival: it could not push the 64 MB (only what socket buffers hold).
    print(f"64 MB header: refused after {sent >> 20} MiB were sent (socket buffers included)")
    assert sent < 32 << 20, f"server read {sent} bytes of header"
    assert metric(server, "mlrollout_model_http_refusals_total", reason="header_too_large") >= 1


def test_headers_just_under_the_limit_are_served(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    body = record_body(example_artifacts)
    filler = "b" * (60 << 10)
    req = urllib.request.Request(
        server.url + "/predict", body, {"content-type": "application/json", "x-filler": filler}
    )
    with urllib.request.urlopen(req, timeout=SOCKET_TIMEOUT_S) as resp:
        assert resp.status == 200


# --- header and body time ------------------------------------------------------------------


def test_dripped_headers_get_408_once_the_header_time_limit_passes(server: RunningServer) -> None:
    sock = connect(server)
    start = time.monotonic()
    try:
        sock.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\n")
        with pytest.raises(OSError):  # the server closes while we drip
            for _ in range(int(SOCKET_TIMEOUT_S / 0.25)):
                sock.sendall(b"x")
                time.sleep(0.25)
        status, headers, body = read_response(sock)
    finally:
        sock.close()
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["reason"] == "header_timeout"
    assert time.monotonic() - start < SOCKET_TIMEOUT_S


def test_a_silent_connection_is_closed(server: RunningServer) -> None:
    sock = connect(server)
    try:
        status, _, _ = read_response(sock)  # sent nothing at all
    finally:
        sock.close()
    assert status == 408


def test_a_partial_body_then_silence_is_408_and_counted(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    before = metric(
        server, "mlrollout_model_requests_total", endpoint="predict", outcome="client_error"
    )
    body = record_body(example_artifacts)
    sock = connect(server)
    try:
        head = (
            "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-request-id: slow-body\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        status, headers, answer = read_response(sock)
        assert closed_by_peer(sock)
    finally:
        sock.close()
    assert status == 408, answer
    assert headers["x-request-id"] == "slow-body" and headers["connection"] == "close"
    assert f"within {LIMIT_S}s" in json.loads(answer)["error"]
    after = metric(
        server, "mlrollout_model_requests_total", endpoint="predict", outcome="client_error"
    )
    assert after == before + 1


def test_headers_then_no_body_at_all_is_408_and_counted(server: RunningServer) -> None:
    before = metric(
        server, "mlrollout_model_requests_total", endpoint="feedback", outcome="client_error"
    )
    sock = connect(server)
    try:
        sock.sendall(
            b"POST /feedback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n"
        )
        status, headers, answer = read_response(sock)
    finally:
        sock.close()
    assert status == 408 and headers["connection"] == "close", answer
    after = metric(
        server, "mlrollout_model_requests_total", endpoint="feedback", outcome="client_error"
    )
    assert after == before + 1


# --- upgrades and CONNECT ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (
            b"GET /predict HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            400,
        ),
        (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n", 501),
        (b"POST /predict HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
         b"content-length: 2\r\n\r\n[]", 400),
    ],
)  # fmt: skip
def test_upgrade_and_connect_are_refused_at_once(
    server: RunningServer, request_head: bytes, status: int
) -> None:
    sock = connect(server)
    try:
        sock.sendall(request_head)
        got, headers, body = read_response(sock)
    finally:
        sock.close()
    assert got == status, body
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]
    assert get(server, "/readyz") == 200  # and the server is fine


def test_pipelined_requests_are_all_answered_in_order(server: RunningServer) -> None:
    sock = connect(server)
    try:
        sock.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n" * 3)
        rest = bytearray()
        answers = [read_response(sock, rest)[0] for _ in range(3)]
    finally:
        sock.close()
    assert answers == [200, 200, 200]


# --- the feedback store's memory bound, in a real server -----------------------------------


def worker_rss_bytes(server: RunningServer) -> int:
    """RSS of the process tree serving the model (BentoML supervisor and worker)."""
    total = 0
    for pid in [server.pid, *descendants(server.pid)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS"))
    return total * 1024


def test_feedback_store_memory_stays_within_its_bound_under_1000_row_predictions(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    """Issue 12 item 3: 4,000 1,000-row predictions took RSS from 188 to 469 MB (~70 KB
    each). The store here is bounded at 512 KiB: once it is full, 600 more such predictions
    (~42 MB with the old store) leave RSS flat within noise, and far under the pod limit."""
    body = record_body(example_artifacts, 1000)
    req = urllib.request.Request(
        server.url + "/predict", body, {"content-type": "application/json"}
    )

    def predict(n: int) -> None:
        for _ in range(n):
            with urllib.request.urlopen(req, timeout=SOCKET_TIMEOUT_S) as resp:
                assert resp.status == 200
                resp.read()

    predict(400)  # 400 x 1,256 B > 512 KiB x 7/8: the store is full from here on
    before = worker_rss_bytes(server)
    predict(600)
    after = worker_rss_bytes(server)
    held = metric(server, "mlrollout_feedback_store_bytes")
    capacity = metric(server, "mlrollout_feedback_store_capacity_bytes")
    print(
        f"RSS {before >> 20} -> {after >> 20} MiB over 600 predictions of 1,000 rows; "
        f"store {int(held)} of {int(capacity)} bytes"
    )
    assert capacity == FEEDBACK_BYTES and capacity * 0.8 < held <= capacity
    assert after - before < 16 << 20, f"RSS grew by {(after - before) >> 20} MiB"
    assert after < POD_MEMORY_LIMIT, f"RSS {after >> 20} MiB"


# The model server's default memory limit in a pod (ModelDeployment spec.serving.resources).
POD_MEMORY_LIMIT = 1 << 30


# --- HTTP fuzzing of every endpoint ----------------------------------------------------------
# No OpenAPI document describes the model routes (they live in a raw ASGI app mounted into
# BentoML), so schemathesis has nothing to read: hypothesis generates the requests.

FUZZ_EXAMPLES = int(os.environ.get("MLROLLOUT_FUZZ_EXAMPLES", "150"))
PATHS = [
    "/predict", "/feedback", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready",
    "/livez", "/readyz", "/healthz", "/v2/models/fraud", "/v2/models/fraud/ready",
    "/v2/models/fraud/infer", "/v2/models/fraud/versions/v1/infer", "/v2/models/x/infer",
    "/v2/models//infer", "/v2/models/fraud/versions//infer", "/", "/docs.json",
]  # fmt: skip
# Hypothesis favours the branch with more distinct values; an integer draw keeps the
# intended shares (8 in 10 known paths, 6 in 10 POSTs).
RANDOM_PATH = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
    lambda p: "/" + p
)
OTHER_METHODS = st.sampled_from(["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def bodies(draw: st.DrawFn, rows: list[dict[str, Any]]) -> bytes:
    kind = draw(st.sampled_from(["records", "instances", "oip", "feedback", "json", "bytes"]))
    if kind == "records":
        picked = draw(st.lists(st.sampled_from(rows), min_size=0, max_size=4))
        mangled = [
            {k: draw(st.one_of(st.just(v), JSON_VALUES)) if draw(st.booleans()) else v
             for k, v in r.items()}
            for r in picked
        ]  # fmt: skip
        return json.dumps({"records": mangled}).encode()
    if kind == "instances":
        return json.dumps(
            {"instances": draw(st.lists(st.lists(JSON_VALUES, max_size=25), max_size=3))}
        ).encode()
    if kind == "oip":
        tensor = {
            "name": draw(st.sampled_from(["X", "input", "f00", ""])),
            "shape": draw(st.lists(st.integers(-2, 30), max_size=3)),
            "datatype": draw(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "x"])),
            "data": draw(st.lists(JSON_VALUES, max_size=30)),
        }
        doc: dict[str, Any] = {"inputs": [tensor]}
        if draw(st.booleans()):
            doc["id"] = draw(JSON_VALUES)
        if draw(st.booleans()):
            doc["parameters"] = {"binary_data_size": draw(st.integers(-5, 100))}
        return json.dumps(doc).encode()
    if kind == "feedback":
        entry = {"feedback_id": draw(st.text(max_size=40)), "label": draw(JSON_VALUES)}
        return json.dumps(draw(st.sampled_from([entry, [entry], [entry, entry], {}]))).encode()
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    return draw(st.binary(max_size=300))


def test_http_fuzzing_of_every_endpoint_gets_no_5xx_and_clear_errors(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    lines = (example_artifacts["v1"].parent / "traffic.jsonl").read_text().splitlines()[:20]
    rows = [json.loads(line)["record"] for line in lines]
    seen: dict[int, int] = {}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        method=st.integers(0, 9).flatmap(lambda i: st.just("POST") if i < 6 else OTHER_METHODS),
        path=st.integers(0, 9).flatmap(lambda i: st.sampled_from(PATHS) if i < 8 else RANDOM_PATH),
        body=bodies(rows),
        ctype=st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-8", "", "application/octet-stream"]),
        request_id=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=200),
        header_length=st.none() | st.integers(-10, 400).map(str) | st.just("x"),
    )  # fmt: skip
    def one(
        method: str, path: str, body: bytes, ctype: str, request_id: str | None,
        header_length: str | None,
    ) -> None:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SOCKET_TIMEOUT_S)
        headers = {"content-type": ctype} if ctype else {}
        if request_id is not None:
            headers["x-request-id"] = request_id
        if header_length is not None:
            headers["inference-header-content-length"] = header_length
        try:
            conn.request(method, path, body=body if method != "GET" else None, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
        finally:
            conn.close()
        seen[resp.status] = seen.get(resp.status, 0) + 1
        assert resp.status < 500, (method, path, body[:200], resp.status, answer[:300])
        if resp.status >= 400 and method != "HEAD" and path.split("?")[0] in PATHS:
            assert json.loads(answer)["error"], answer[:300]

    one()
    print(f"fuzzed {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= min(100, FUZZ_EXAMPLES)
    assert get(server, "/readyz") == 200
