"""``mlrollout serve`` as a real process: routes, OIP v2 via tritonclient, bad input, metrics.

Two servers for the whole module: ``server`` serves example v1 from a directory,
``server_b`` serves example v2 from an HTTP URL with its sha256 (a different
deployment and track), which also proves URL loading and per-instance metrics.
"""

from __future__ import annotations

import json
import random
import socket
import string
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from mlrollout.services.netutil import free_port

from tests.doubles.server import (
    FileServer,
    RunningServer,
    serve_command,
    spawn,
    wait_ready,
)

pytestmark = pytest.mark.integration


def request(
    server: RunningServer,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(server.url + path, data=body, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def post_json(
    server: RunningServer, path: str, obj: Any, **kw: Any
) -> tuple[int, Any, dict[str, str]]:
    status, headers, body = request(server, path, json.dumps(obj).encode(), **kw)
    return status, json.loads(body), headers


def series(server: RunningServer) -> dict[str, float]:
    """Every sample on /metrics, keyed by name plus labels."""
    status, _, body = request(server, "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, v in samples.items():
        if key.split("{", 1)[0] == name and all(f'{k}="{lv}"' in key for k, lv in labels.items()):
            total += v
    return total


def card(artifact: Path) -> dict[str, Any]:
    return json.loads((artifact / "model.json").read_text())


def records(examples: dict[str, Path], n: int) -> list[dict[str, Any]]:
    lines = (examples["v1"].parent / "traffic.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``server``'s TMPDIR, holding a home left behind by a killed server."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    (tmp / "mlrollout-serve-999999999-dead" / "prometheus_multiproc_dir").mkdir(parents=True)
    return tmp


@pytest.fixture(scope="module")
def server(
    serve_model: Any, example_artifacts: dict[str, Path], server_tmp: Path
) -> Iterator[RunningServer]:
    args = ("--deployment", "fraud-a")
    with serve_model(example_artifacts["v1"], args=args, env={"TMPDIR": str(server_tmp)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def tarball(example_artifacts: dict[str, Path], file_server: FileServer) -> tuple[str, str]:
    """Example v2 packed as a .tar.gz on the file server: (URL, sha256)."""
    from mlrollout.services.model.artifact import pack_artifact

    sha = pack_artifact(example_artifacts["v2"], file_server.root / "v2.tar.gz")
    return f"{file_server.url}/v2.tar.gz", sha


@pytest.fixture(scope="module")
def server_b(serve_model: Any, tarball: tuple[str, str]) -> Iterator[RunningServer]:
    url, sha = tarball
    args = ("--sha256", sha, "--deployment", "fraud-b", "--track", "canary")
    with serve_model(url, args=args) as srv:
        yield srv


# --- serving -----------------------------------------------------------------------------


def test_health_and_readiness_routes(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    name = card(example_artifacts["v1"])["name"]
    for path in [
        "/livez",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{name}/ready",
    ]:
        assert request(server, path)[0] == 200, path
    assert request(server, "/v2/models/no-such-model/ready")[0] == 404


def test_serve_says_when_it_is_ready(server: RunningServer) -> None:
    """Issue 13: `serve` never printed a "ready" line."""
    deadline = time.monotonic() + 20
    while "ready: serving" not in server.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.2)
    line = next(ln for ln in server.log_tail(200).splitlines() if "ready: serving" in ln)
    assert f"http://127.0.0.1:{server.port}" in line and "/predict" in line


def test_predict_instances_and_records(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    meta = card(example_artifacts["v1"])
    rows = records(example_artifacts, 5)
    names = [f["name"] for f in meta["inputs"]["features"]]
    instances = [[r["record"][n] for n in names] for r in rows]

    status, by_instances, headers = post_json(server, "/predict", {"instances": instances})
    assert status == 200, by_instances
    assert len(by_instances["predictions"]) == 5
    assert set(by_instances["predictions"]) <= set(meta["classes"])
    assert np.asarray(by_instances["probabilities"]).shape == (5, len(meta["classes"]))
    assert (by_instances["model"], by_instances["version"]) == (meta["name"], meta["version"])
    assert headers["x-request-id"] == by_instances["request_id"]

    status, by_records, _ = post_json(
        server,
        "/predict",
        {"records": [r["record"] for r in rows]},
        headers={"x-request-id": "trace-42"},
    )
    assert status == 200, by_records
    assert by_records["predictions"] == by_instances["predictions"]
    assert by_records["request_id"] == "trace-42"

    hostile = "no spaces allowed " + "x" * 300
    status, body, headers = post_json(
        server, "/predict", {"instances": instances}, headers={"x-request-id": hostile}
    )
    assert status == 200
    assert body["request_id"] == headers["x-request-id"] != hostile


def test_oip_v2_with_tritonclient(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    meta = card(example_artifacts["v1"])
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(meta["name"])
        metadata = client.get_model_metadata(meta["name"])
        assert metadata["name"] == meta["name"]
        rows = records(example_artifacts, 3)
        expected = post_json(server, "/predict", {"records": [r["record"] for r in rows]})[1]
        label_output = metadata["outputs"][0]["name"]
        # JSON tensors, then the binary tensor extension for the inputs.
        for binary in (False, True):
            inputs = []
            for spec in metadata["inputs"]:
                if spec["name"] in rows[0]["record"]:  # one tensor per feature
                    data = np.array([[r["record"][spec["name"]]] for r in rows])
                else:  # one [n, features] matrix
                    names = [f["name"] for f in meta["inputs"]["features"]]
                    data = np.array([[r["record"][n] for n in names] for r in rows])
                tensor = triton.InferInput(spec["name"], list(data.shape), spec["datatype"])
                dtype = triton.triton_to_np_dtype(spec["datatype"])
                tensor.set_data_from_numpy(data.astype(dtype), binary_data=binary)
                inputs.append(tensor)
            outputs = [
                triton.InferRequestedOutput(o["name"], binary_data=False)
                for o in metadata["outputs"]
            ]
            result = client.infer(meta["name"], inputs, outputs=outputs, request_id=f"oip-{binary}")
            assert result.get_response()["id"] == f"oip-{binary}"
            labels = result.as_numpy(label_output)
            assert labels is not None
            assert labels.tolist() == expected["predictions"]
            # Issue 13 section 4: an OIP client can give feedback, keyed by the server-issued
            # id the response carries in its parameters.
            feedback_id = result.get_response()["parameters"]["feedback_id"]
            truth = [r["label"] for r in rows]
            status, judged, _ = post_json(
                server, "/feedback", {"feedback_id": feedback_id, "labels": truth}
            )
            assert status == 200, judged
            assert judged["correct"] + judged["incorrect"] == len(rows)
    finally:
        client.close()


def test_every_prediction_path_returns_the_request_and_feedback_ids(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    meta = card(example_artifacts["v1"])
    rows = records(example_artifacts, 2)
    names = [f["name"] for f in meta["inputs"]["features"]]
    matrix = [[r["record"][n] for n in names] for r in rows]
    tensor = {"name": "X", "shape": [2, len(names)], "datatype": "FP64", "data": matrix}
    infer = f"/v2/models/{meta['name']}/infer"
    versioned = f"/v2/models/{meta['name']}/versions/{meta['version']}/infer"
    for path, body, given, expected_id in [
        ("/predict", {"instances": matrix}, {"x-request-id": "p-1"}, "p-1"),
        ("/predict", {"instances": matrix}, {}, None),
        (infer, {"id": "oip-body-id", "inputs": [tensor]}, {"x-request-id": "hdr"}, "oip-body-id"),
        (infer, {"inputs": [tensor]}, {"x-request-id": "hdr-only"}, "hdr-only"),
        (versioned, {"inputs": [tensor]}, {}, None),
    ]:
        status, answer, headers = post_json(server, path, body, headers=given)
        assert status == 200, (path, answer)
        assert headers.get("x-request-id"), path
        if expected_id is not None:
            assert headers["x-request-id"] == expected_id, path
        fid = headers["x-mlrollout-feedback-id"]
        assert fid == (answer.get("feedback_id") or answer["parameters"]["feedback_id"])
    # Refusals carry the id too, so a client can find its failed request in the logs.
    for path in (infer, versioned.replace(meta["version"], "v999"), "/predict"):
        status, _, headers = post_json(server, path, {"bad": 1}, headers={"x-request-id": "r-9"})
        assert 400 <= status < 500 and headers.get("x-request-id") == "r-9", path


# --- bad input ---------------------------------------------------------------------------

BAD_INPUT = [
    # (path, body, headers, status, reason)
    ("/predict", b"{not json", {}, 400, "malformed_json"),
    ("/predict", b'{"instances": []}', {}, None, "empty_batch"),
    ("/predict", b'{"records": [{"f00": 1.0}]}', {}, None, "missing_feature"),
    ("/predict", b"x" * (2 << 20), {}, 413, "body_too_large"),
    ("/predict", b"{}", {"content-type": "text/plain"}, 415, "unsupported_content_type"),
    ("/v2/models/fraud/infer", b"[1, 2", {}, 400, "malformed_json"),
    ("/v2/models/nope/infer", b"{}", {}, 404, "unknown_model"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "reason"), BAD_INPUT)
def test_bad_input_is_a_4xx_counted_by_reason(
    server: RunningServer,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int | None,
    reason: str,
) -> None:
    before = value(series(server), "mlrollout_model_input_violations_total", reason=reason)
    got, _, payload = request(server, path, body, headers)
    assert 400 <= got < 500 and (status is None or got == status), payload[:200]
    assert json.loads(payload)["error"]
    after = value(series(server), "mlrollout_model_input_violations_total", reason=reason)
    assert after == before + 1
    assert request(server, "/readyz")[0] == 200  # and the server is still fine


def test_unknown_paths_create_no_series(server: RunningServer) -> None:
    before = set(series(server))
    rng = random.Random(7)
    for _ in range(25):
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(rng.randint(1, 3))
        )
        for method, body in (("GET", None), ("POST", b"{}")):
            status, _, _ = request(server, path, body, method=method)
            assert status == 404, path
    assert set(series(server)) == before


# --- metrics isolation, URL artifacts ----------------------------------------------------


def test_two_servers_keep_separate_metrics(
    server: RunningServer, server_b: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    rows = [r["record"] for r in records(example_artifacts, 4)]
    a_before, b_before = series(server), series(server_b)
    assert post_json(server, "/predict", {"records": rows})[0] == 200
    a_after, b_after = series(server), series(server_b)

    rows_total = "mlrollout_model_rows_total"
    assert value(a_after, rows_total) == value(a_before, rows_total) + 4
    assert value(b_after, rows_total) == value(b_before, rows_total)
    assert all('deployment="fraud-a"' in k for k in a_after if "deployment=" in k)
    assert all(
        'deployment="fraud-b"' in k and 'track="canary"' in k for k in b_after if "deployment=" in k
    )
    assert value(b_after, "mlrollout_model_info", version="v2") == 1


def test_each_server_has_its_own_bentoml_home_and_stale_ones_go(
    server: RunningServer, server_tmp: Path
) -> None:
    homes = sorted(p.name for p in server_tmp.glob("mlrollout-serve-*"))
    assert homes == [f"mlrollout-serve-{server.pid}-" + homes[0].rsplit("-", 1)[1]]
    assert (server_tmp / homes[0] / "prometheus_multiproc_dir").is_dir()


def test_url_artifact_is_served_after_its_digest_checks_out(server_b: RunningServer) -> None:
    status, body, _ = post_json(server_b, "/predict", {"instances": [[0.0] * 20]})
    assert status == 200, body
    assert body["version"] == "v2"


def test_digest_mismatch_is_refused(serve_model: Any, tarball: tuple[str, str]) -> None:
    url, sha = tarball
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(Exception) as failed, serve_model(url, args=("--sha256", wrong)):
        pass
    text = str(failed.value)
    assert "exited with 3" in text and "sha256" in text.lower()
    assert "Traceback" not in text


def test_corrupt_artifact_is_refused(
    serve_model: Any, example_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "profile.json"):
        (broken / name).write_bytes((example_artifacts["v1"] / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"\x08\x07 this is not an onnx model")
    with pytest.raises(Exception) as failed, serve_model(broken):
        pass
    assert "exited with 3" in str(failed.value)
    assert "Traceback" not in str(failed.value)
    with tarfile.open(tmp_path / "junk.tar.gz", "w:gz") as tar:
        tar.add(broken / "model.json", arcname="model.json")
    with pytest.raises(Exception) as failed, serve_model(tmp_path / "junk.tar.gz"):
        pass
    assert "exited with 3" in str(failed.value)


# --- feedback, readiness, refusals -------------------------------------------------------


def test_feedback_updates_the_accuracy_counters(
    server: RunningServer, example_artifacts: dict[str, Path]
) -> None:
    rows = records(example_artifacts, 8)
    status, body, _ = post_json(
        server,
        "/predict",
        {"records": [r["record"] for r in rows]},
        headers={"x-request-id": "fb-1"},
    )
    assert status == 200, body
    truth = [r["label"] for r in rows]
    hits = sum(p == t for p, t in zip(body["predictions"], truth, strict=True))
    before = series(server)
    label = {"feedback_id": body["feedback_id"], "labels": truth}

    status, judged, _ = post_json(server, "/feedback", label)
    assert status == 200, judged
    assert (judged["correct"], judged["incorrect"]) == (hits, len(truth) - hits)
    after = series(server)
    for outcome, delta in (("correct", hits), ("incorrect", len(truth) - hits)):
        name = "mlrollout_feedback_total"
        assert value(after, name, outcome=outcome) == value(before, name, outcome=outcome) + delta

    # Each prediction is judged once; a repeat is refused, as is the client's request id.
    status, again, _ = post_json(server, "/feedback", label)
    assert (status, again["reason"]) == (409, "duplicate_feedback")
    status, other, _ = post_json(server, "/feedback", {"feedback_id": "fb-1", "labels": truth})
    assert (status, other["reason"]) == (404, "unknown_feedback_id")
    assert value(series(server), "mlrollout_feedback_total", outcome="unmatched") == value(
        before, "mlrollout_feedback_total", outcome="unmatched"
    )


def test_readiness_waits_for_the_model_under_bentoml_serve(
    file_server: FileServer, tarball: tuple[str, str], tmp_path: Path
) -> None:
    """The Kubernetes image's command: live at once, ready only once the model is warm."""
    url, sha = tarball
    port = free_port()
    env = {
        "MLROLLOUT_ARTIFACT": url.replace(file_server.url, file_server.url + "/gated"),
        "MLROLLOUT_SHA256": sha,
        "MLROLLOUT_DEPLOYMENT": "gated",
        "MLROLLOUT_CACHE": str(tmp_path / "cache"),
        "BENTOML_HOME": str(tmp_path / "home"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    bentoml = str(Path(sys.executable).parent / "bentoml")
    cmd = [bentoml, "serve", "mlrollout.services.server.service:ModelServer"]
    srv = spawn(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)], port=port, env=env, log_dir=tmp_path
    )
    try:
        wait_ready(srv, path="/livez")
        assert request(srv, "/v2/health/live")[0] == 200
        for path in ("/readyz", "/v2/health/ready"):
            assert request(srv, path)[0] == 503, path
        status, _, payload = request(srv, "/predict", b'{"instances": [[0]]}')
        assert status == 503 and b"loading" in payload

        file_server.gate.set()  # the download may now finish
        wait_ready(srv)
        assert request(srv, "/v2/health/ready")[0] == 200
        assert post_json(srv, "/predict", {"instances": [[0.0] * 20]})[0] == 200
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "0"), "workers must be 1"),
        (("--workers", "2"), "workers must be 1"),
        (("--host", "localhost"), "must be an IP address"),
        (("--track", "blue"), "invalid choice"),
        (("--drift-window", "10"), "drift window must be between 50 and 1000000 rows"),
    ],
)
def test_bad_settings_are_refused_before_starting(
    example_artifacts: dict[str, Path], args: tuple[str, ...], message: str
) -> None:
    port = free_port()
    cmd = [*serve_command(str(example_artifacts["v1"]), port), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_busy_port_is_refused(example_artifacts: dict[str, Path]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cmd = serve_command(str(example_artifacts["v1"]), port)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_drift_window_is_set_from_the_environment(
    serve_model: Any, example_artifacts: dict[str, Path]
) -> None:
    # spec.serving.env reaches `mlrollout serve` as environment variables (Kubernetes and local).
    with serve_model(example_artifacts["v1"], env={"MLROLLOUT_DRIFT_WINDOW": "50"}) as srv:
        rows = [[0.1 * i] * 20 for i in range(60)]
        assert post_json(srv, "/predict", {"instances": rows})[0] == 200
        assert value(series(srv), "mlrollout_drift_windows_total") == 1
