"""The HTTP adapter in-process: routing, body limits, readiness and request ids.

These drive ``ModelApp`` as an ASGI callable with a recording fake dataplane, so the
HTTP-side rules are checked without starting BentoML; ``test_server.py`` checks the
same routes through a real ``mlrollout serve`` process.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from mlrollout.services.server.app import FastPath, Holder, ModelApp

pytestmark = pytest.mark.integration

LIMIT = 2048


@dataclass
class FakeReply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(self.payload).encode()


class FakePlane:
    ready = True
    name = "iris"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.rejected: list[tuple[str, str]] = []

    def predict(
        self, body: bytes, request_id: str | None = None, feedback_id: str | None = None
    ) -> FakeReply:
        self.calls.append(("predict", (body, request_id)))
        return FakeReply(200, {"request_id": request_id}, {"x-request-id": str(request_id)})

    def infer_v2(
        self,
        model_name: str,
        body: bytes,
        *,
        header_length: int | None = None,
        request_id: str | None = None,
        feedback_id: str | None = None,
    ) -> FakeReply:
        self.calls.append(("infer", (model_name, body, header_length)))
        return FakeReply(200, {"outputs": []})

    def model_metadata_v2(self) -> dict[str, Any]:
        return {"name": self.name}

    def feedback(self, body: bytes) -> FakeReply:
        self.calls.append(("feedback", body))
        return FakeReply(200, {"matched": 1})

    def render_metrics(self) -> tuple[bytes, str]:
        return b"m 1\n", "text/plain; version=0.0.4"

    def reject(self, endpoint: str, reason: str, seconds: float) -> None:
        assert seconds >= 0
        self.rejected.append((endpoint, reason))


def call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    chunks: int = 1,
) -> tuple[int, dict[str, str], bytes]:
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "headers": raw_headers}
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, end = sent[0], sent[1]
    got = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], got, end["body"]


@pytest.fixture
def plane() -> FakePlane:
    return FakePlane()


@pytest.fixture
def app(plane: FakePlane) -> ModelApp:
    holder = Holder()
    holder.dataplane, holder.model_name, holder.reject = plane, plane.name, plane.reject
    holder.model_version = "3"
    return ModelApp(holder, max_body_bytes=LIMIT)


def test_predict_passes_the_body_and_the_client_request_id(app: ModelApp, plane: FakePlane) -> None:
    status = call(app, "POST", "/predict", b'{"instances":[[1]]}')[0]
    assert status == 200
    assert plane.calls == [("predict", (b'{"instances":[[1]]}', None))]
    call(app, "POST", "/predict", b"{}", {"x-request-id": "abc-123"})
    assert plane.calls[-1] == ("predict", (b"{}", "abc-123"))


def test_errors_raised_by_the_adapter_carry_a_safe_request_id(app: ModelApp) -> None:
    big = b"x" * (LIMIT + 1)
    _, headers, _ = call(app, "POST", "/predict", big, {"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"
    hostile = "a b\tc" + "x" * 200
    _, headers, _ = call(app, "POST", "/predict", big, {"x-request-id": hostile})
    assert headers["x-request-id"] != hostile
    assert len(headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "reason"),
    [
        ("POST", "/predict", b"x" * (LIMIT + 1), {}, 413, "body_too_large"),
        ("POST", "/predict", b"{}", {"content-length": str(LIMIT * 10)}, 413, "body_too_large"),
        ("POST", "/predict", b"{}", {"content-type": "text/csv"}, 415, "unsupported_content_type"),
        ("POST", "/predict", b"{}", {"content-length": "ten"}, 400, "bad_structure"),
        (
            "POST",
            "/v2/models/iris/infer",
            b"{}",
            {"inference-header-content-length": "two"},
            400,
            "bad_structure",
        ),
        ("POST", "/feedback", b"y" * (LIMIT + 1), {}, 413, "body_too_large"),
    ],
)
def test_http_level_bad_input_is_a_4xx_counted_by_reason(
    app: ModelApp,
    plane: FakePlane,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    got, _, payload = call(app, method, path, body, headers)
    assert got == status
    doc = json.loads(payload)
    # The same body shape as the dataplane's refusals (docs/metrics.md).
    assert doc["error"] and (doc["reason"], doc["field"]) == (reason, None)
    assert plane.rejected == [(path.split("/")[-1] if path != "/predict" else "predict", reason)]
    assert plane.calls == []


def test_body_limit_holds_for_a_chunked_body_without_content_length(
    app: ModelApp, plane: FakePlane
) -> None:
    status, _, _ = call(app, "POST", "/predict", b"z" * (LIMIT * 3), chunks=6)
    assert status == 413
    assert plane.calls == []
    status, _, _ = call(app, "POST", "/predict", b"z" * (LIMIT - 10), chunks=4)
    assert status == 200
    assert plane.calls[-1][1][0] == b"z" * (LIMIT - 10)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/predict", 405),
        ("POST", "/metrics", 405),
        ("GET", "/nope", 404),
        ("GET", "/v2/models", 404),
        ("GET", "/v2/models/iris/versions/1/extra/deep", 404),
        ("GET", "/v2/models/other", 404),
        ("GET", "/v2/models/other/ready", 404),
        ("GET", "/v2/models/iris", 200),
        ("GET", "/v2/models/iris/ready", 200),
        ("GET", "/v2/models/iris/versions/3/ready", 200),
        ("GET", "/v2/models/iris/versions/7/ready", 404),  # this server is version 3 only
        ("GET", "/v2/models/iris/versions/7", 404),
        ("POST", "/v2/models/iris/versions/7/infer", 404),
        ("GET", "/v2/health/live", 200),
        ("GET", "/v2/health/ready", 200),
        ("GET", "/v2", 200),
    ],
)
def test_routes(app: ModelApp, method: str, path: str, status: int) -> None:
    assert call(app, method, path)[0] == status


def test_versioned_infer_reaches_the_dataplane_with_the_model_name(
    app: ModelApp, plane: FakePlane
) -> None:
    status, _, body = call(app, "POST", "/v2/models/iris/versions/3/infer", b"{}")
    assert (status, json.loads(body)) == (200, {"outputs": []})
    assert plane.calls == [("infer", ("iris", b"{}", None))]
    headers = {"inference-header-content-length": "2"}
    assert call(app, "POST", "/v2/models/iris/infer", b"{}\x00\x01", headers)[0] == 200
    assert plane.calls[-1] == ("infer", ("iris", b"{}\x00\x01", 2))


def test_metrics_come_from_the_dataplane(app: ModelApp) -> None:
    status, headers, body = call(app, "GET", "/metrics")
    assert (status, body) == (200, b"m 1\n")
    assert headers["content-type"].startswith("text/plain")


def test_not_ready_until_the_dataplane_is_published(plane: FakePlane) -> None:
    holder = Holder()
    app = ModelApp(holder, max_body_bytes=LIMIT)
    for method, path in [
        ("GET", "/v2/health/ready"),
        ("POST", "/predict"),
        ("GET", "/v2/models/iris/ready"),
    ]:
        assert call(app, method, path, b"{}")[0] == 503
    assert call(app, "GET", "/v2/health/live")[0] == 200
    assert plane.calls == []
    holder.dataplane, holder.model_name = plane, plane.name
    assert call(app, "GET", "/v2/health/ready")[0] == 200
    assert call(app, "POST", "/predict", b"{}")[0] == 200


def test_a_load_error_is_reported_by_readiness_and_requests() -> None:
    holder = Holder()
    holder.error = "cannot load /x: model.onnx is missing"
    app = ModelApp(holder, max_body_bytes=LIMIT)
    status, _, body = call(app, "POST", "/predict", b"{}")
    assert status == 503
    assert "model.onnx is missing" in json.loads(body)["error"]
    status, _, body = call(app, "GET", "/v2/health/ready")
    assert status == 503
    assert "model.onnx is missing" in json.loads(body)["reason"]


def test_fast_path_takes_model_routes_and_passes_everything_else(app: ModelApp) -> None:
    seen: list[str] = []

    async def bentoml_stack(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = FastPath(bentoml_stack, model_app=app)
    assert call(fast, "POST", "/predict", b"{}")[0] == 200
    assert call(fast, "GET", "/v2/models/iris")[0] == 200
    assert call(fast, "GET", "/readyz")[0] == 299
    assert call(fast, "GET", "/docs.json")[0] == 299
    assert seen == ["/readyz", "/docs.json"]
