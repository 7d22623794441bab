"""The request path on real sockets (127.0.0.1), router and fake backends in this process."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from mlrollout.services.netutil import free_port
from mlrollout.services.router.proxy import Reply, Request, Router, RouterConfig
from mlrollout.services.router.server import start_server
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.router import FakeBackend, table_doc

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    router: Router
    client: httpx.AsyncClient
    ports: dict[str, int]
    servers: list[asyncio.Server] = field(default_factory=list)

    def load(
        self, generation: int, canary_weight: int, canary: bool = True, **extra: object
    ) -> None:
        doc = table_doc(
            generation, self.ports["stable"], self.ports["canary"] if canary else None,
            canary_weight, **extra,
        )  # fmt: skip
        assert self.router.offer(json.dumps(doc).encode(), "test")

    def metric(self, name: str, **labels: str) -> float:
        text = self.router.metrics.exposition().decode()
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


async def make_rig(
    stable: FakeBackend, canary: FakeBackend | None, config: RouterConfig
) -> tuple[Rig, list[asyncio.Server]]:
    servers, ports = [], {}
    for name, backend in (("stable", stable), ("canary", canary)):
        ports[name] = free_port()  # no server for canary=None: connections are refused
        if backend is not None:
            servers.append(await start_server(backend, "127.0.0.1", ports[name]))
    router = Router(config)
    router_port = free_port()
    servers.append(await start_server(router, "127.0.0.1", router_port, config.max_body_bytes))
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{router_port}", timeout=10)
    return Rig(router, client, ports, servers), servers


@pytest.fixture
async def rig_factory() -> AsyncIterator[object]:
    made: list[Rig] = []

    async def factory(
        stable: FakeBackend | None = None,
        canary: FakeBackend | None = None,
        **config: object,
    ) -> Rig:
        rig, _ = await make_rig(stable or FakeBackend("v1"), canary, RouterConfig(**config))  # type: ignore[arg-type]
        made.append(rig)
        return rig

    yield factory
    for rig in made:
        await rig.client.aclose()
        await rig.router.aclose()
        for server in rig.servers:
            server.close()


async def test_no_table_means_not_ready(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory()
    assert (await rig.client.get("/healthz")).status_code == 200
    assert (await rig.client.get("/readyz")).status_code == 503
    resp = await rig.client.post("/predict", content=b"{}")
    assert resp.status_code == 503
    assert "no routing table" in resp.json()["error"]
    rig.load(1, 0, canary=False)
    assert (await rig.client.get("/readyz")).status_code == 200
    assert (await rig.client.get("/-/table")).json()["generation"] == 1


async def test_headers_say_who_answered_and_carry_the_request_id(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2"))
    rig.load(1, 0)
    resp = await rig.client.post("/predict", content=b"[1]", headers={"x-request-id": "abc-1"})
    assert resp.status_code == 200
    assert resp.headers["x-mlrollout-track"] == "stable"
    assert resp.headers["x-mlrollout-version"] == "v1"
    assert resp.headers["x-request-id"] == "abc-1"
    assert resp.headers["x-seen-request-id"] == "abc-1"  # the backend got it too
    assert resp.json()["version"] == "v1"
    first = (await rig.client.post("/predict", content=b"[1]")).headers["x-request-id"]
    second = (await rig.client.post("/predict", content=b"[1]")).headers["x-request-id"]
    assert first and second and first != second


@pytest.mark.parametrize("given", ["hello world", "a" * 129, "", "naïve", "x/y"])
async def test_an_id_the_model_server_would_not_keep_is_replaced(rig_factory, given: str) -> None:  # type: ignore[no-untyped-def]
    # The model server keeps only 1-128 of [A-Za-z0-9._:-] and makes its own id otherwise;
    # the router must not answer with an id the prediction was not stored under.
    rig = await rig_factory()
    rig.load(1, 0, canary=False)
    headers = {"x-request-id": given.encode("utf-8")}
    resp = await rig.client.post("/predict", content=b"[1]", headers=headers)
    rid = resp.headers["x-request-id"]
    assert rid != given.encode("utf-8").decode("latin-1")
    assert resp.headers["x-seen-request-id"] == rid
    assert re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", rid)


async def test_no_client_reaches_a_weight_zero_canary_by_default(rig_factory) -> None:  # type: ignore[no-untyped-def]
    # Issue 12 item 5: 50 of 50 forced requests reached a weight-0 canary.
    rig = await rig_factory(canary=FakeBackend("v2"))
    rig.load(1, 0)
    for mode in (None, "weighted"):
        if mode is not None:
            rig.load(2, 0, trackHeader=mode)
        for _ in range(50):
            resp = await rig.client.post(
                "/p", content=b"[1]", headers={"x-mlrollout-track": "canary"}
            )
            assert (resp.status_code, resp.headers["x-mlrollout-track"]) == (200, "stable")
    assert rig.metric("mlrollout_router_requests_total", track="canary") == 0


async def test_force_header(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2"))
    rig.load(1, 0, trackHeader="always")
    resp = await rig.client.post("/p", content=b"[1]", headers={"x-mlrollout-track": "canary"})
    assert resp.headers["x-mlrollout-track"] == "canary"
    assert resp.json()["version"] == "v2"
    resp = await rig.client.post("/p", content=b"[1]", headers={"x-mlrollout-track": "green"})
    assert resp.status_code == 400
    assert "cannot force track 'green'" in resp.json()["error"]


async def test_unreachable_canary_falls_back_to_stable(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=None)  # nothing listens on the canary port
    rig.load(1, 100)
    for _ in range(3):
        resp = await rig.client.post("/predict", content=b"[1]")
        assert resp.status_code == 200
        assert resp.headers["x-mlrollout-track"] == "stable"
    assert rig.metric("mlrollout_router_fallbacks_total", track="canary", version="v2") == 3
    assert rig.metric("mlrollout_router_requests_total", track="canary", outcome="unreachable") == 3
    assert rig.metric("mlrollout_router_requests_total", track="stable", outcome="ok") == 3


async def test_canary_timeout_before_response_falls_back(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2", delay=5.0), timeout=0.2)
    rig.load(1, 100)
    resp = await rig.client.post("/predict", content=b"[1]")
    assert resp.status_code == 200
    assert resp.headers["x-mlrollout-track"] == "stable"
    assert rig.metric("mlrollout_router_fallbacks_total") == 1


async def test_unreachable_stable_is_a_502(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2"))
    rig.load(1, 0)
    rig.router.offer(json.dumps(table_doc(2, free_port(), rig.ports["canary"], 0)).encode(), "test")
    resp = await rig.client.post("/predict", content=b"[1]")
    assert resp.status_code == 502
    assert resp.headers["x-mlrollout-track"] == "stable"
    assert "unreachable" in resp.json()["error"]


async def test_canary_5xx_is_not_hidden(rig_factory) -> None:  # type: ignore[no-untyped-def]
    # (A 503 is "not ready": retried on stable, see test_router_hostile_backends.py.)
    rig = await rig_factory(canary=FakeBackend("v2", status=500))
    rig.load(1, 100)
    resp = await rig.client.post("/predict", content=b"[1]")
    assert resp.status_code == 500
    assert resp.headers["x-mlrollout-track"] == "canary"
    assert (
        rig.metric("mlrollout_router_requests_total", track="canary", outcome="server_error") == 1
    )
    assert rig.metric("mlrollout_router_fallbacks_total") == 0


async def test_body_limit(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(max_body_bytes=1000)
    rig.load(1, 0, canary=False)
    assert (await rig.client.post("/predict", content=b"x" * 1000)).status_code == 200
    resp = await rig.client.post("/predict", content=b"x" * 1001)
    assert resp.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 600

    resp = await rig.client.post("/predict", content=chunks())  # chunked: no Content-Length
    assert resp.status_code == 413
    assert rig.metric("mlrollout_router_requests_total") == 1


async def test_shadow_agreement_is_counted_and_client_gets_stable(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2"))
    rig.load(1, 0, shadowPercent=100)
    for i in range(20):
        resp = await rig.client.post("/predict", content=json.dumps([i]).encode())
        assert resp.headers["x-mlrollout-track"] == "stable"
        assert resp.json()["version"] == "v1"
    await asyncio.gather(*rig.router._shadow_tasks)
    assert rig.metric("mlrollout_router_shadow_total", result="agree", version="v2") == 20
    assert rig.metric("mlrollout_router_shadow_total", result="disagree") == 0


async def test_shadow_disagreement_is_counted(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2", shift=1))
    rig.load(1, 0, shadowPercent=100)
    for i in range(5):
        await rig.client.post("/predict", content=json.dumps([i]).encode())
    await asyncio.gather(*rig.router._shadow_tasks)
    assert rig.metric("mlrollout_router_shadow_total", result="disagree") == 5


async def test_saturated_shadow_is_dropped_not_waited_for(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory(canary=FakeBackend("v2", delay=30.0), max_shadow_inflight=2)
    rig.load(1, 0, shadowPercent=100)
    for _ in range(5):
        resp = await rig.client.post("/predict", content=b"[1]")
        assert resp.status_code == 200
    # The client had all five answers while the first two shadows are still in flight.
    assert rig.router._shadow_inflight == 2
    assert rig.metric("mlrollout_router_shadow_total", result="dropped") == 3


async def test_pipelined_requests_are_answered_in_order(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = await rig_factory()
    rig.load(1, 0, canary=False)
    port = int(str(rig.client.base_url).rsplit(":", 1)[1].rstrip("/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    one = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nx-request-id: r%d\r\n\r\n%d"
    writer.write(b"".join(one % (i, i) for i in range(3)))
    ids = []
    for _ in range(3):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        ids.append(head.split(b"x-request-id: ")[1].split(b"\r\n")[0])
    assert ids == [b"r0", b"r1", b"r2"]
    writer.close()


async def raw_backend(reply: bytes) -> tuple[asyncio.Server, int]:
    """A backend that answers every request with ``reply`` verbatim, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    port = free_port()
    return await asyncio.start_server(handle, "127.0.0.1", port), port


