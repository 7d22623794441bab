"""Measure a running server: server CPU per request and latency percentiles under ``hey``.

CPU is read from ``/proc/PID/stat`` (utime + stime) for a process and all its
descendants, before and after a ``hey`` run, so BentoML's supervisor and workers
are both counted. Linux only.

    python -m mlrollout.services.server.measure run --url URL --pid PID --body FILE
    python -m mlrollout.services.server.measure bare --onnx model.onnx --port 8000

``bare`` serves the like-for-like reference: Starlette + onnxruntime, JSON
``{"instances": [[...]]}`` in, predictions out, no validation, metrics or drift.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    requests: int
    errors: int
    rps: float
    cpu_us_per_request: float
    p50_ms: float
    p99_ms: float


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every live descendant."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, ()))
    return total


def _percentile(output: str, pct: int) -> float:
    match = re.search(rf"^\s*{pct}% in ([0-9.]+) secs", output, re.MULTILINE)
    return float(match.group(1)) * 1000 if match else float("nan")


def run_hey(url: str, body: Path, requests: int, concurrency: int) -> str:
    hey = shutil.which("hey")
    if hey is None:
        raise RuntimeError("hey is not installed (apt-get install hey)")
    cmd = [hey, "-n", str(requests), "-c", str(concurrency), "-m", "POST"]
    cmd += ["-T", "application/json", "-D", str(body), url]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout


def measure(url: str, pid: int, body: Path, requests: int = 5000, concurrency: int = 8) -> Result:
    """Run ``hey`` against ``url`` and charge the server process tree's CPU to it."""
    before = tree_cpu_seconds(pid)
    out = run_hey(url, body, requests, concurrency)
    used = tree_cpu_seconds(pid) - before
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    ok = codes.get(200, 0)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return Result(
        requests=ok,
        errors=sum(codes.values()) - ok,
        rps=float(rps.group(1)) if rps else float("nan"),
        cpu_us_per_request=used / max(1, ok) * 1e6,
        p50_ms=_percentile(out, 50),
        p99_ms=_percentile(out, 99),
    )


def bare_app(onnx_path: str):  # type: ignore[no-untyped-def]
    """Starlette + onnxruntime with nothing else: the reference for the speed targets."""
    import numpy as np
    import onnxruntime as ort
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    async def predict(request: Request) -> JSONResponse:
        rows = np.asarray((await request.json())["instances"], dtype=np.float32)
        outputs = session.run(None, {name: rows})
        return JSONResponse({"predictions": outputs[0].tolist()})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlrollout.services.server.measure")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure a running server")
    r.add_argument("--url", required=True)
    r.add_argument("--pid", type=int, required=True, help="server (supervisor) process id")
    r.add_argument("--body", type=Path, required=True)
    r.add_argument("-n", type=int, default=5000)
    r.add_argument("-c", type=int, default=8)
    b = sub.add_parser("bare", help="serve the bare reference app")
    b.add_argument("--onnx", required=True)
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        print(json.dumps(asdict(measure(args.url, args.pid, args.body, args.n, args.c))))
        return 0
    import uvicorn

    uvicorn.run(bare_app(args.onnx), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
