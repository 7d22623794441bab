"""KServe's Python model server with an onnxruntime model: what a KServe user would write.

Run inside the KServe virtual environment (not ours):
    python peer_kserve.py --onnx model.onnx --http_port P --grpc_port G
"""

import argparse

import kserve
import numpy as np
import onnxruntime as ort


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True
        return True

    def predict(self, payload, headers=None):  # type: ignore[no-untyped-def]
        rows = np.asarray(payload["instances"], dtype=np.float32)
        labels, probabilities = self.session.run(None, {self.input_name: rows})
        return {"predictions": labels.tolist(), "probabilities": probabilities.tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--onnx", required=True)
    args, _ = parser.parse_known_args()
    model = OnnxModel("bench", args.onnx)
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([model])
