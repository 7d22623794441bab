"""The local runtime: one process per wanted revision, retired ones stopped, exits reported."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlrollout.operator.interfaces import DeploymentKey, RevisionSpec
from mlrollout.operator.local.procs import Supervisor
from mlrollout.operator.local.runtime import LocalRuntime, resolve_uri, serve_argv
from mlrollout.operator.model import ModelRef, Serving

KEY = DeploymentKey("local", "fraud")

# Answers 200 on /readyz and echoes one env var on /env: a stand-in for `mlrollout serve`.
STUB = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ.get("STUB_ECHO", "").encode()
            self.send_response(200 if self.path in ("/readyz", "/env") else 404)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def stub_command(spec: RevisionSpec, deployment: str, port: int, base: Path) -> list[str]:
    return [sys.executable, "-c", STUB, str(port)]


def _rev(version: str, track: str = "stable", env: dict[str, str] | None = None) -> RevisionSpec:
    serving = Serving.model_validate(
        {"env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
    )
    model = ModelRef(name="fraud", version=version, uri=f"./models/{version}")
    return RevisionSpec(revision=f"rev-{version}", track=track, model=model, serving=serving)  # type: ignore[arg-type]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    sup = Supervisor(tmp_path / "logs", stop_timeout=2)
    try:
        yield LocalRuntime(sup, tmp_path, command=stub_command)
    finally:
        sup.close()


def _ready(runtime: LocalRuntime, wanted: dict[str, RevisionSpec], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = runtime.ensure_revisions(KEY, wanted)
        if all(s.ready for s in states.values()):
            return states
        time.sleep(0.05)
    raise AssertionError(f"not ready: {states}")


def test_serve_command_line(tmp_path: Path) -> None:
    argv = serve_argv(_rev("v2", "canary"), "fraud", 8123, tmp_path)
    assert argv[argv.index("serve") + 1] == str((tmp_path / "models" / "v2").resolve())
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--deployment") + 1] == "fraud"
    assert argv[argv.index("--track") + 1] == "canary"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://x.invalid/m.tar.gz", "https://x.invalid/m.tar.gz"),
        ("/abs/model", "/abs/model"),
        ("rel/model", "/base/rel/model"),
    ],
)
def test_resolve_uri(uri: str, expected: str) -> None:
    assert resolve_uri(uri, Path("/base")) == expected


def test_starts_wanted_stops_retired_and_passes_env(runtime: LocalRuntime) -> None:
    v1 = _rev("v1")
    v2 = _rev("v2", "canary", env={"STUB_ECHO": "hello"})
    states = _ready(runtime, {v1.revision: v1, v2.revision: v2})
    assert set(states) == {"rev-v1", "rev-v2"}
    assert states["rev-v1"].url != states["rev-v2"].url
    with urllib.request.urlopen(f"{states['rev-v2'].url}/env", timeout=5) as resp:
        assert resp.read() == b"hello"
    first_v1 = runtime.process("rev-v1")
    assert first_v1 is not None
    # idempotent: asking again starts nothing new
    assert runtime.ensure_revisions(KEY, {v1.revision: v1, v2.revision: v2})["rev-v1"].ready
    assert runtime.process("rev-v1") is first_v1

    states = runtime.ensure_revisions(KEY, {v2.revision: v2})
    assert set(states) == {"rev-v2"}
    assert runtime.process("rev-v1") is None and not first_v1.alive()
    reasons = [e.reason for _k, e in runtime.events]
    assert reasons.count("Started") == 2 and reasons.count("Stopped") == 1
    assert [t.address for t in runtime.targets(KEY)] == [
        states["rev-v2"].url.removeprefix("http://")
    ]


def test_a_server_that_dies_is_reported_not_ready_once(runtime: LocalRuntime) -> None:
    v1 = _rev("v1")
    states = _ready(runtime, {v1.revision: v1})
    proc = runtime.process("rev-v1")
    assert proc is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    for _ in range(2):
        state = runtime.ensure_revisions(KEY, {v1.revision: v1})["rev-v1"]
        assert not state.ready and "exited with code" in state.message
        assert state.url == states["rev-v1"].url
    exits = [e for _k, e in runtime.events if e.reason == "ServerExited"]
    assert len(exits) == 1 and exits[0].type == "Warning"
    assert runtime.targets(KEY) == []


def test_a_server_that_cannot_start_is_not_ready(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs") as sup:
        rt = LocalRuntime(sup, tmp_path, command=lambda *a: ["/nonexistent/serve"])
        state = rt.ensure_revisions(KEY, {"rev-v1": _rev("v1")})["rev-v1"]
        assert not state.ready and "cannot start" in state.message


def test_a_promoted_stable_restarted_is_not_announced_as_canary(runtime: LocalRuntime) -> None:
    """Issue 13: on resume, a promoted stable (its track label stays canary) printed
    `Started: serving v1 ... as canary`."""
    promoted = _rev("v2", "canary")
    runtime.ensure_revisions(KEY, {promoted.revision: promoted})
    started = [e.message for _k, e in runtime.events if e.reason == "Started"]
    assert started and all("as canary" not in m for m in started)
    assert "v2 (rev-v2) on http://127.0.0.1:" in started[0]
