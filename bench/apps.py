"""Reference servers for the benchmark: the bare app (the floor over HTTP) and stock BentoML.

python -m bench.apps bare --onnx model.onnx --port P
BENCH_ONNX=model.onnx bentoml serve bench.apps:StockBentoML --port P
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort


def _session(path: str) -> tuple[ort.InferenceSession, str]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def bare_app(onnx_path: str) -> Any:
    """Starlette + onnxruntime and nothing else: no validation, metrics or drift."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    session, name = _session(onnx_path)

    async def predict(request: Request) -> JSONResponse:
        rows = np.asarray((await request.json())["instances"], dtype=np.float32)
        labels, probabilities = session.run(None, {name: rows})
        return JSONResponse(
            {"predictions": labels.tolist(), "probabilities": probabilities.tolist()}
        )

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


@bentoml.service(workers=1)
class StockBentoML:
    """A BentoML 1.4 service as its documentation suggests writing one, no tuning."""

    def __init__(self) -> None:
        self.session, self.input_name = _session(os.environ["BENCH_ONNX"])

    @bentoml.api
    def predict(self, instances: list[list[float]]) -> dict[str, Any]:
        rows = np.asarray(instances, dtype=np.float32)
        labels, probabilities = self.session.run(None, {self.input_name: rows})
        return {"predictions": labels.tolist(), "probabilities": probabilities.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apps")
    sub = parser.add_subparsers(dest="cmd", required=True)
    bare = sub.add_parser("bare", help="serve the bare Starlette + onnxruntime app (uvicorn)")
    bare.add_argument("--onnx", required=True)
    bare.add_argument("--host", default="127.0.0.1")
    bare.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    # uvicorn picks uvloop and httptools when they are installed, as BentoML does.
    uvicorn.run(bare_app(args.onnx), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
