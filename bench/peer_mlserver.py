"""Seldon MLServer runtime for an onnxruntime model: what an MLServer user would write.

MLServer ships no ONNX runtime, so users write a small ``MLModel`` like this one. The
benchmark copies this file into the model repository and runs ``mlserver start`` there,
inside MLServer's own virtual environment.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        labels, probabilities = self.session.run(None, {self.input_name: rows})
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("label", labels),
                NumpyCodec.encode_output("probabilities", probabilities),
            ],
        )
