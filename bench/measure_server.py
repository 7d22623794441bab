"""Measure a running server: server CPU per request and latency percentiles under ``hey``.

A command-line front to the benchmark's load tool (``bench.loadtool``:
hey in its own process, utime + stime of the server's whole process tree from /proc, so
BentoML's supervisor and workers are both counted) and its bare reference app. Linux only.

    python -m bench.measure_server run --url URL --pid PID --body FILE
    python -m bench.measure_server bare --onnx model.onnx --port 8000

``bare`` serves the like-for-like reference: Starlette + onnxruntime, JSON
``{"instances": [[...]]}`` in, predictions out, no validation, metrics or drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from bench import apps
from bench.loadtool import measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.measure_server")
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
    return apps.main(["bare", "--onnx", args.onnx, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
