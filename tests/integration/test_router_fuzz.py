"""Issue 12 (router): HTTP fuzzing of the real ``mlrollout router`` process with hypothesis.

Generated requests (methods, targets, header names and values, bodies, framing) and
byte-level mutations of a valid request go to a router in front of two healthy fake
backends over raw sockets. Whatever arrives, the router must answer within a bound with
one well-formed response (or close, for bytes that are no HTTP), never a 5xx except the
501 for upgrades / CONNECT, and its own refusals must be JSON saying why.

Examples per test: ``MLROLLOUT_FUZZ_EXAMPLES`` (default 150, the fast subset of
``make test``; docs/reliability.md gives the counts of the long run).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.doubles.router import fake_backend, router, table_doc, write_table

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MLROLLOUT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ANSWER_WITHIN = 8.0  # seconds; header/body timeouts are 1 s in this router
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@pytest.fixture(scope="module")
def router_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with fake_backend("v1") as (stable, _), fake_backend("v2", "--shift", "1") as (canary, _):
        table = Path(tmp) / "table.json"
        doc = table_doc(
            1, stable, canary, 50, stickyHeader="x-user-id", shadowPercent=10,
            trackHeader="weighted",
        )  # fmt: skip
        write_table(table, doc)
        options = ("--header-timeout", "1", "--body-timeout", "1", "--log-level", "ERROR")
        with router(table, *options) as (port, proc):
            yield port
            assert proc.poll() is None, "the router died during fuzzing"
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                assert client.get("/readyz").status_code == 200
                assert client.post("/predict", content=b"[1]").status_code == 200
                metrics = client.get("/metrics").text
            assert "mlrollout_router_requests_total" in metrics


def exchange(port: int, data: bytes, half_close: bool = True) -> bytes:
    """Send ``data``, half-close (or not), read until the router closes (bounded in time)."""
    deadline = time.monotonic() + ANSWER_WITHIN
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the router refused early (431/413) and closed: read what it said
        got = b""
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return got
            got += chunk
    raise AssertionError(f"no close within {ANSWER_WITHIN}s after {len(got)} bytes: {got[:200]!r}")


def check_answers(got: bytes) -> list[int]:
    """Statuses of the responses in ``got``; every router refusal must be JSON with a reason."""
    statuses = [int(m.group(1)) for m in STATUS.finditer(got)]
    for status in statuses:
        assert status < 500 or status == 501, got[:500]
    for doc in re.findall(rb'\{\n "error": .*?"source": "mlrollout-router"\n\}', got, re.S):
        assert json.loads(doc)["error"]
    return statuses


TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=20
)


def mostly(common: st.SearchStrategy[str], rare: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``common`` nine times in ten (a random method is only ever a 400)."""
    return st.integers(min_value=0, max_value=9).flatmap(lambda i: rare if i == 0 else common)


HEADER_NAMES = st.sampled_from(
    [
        "x-mlrollout-track", "x-user-id", "x-request-id", "content-type", "accept", "expect",
        "upgrade", "connection", "x-mlrollout-version", "host", "te", "trailer",
        "proxy-connection", "keep-alive",
    ]
) | TOKEN  # fmt: skip
TRACK_VALUES = mostly(
    st.sampled_from(["canary", "stable", "Canary ", "", " "]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
)
HEADER_VALUES = st.sampled_from(
    ["canary", "stable", "Canary ", "", " ", "100-continue", "websocket", "upgrade", "h2c",
     "close", "keep-alive", "application/json", "a" * 200, "b" * 70000]
) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=60)  # fmt: skip
TARGETS = st.builds(
    lambda path, suffix, query: path + suffix + query,
    st.sampled_from(
        ["/", "/predict", "/feedback", "/healthz", "/readyz", "/metrics", "/-/table",
         "/-/status", "/-/", "/v2/models/m/infer", "*", "http://x/predict"]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/%._-~", max_size=30),
    st.sampled_from(["", "?", "?a=1", "?a=%ff&b"]),
)  # fmt: skip
METHODS = mostly(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT"]),
    TOKEN.map(str.upper),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request, and whether the client half-closes after it (else it says close)."""
    method = draw(METHODS)
    target = draw(TARGETS)
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12))
    headers = [(n, draw(TRACK_VALUES) if n == "x-mlrollout-track" else v) for n, v in headers]
    half_close = draw(st.booleans())
    if not half_close:
        headers.append(("connection", "close"))
    body = draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(["length", "chunked", "none", "short", "long"]))
    lines = [f"{method} {target} HTTP/1.1", "host: fuzz"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing == "length":
        lines.append(f"content-length: {len(body)}")
    elif framing == "short":  # claims less than it sends: the rest is a pipelined "request"
        lines.append(f"content-length: {len(body) // 2}")
    elif framing == "long":  # claims more than it sends: waits, then 408
        lines.append(f"content-length: {len(body) + 10}")
    elif framing == "chunked":
        lines.append("transfer-encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        body = b""
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body, half_close


@FUZZ
@given(case=requests())
def test_generated_requests_get_one_sane_answer_each(
    router_port: int, case: tuple[bytes, bool]
) -> None:
    data, half_close = case
    got = exchange(router_port, data, half_close)
    statuses = check_answers(got)
    # A request the parser accepted gets an answer; one it could not frame may get a 400
    # or, for a framing it cannot know the end of, only the close.
    assert statuses or not got


VALID = (
    b"POST /predict HTTP/1.1\r\nhost: fuzz\r\nx-user-id: u1\r\ncontent-type: application/json\r\n"
    b'content-length: 13\r\n\r\n{"rows": [1]}'
)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID * draw(st.integers(min_value=1, max_value=3)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        at = draw(st.integers(min_value=0, max_value=len(data) - 1)) if data else 0
        if kind == "flip" and data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif kind == "duplicate" and data:
            data[at:at] = data[at : at + draw(st.integers(min_value=1, max_value=64))]
    return bytes(data)


@FUZZ
@given(data=mutations())
def test_mutated_requests_never_get_a_5xx_or_a_hang(router_port: int, data: bytes) -> None:
    check_answers(exchange(router_port, data))
