"""Issue 12 items 4 and 6 (router half): what a hostile or broken client can do to the router.

Raw sockets on 127.0.0.1 against the router's real server, with a fake backend behind it.
Each case says what the client must get and that the router keeps serving others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools
import httpx
import pytest
from mlrollout.services.netutil import free_port
from mlrollout.services.router.proxy import Router, RouterConfig
from mlrollout.services.router.server import start_server

from tests.doubles.router import FakeBackend, table_doc

pytestmark = pytest.mark.integration


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_answers(data: bytes) -> list[Answer]:
    """Every complete response in ``data`` (a response cut short is not counted)."""
    answers: list[Answer] = []

    class Collect:
        def __init__(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body = b""

        def on_message_begin(self) -> None:
            self.headers, self.body = {}, b""

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            answers.append(Answer(parser.get_status_code(), self.headers, self.body))

    collect = Collect()
    parser = httptools.HttpResponseParser(collect)
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    return answers


@dataclass
class Rig:
    router: Router
    port: int
    servers: list[asyncio.Server]

    async def exchange(
        self, data: bytes, *, half_close: bool = False, timeout: float = 10.0
    ) -> tuple[list[Answer], float]:
        """Send ``data``, read until the router closes; the answers and the seconds it took."""
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            if half_close:
                writer.write_eof()
            got = await asyncio.wait_for(reader.read(-1), timeout)
        finally:
            writer.close()
        return parse_answers(got), time.monotonic() - start

    async def still_serves(self) -> None:
        answers, _ = await self.exchange(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\n[1]"
        )
        assert [a.status for a in answers] == [200]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    backend_port, port = free_port(), free_port()
    router = Router(RouterConfig(header_timeout=0.5, body_timeout=0.8))
    servers = [
        await start_server(FakeBackend("v1"), "127.0.0.1", backend_port),
        await start_server(
            router, "127.0.0.1", port, max_header_bytes=64 << 10,
            header_timeout=0.5, body_timeout=0.8,
        ),
    ]  # fmt: skip
    assert router.offer(json.dumps(table_doc(1, backend_port, None, 0)).encode(), "test")
    yield Rig(router, port, servers)
    await router.aclose()
    for server in servers:
        server.close()


GOOD = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n[1]"


@pytest.mark.parametrize(
    "head",
    [
        b"x-big: " + b"a" * (70 << 10) + b"\r\n",  # one large header
        b"".join(b"x-h%d: %s\r\n" % (i, b"b" * 400) for i in range(200)),  # many headers
        b"",  # a 70 KiB request target
    ],
    ids=["one-large-header", "many-headers", "long-target"],
)
async def test_request_headers_above_64kib_get_431(rig: Rig, head: bytes) -> None:
    target = b"/predict" if head else b"/predict?" + b"q" * (70 << 10)
    data = b"POST " + target + b" HTTP/1.1\r\nhost: x\r\n" + head + b"content-length: 3\r\n\r\n[1]"
    answers, _ = await rig.exchange(data)
    assert [a.status for a in answers] == [431]
    assert b"65536 bytes" in answers[0].body and json.loads(answers[0].body)["error"]
    await rig.still_serves()


async def test_more_than_256_header_fields_get_431(rig: Rig) -> None:
    # 13,000 header fields fit in 64 KiB; as Python objects they would cost ~2 MB.
    head = b"a: b\r\n" * 300
    data = b"POST /predict HTTP/1.1\r\nhost: x\r\n" + head + b"content-length: 3\r\n\r\n[1]"
    answers, _ = await rig.exchange(data)
    assert [a.status for a in answers] == [431]
    assert b"256 header fields" in answers[0].body


async def test_headers_just_under_the_limit_are_served(rig: Rig) -> None:
    head = b"x-big: " + b"a" * (60 << 10) + b"\r\n"
    data = b"POST /predict HTTP/1.1\r\nhost: x\r\n" + head + b"content-length: 3\r\n\r\n[1]"
    # A request and its body in one segment must not count the body as header bytes.
    data += b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n"
    data += b"connection: close\r\n\r\n" + b"1" * 200000
    answers, _ = await rig.exchange(data)
    assert [a.status for a in answers] == [200, 200]


async def test_a_64mb_header_is_refused_at_the_limit(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    answer = asyncio.create_task(reader.read(-1))
    start = time.monotonic()
    writer.write(b"GET /predict HTTP/1.1\r\nhost: x\r\nx-huge: ")
    chunk = b"z" * (1 << 20)
    with contextlib.suppress(ConnectionError):
        for _ in range(64):
            if answer.done():
                break
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 10)
    got = await asyncio.wait_for(answer, 10)
    writer.close()
    assert [a.status for a in parse_answers(got)] == [431]
    assert time.monotonic() - start < 5.0
    await rig.still_serves()


async def drip(rig: Rig, first: bytes, byte: bytes, every: float, count: int) -> bytes:
    """Send ``first``, then ``byte`` every ``every`` s until the router answers and closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    answer = asyncio.create_task(reader.read(-1))
    writer.write(first)
    with contextlib.suppress(ConnectionError):
        for _ in range(count):
            await asyncio.sleep(every)
            if answer.done():
                break
            writer.write(byte)
    got = await asyncio.wait_for(answer, 10)
    writer.close()
    return got


