"""Start each server the serving benchmark compares, on a free 127.0.0.1 port.

Every server runs under the local-mode ``Supervisor`` (own process group, always
stopped), pinned to the server core; peers run in their own virtual environments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlrollout.operator.local.procs import ManagedProcess, Supervisor
from mlrollout.services.netutil import free_port

from .loadtool import pinned

HERE = Path(__file__).resolve().parent
# bench/ runs from the source checkout (it is not installed): child processes that import
# it (``-m bench.apps``, ``bench.apps:StockBentoML``) get the checkout's root on their path.
SOURCE_PATH = {
    "PYTHONPATH": os.pathsep.join([str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
}
PEERS = ("mlserver", "kserve")


@dataclass(frozen=True)
class Server:
    name: str
    proc: ManagedProcess
    url: str  # the prediction endpoint
    protocol: str  # "instances" (JSON {"instances": rows}) or "v2" (Open Inference Protocol)


@dataclass(frozen=True)
class BenchModel:
    artifact: Path  # mlrollout artifact directory (model.onnx inside)
    input_name: str
    n_features: int

    @property
    def onnx(self) -> Path:
        return self.artifact / "model.onnx"


def body(model: BenchModel, protocol: str, rows: list[list[float]]) -> bytes:
    if protocol == "v2":
        flat = [v for row in rows for v in row]
        tensor = {
            "name": model.input_name,
            "shape": [len(rows), model.n_features],
            "datatype": "FP32",
            "data": flat,
        }
        return json.dumps({"inputs": [tensor]}).encode()
    return json.dumps({"instances": rows}).encode()


def wait_post(url: str, data: bytes, proc: ManagedProcess, timeout: float = 120.0) -> None:
    """Wait until ``url`` answers 200 to ``data``; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.returncode}):\n{proc.log_tail(30)}")
        request = urllib.request.Request(
            url, data=data, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(
        f"{proc.name} not serving {url} after {timeout:.0f}s (last: {last}):\n{proc.log_tail(30)}"
    )


def peer_python(venvs: Path, peer: str) -> Path:
    return venvs / peer / "bin" / "python"


def ensure_peer_venvs(venvs: Path, peers: tuple[str, ...] = PEERS) -> dict[str, str]:
    """Create each peer's own virtual environment (their pins clash with ours); return versions."""
    versions = {}
    for peer in peers:
        python = peer_python(venvs, peer)
        if not python.exists():
            print(f"bench: creating a virtual environment for {peer} in {venvs / peer}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venvs / peer)], check=True)
            pip = [str(python), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, "--upgrade", "pip"], check=True)
            subprocess.run([*pip, peer, "onnxruntime", "uvloop", "httptools"], check=True)
        out = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({peer!r}))"],
            capture_output=True,
            text=True,
            check=True,
        )
        versions[peer] = out.stdout.strip()
    return versions


@dataclass(frozen=True)
class BenchEnv:
    """What every server starter needs: where to run it and on which core."""

    sup: Supervisor
    model: BenchModel
    core: str | None  # taskset core list for servers
    work: Path  # scratch directory for this run
    venvs: Path  # peers' virtual environments


Starter = Callable[[BenchEnv], Server]


def start_bare(env: BenchEnv) -> Server:
    sup, model, core = env.sup, env.model, env.core
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.apps",
        "bare",
        "--onnx",
        str(model.onnx),
        "--port",
        str(port),
    ]
    proc = sup.start("bare", pinned(argv, core), env=SOURCE_PATH)
    return Server(
        "starlette+onnxruntime (bare)", proc, f"http://127.0.0.1:{port}/predict", "instances"
    )


def start_bentoml_stock(env: BenchEnv) -> Server:
    sup, model, core, work = env.sup, env.model, env.core, env.work
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-", dir=work))
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    argv = [
        bentoml,
        "serve",
        "bench.apps:StockBentoML",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    extra = {
        "BENCH_ONNX": str(model.onnx),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        **SOURCE_PATH,
    }
    proc = sup.start("bentoml-stock", pinned(argv, core), env=extra)
    return Server(
        "bentoml 1.4 stock service", proc, f"http://127.0.0.1:{port}/predict", "instances"
    )


def start_mlrollout(env: BenchEnv) -> Server:
    sup, model, core = env.sup, env.model, env.core
    port = free_port()
    exe = str(Path(sys.executable).with_name("mlrollout"))
    argv = [
        exe,
        "serve",
        str(model.artifact),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--deployment",
        "bench",
    ]
    proc = sup.start("mlrollout", pinned(argv, core), env={"BENTOML_DO_NOT_TRACK": "True"})
    return Server("mlrollout server", proc, f"http://127.0.0.1:{port}/predict", "instances")


def start_mlserver(env: BenchEnv) -> Server:
    sup, model, core, work = env.sup, env.model, env.core, env.work
    port, grpc, metrics = free_port(), free_port(), free_port()
    repo = work / "mlserver-repo"
    (repo / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "peer_mlserver.py", repo / "bench" / "onnx_runtime.py")
    settings = {
        "http_port": port,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": 0,
        "host": "127.0.0.1",
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "bench",
        "implementation": "onnx_runtime.OnnxRuntime",
        "parameters": {"uri": str(model.onnx)},
    }
    (repo / "bench" / "model-settings.json").write_text(json.dumps(model_settings))
    mlserver = str(peer_python(env.venvs, "mlserver").with_name("mlserver"))
    proc = sup.start("mlserver", pinned([mlserver, "start", str(repo)], core), cwd=repo / "bench")
    return Server(
        "seldon mlserver (custom onnx runtime)",
        proc,
        f"http://127.0.0.1:{port}/v2/models/bench/infer",
        "v2",
    )


def start_kserve(env: BenchEnv) -> Server:
    sup, model, core = env.sup, env.model, env.core
    port, grpc = free_port(), free_port()
    python = str(peer_python(env.venvs, "kserve"))
    argv = [
        python,
        str(HERE / "peer_kserve.py"),
        "--onnx",
        str(model.onnx),
        "--http_port",
        str(port),
        "--grpc_port",
        str(grpc),
    ]
    proc = sup.start("kserve", pinned(argv, core))
    return Server(
        "kserve python model server",
        proc,
        f"http://127.0.0.1:{port}/v1/models/bench:predict",
        "instances",
    )


STARTERS: dict[str, Starter] = {
    "bare": start_bare,
    "bentoml-stock": start_bentoml_stock,
    "mlrollout": start_mlrollout,
    "mlserver": start_mlserver,
    "kserve": start_kserve,
}