@pytest.mark.parametrize(
    ("method", "reply", "status", "body"),
    [
        # No Content-Length, not chunked: the body ends when the backend closes.
        ("POST", b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"predictions": [1]}', 200, b'{"predictions": [1]}'),
        ("POST", b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 201, b"abcde"),
        # A HEAD answer announces a body it does not send.
        ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n", 200, b""),
        # Cut off midway: cannot be replayed, so 502, not a hang.
        ("POST", b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\nonly a part", 502, None),
        ("POST", b"HTTP/9 wat\r\n\r\n", 502, None),
    ],
)  # fmt: skip
async def test_backend_framing(  # type: ignore[no-untyped-def]
    rig_factory, method: str, reply: bytes, status: int, body: bytes | None
) -> None:
    server, port = await raw_backend(reply)
    rig = await rig_factory()
    rig.servers.append(server)
    doc = table_doc(1, port, None, 0)
    assert rig.router.offer(json.dumps(doc).encode(), "test")
    for _ in range(2):  # the second request must not reuse the closed connection
        resp = await rig.client.request(
            method, "/predict", content=b"[1]" if method == "POST" else None
        )
        assert resp.status_code == status
        if body is not None:
            assert resp.content == body
            assert "transfer-encoding" not in resp.headers


async def test_request_finishes_on_a_backend_a_newer_table_dropped(rig_factory) -> None:  # type: ignore[no-untyped-def]
    from mlrollout.services.router.proxy import Request
    from mlrollout.services.router.table import parse_table

    rig = await rig_factory(canary=FakeBackend("v2"))
    old = parse_table(table_doc(1, rig.ports["stable"], rig.ports["canary"], 0))
    # The table in force no longer has the old stable (a promotion happened meanwhile).
    rig.router.offer(json.dumps(table_doc(2, rig.ports["canary"], None, 0)).encode(), "test")
    req = Request(b"POST", b"/predict", [], b"[1]")
    response, track = await rig.router._forward(old, "stable", req, b"")
    assert response is not None and response.status == 200
    assert json.loads(response.body)["version"] == "v1"
    assert track == "stable"


async def test_idle_client_connections_are_closed() -> None:
    router = Router(RouterConfig())
    port = free_port()
    server = await start_server(router, "127.0.0.1", port, idle_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200")
        # The router closes the idle connection: EOF, well before this bound.
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        writer.close()
    finally:
        server.close()
        await router.aclose()


class _Transport:
    """Just enough of an asyncio transport to watch the server's flow control."""

    def __init__(self) -> None:
        self.reading, self.written, self.closed = True, b"", False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


async def test_a_pipelining_client_cannot_queue_without_bound() -> None:
    from mlrollout.services.router.server import HttpServerProtocol

    release = asyncio.Event()

    class Slow:
        async def handle(self, req: Request) -> Reply:
            await release.wait()
            return Reply(200, [], b"ok")

    proto = HttpServerProtocol(Slow(), 1 << 20, set())
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    one = b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n1"
    for _ in range(500):  # one request per read, as a client streaming them would arrive
        if transport.reading:
            proto.data_received(one)
    # The backend is stuck: the router stopped reading instead of queueing 500 bodies.
    assert not transport.reading
    assert len(proto.pending) < 100
    release.set()
    for _ in range(200):  # bounded: let the queued requests be answered
        await asyncio.sleep(0)
        if transport.reading:
            break
    assert transport.reading  # drained below the bound: reading again
    assert transport.written.count(b"HTTP/1.1 200") > 0


class _ModelLike:
    """A backend shaped like a model server: predictions, feedback counts, refusals."""

    def __init__(self, correct: int) -> None:
        self.correct = correct

    async def handle(self, req: Request) -> Reply:
        if req.target == b"/feedback":
            doc: dict[str, object] = {"correct": self.correct, "incorrect": 0, "unmatched": 0}
        elif req.target == b"/predict" and req.body != b"bad":
            doc = {"predictions": [1], "request_id": str(self.correct)}
        else:
            return Reply(422, [(b"content-type", b"application/json")], b'{"error": "no"}')
        return Reply(200, [(b"content-type", b"application/json")], json.dumps(doc).encode())


async def test_shadow_agreement_counts_only_answers_with_predictions() -> None:
    # Mirrored feedback and client errors are no prediction disagreement: counting them
    # would fail a canary that predicts exactly like stable.
    ports = {"stable": free_port(), "canary": free_port(), "router": free_port()}
    router = Router(RouterConfig())
    servers = [
        await start_server(_ModelLike(1), "127.0.0.1", ports["stable"]),
        await start_server(_ModelLike(0), "127.0.0.1", ports["canary"]),
        await start_server(router, "127.0.0.1", ports["router"]),
    ]
    rig = Rig(router, httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['router']}"), ports)
    try:
        rig.load(1, 0, shadowPercent=100)
        for path, body in [("/predict", b"[1]"), ("/feedback", b"{}"), ("/predict", b"bad")] * 3:
            await rig.client.post(path, content=body)
        await asyncio.gather(*router._shadow_tasks)
        assert rig.metric("mlrollout_router_shadow_total", result="agree") == 3
        assert rig.metric("mlrollout_router_shadow_total", result="disagree") == 0
        assert rig.metric("mlrollout_router_shadow_total", result="error") == 0
    finally:
        await rig.client.aclose()
        await router.aclose()
        for server in servers:
            server.close()


class IssuingBackend(FakeBackend):
    """Issues a feedback id with each answer, as the model server does, and records the
    feedback id each request proposed (the router passes the stable's to the shadow)."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.proposed: list[bytes | None] = []

    async def handle(self, req: Request) -> Reply:
        reply = await super().handle(req)
        if req.target == b"/predict":
            given = next((v for n, v in req.headers if n == b"x-mlrollout-feedback-id"), None)
            self.proposed.append(given)
            issued = given or f"{self.version}-{len(self.proposed)}".encode()
            reply.headers.append((b"x-mlrollout-feedback-id", issued))
        return reply


async def test_the_shadow_keeps_the_stables_feedback_id(rig_factory) -> None:  # type: ignore[no-untyped-def]
    """Mirrored feedback carries the stable's feedback id; the shadow canary can only match
    it if its prediction was kept under that id (docs/serving.md, "Feedback"). A client's
    own x-mlrollout-feedback-id header never reaches a backend."""
    stable, canary = IssuingBackend("v1"), IssuingBackend("v2")
    rig = await rig_factory(stable=stable, canary=canary)
    rig.load(1, 0, shadowPercent=100)
    issued = []
    for i in range(5):
        resp = await rig.client.post(
            "/predict",
            content=json.dumps([i]).encode(),
            headers={"x-mlrollout-feedback-id": "mine"},
        )
        issued.append(resp.headers["x-mlrollout-feedback-id"].encode())
    await asyncio.gather(*rig.router._shadow_tasks)
    assert stable.proposed == [None] * 5  # the client's header was dropped
    assert canary.proposed == issued  # each mirror proposed the stable's id