async def test_a_client_dripping_headers_gets_408(rig: Rig) -> None:
    start = time.monotonic()
    got = await drip(rig, b"GET /predict HTTP/1.1\r\n", b"x", 0.1, 40)  # active, never done
    assert [a.status for a in parse_answers(got)] == [408]
    assert b"headers not received within 0.5s" in got
    assert time.monotonic() - start < 3.0
    await rig.still_serves()


async def test_a_client_dripping_a_body_byte_by_byte_gets_408(rig: Rig) -> None:
    start = time.monotonic()
    first = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
    got = await drip(rig, first, b"1", 0.1, 40)
    assert [a.status for a in parse_answers(got)] == [408]
    assert b"body not received within 0.8s" in got
    assert time.monotonic() - start < 3.0


async def test_a_client_dripping_a_body_gets_408(rig: Rig) -> None:
    data = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789"
    answers, elapsed = await rig.exchange(data)  # then silence
    assert [a.status for a in answers] == [408]
    assert elapsed < 3.0


async def test_an_idle_keep_alive_connection_is_no_slow_client(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    writer.write(GOOD)
    await asyncio.sleep(1.5)  # longer than both timeouts, between requests
    writer.write(
        GOOD.replace(b"POST", b"POST", 1).replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    )
    got = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert [a.status for a in parse_answers(got)] == [200, 200]


@pytest.mark.parametrize(
    "data",
    [
        b"GET /predict HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nhost: 127.0.0.1:443\r\n\r\n",
    ],
    ids=["websocket", "connect"],
)
async def test_upgrade_and_connect_get_one_answer_at_once(rig: Rig, data: bytes) -> None:
    answers, elapsed = await rig.exchange(data)
    assert [a.status for a in answers] == [501]
    assert elapsed < 2.0


async def test_an_h2c_upgrade_offer_is_ignored_and_answered_over_http1(rig: Rig) -> None:
    data = (
        b"GET /-/table HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    answers, _ = await rig.exchange(data)
    assert [a.status for a in answers] == [200]
    assert answers[0].headers.get(b"connection") == b"close"


@pytest.mark.parametrize(
    "garbage", [b"\x00\x01\x02 not http\r\n\r\n", b"GET / HTTP/1.1\r\nbad header\r\n\r\n"]
)
async def test_a_good_pipelined_request_is_answered_before_the_garbage(
    rig: Rig, garbage: bytes
) -> None:
    answers, _ = await rig.exchange(GOOD + garbage)
    assert [a.status for a in answers] == [200, 400]
    assert json.loads(answers[0].body)["version"] == "v1"


async def test_answers_before_garbage_survive_the_client_still_sending(rig: Rig) -> None:
    # Closing a socket with unread input makes the kernel send RST, and an RST makes the
    # client's kernel drop the answers it had not read yet: the router must drain first.
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    writer.write(GOOD + b"\x00garbage\r\n\r\n")

    async def keep_sending() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"x" * (64 << 10))
                await writer.drain()
                await asyncio.sleep(0.005)

    sender = asyncio.create_task(keep_sending())
    got = b""
    with contextlib.suppress(ConnectionError):
        await asyncio.sleep(0.3)  # the answers are in the client's buffer, unread
        got = await asyncio.wait_for(reader.read(-1), 10)
    await sender
    writer.close()
    assert [a.status for a in parse_answers(got)] == [200, 400]


async def test_a_client_that_half_closes_still_gets_its_answers(rig: Rig) -> None:
    answers, _ = await rig.exchange(GOOD + GOOD, half_close=True)
    assert [a.status for a in answers] == [200, 200]


async def test_a_reset_mid_request_costs_nothing(rig: Rig) -> None:
    for data in (GOOD[:20], b"POST /predict HTTP/1.1\r\ncontent-length: 50\r\n\r\n12"):
        sock = socket.create_connection(("127.0.0.1", rig.port))
        sock.sendall(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
    await asyncio.sleep(0.1)
    await rig.still_serves()


async def test_request_bodies_held_at_once_are_bounded() -> None:
    backend_port, port = free_port(), free_port()
    router = Router(RouterConfig())
    servers = [
        await start_server(FakeBackend("v1", delay=0.5), "127.0.0.1", backend_port),
        await start_server(router, "127.0.0.1", port, max_buffered_bytes=1 << 20),
    ]
    assert router.offer(json.dumps(table_doc(1, backend_port, None, 0)).encode(), "test")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            body = b"1" * (700 << 10)
            first = asyncio.create_task(client.post("/predict", content=body))
            await asyncio.sleep(0.2)  # the first body is held while the backend thinks
            second = await client.post("/predict", content=body)
            assert second.status_code == 503
            assert "retry later" in second.json()["error"]
            assert (await first).status_code == 200
            # Given back once answered: the same body fits again.
            assert (await client.post("/predict", content=body)).status_code == 200
    finally:
        await router.aclose()
        for server in servers:
            server.close()
