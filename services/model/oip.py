"""Open Inference Protocol (KServe v2) REST bodies <-> validated batches, HTTP-free.

Accepted infer requests, for a model with features ``f1..fF``:

- one input holding the whole batch, shape ``[n, F]`` (any name; all-numeric models);
- one input per feature, named after it, shape ``[n]`` or ``[n, 1]`` (any model).

Tensor data may be JSON (``"data"``, flat or nested, row-major) or the binary tensor
extension (``parameters.binary_data_size`` with the JSON header length given by the
``Inference-Header-Content-Length`` request header), which ``tritonclient`` uses by
default. Outputs: ``label`` (and ``probabilities`` for classifiers; ``prediction`` for
regressors), always returned as JSON data.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from mlrollout.services.model.validation import Batch, InputError, Reason, Validator, decode_json

if TYPE_CHECKING:
    from mlrollout.services.model.runtime import OnnxModel, Prediction

NUMERIC_DTYPES: dict[str, str] = {
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
BYTES = "BYTES"
MAX_INPUTS = 1024


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: Any  # np.ndarray (numeric) or list[str] (BYTES), flat


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[str] | None


def parse_request(body: bytes, header_length: int | None = None) -> InferRequest:
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InputError(
                Reason.BAD_STRUCTURE,
                None,
                f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body",
            )
        body, binary = body[:header_length], body[header_length:]
    data = decode_json(body)
    if not isinstance(data, dict):
        raise InputError(Reason.BAD_STRUCTURE, None, "an infer request must be a JSON object")
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InputError(Reason.BAD_STRUCTURE, "inputs", "inputs must be a non-empty list")
    if len(raw_inputs) > MAX_INPUTS:
        raise InputError(Reason.BAD_STRUCTURE, "inputs", f"at most {MAX_INPUTS} inputs")
    rid = data.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InputError(Reason.BAD_STRUCTURE, "id", "id must be a string")
    offset = 0
    inputs = []
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _tensor(raw, i, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InputError(Reason.BAD_STRUCTURE, None, "binary data left over after the last input")
    return InferRequest(rid, inputs, _output_names(data.get("outputs")))


def _tensor(raw: Any, i: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InputError(Reason.BAD_STRUCTURE, None, f"inputs[{i}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(Reason.BAD_STRUCTURE, None, f"inputs[{i}].name must be a non-empty string")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InputError(
            Reason.BAD_STRUCTURE, name, f"input {name!r}: shape must be a list of sizes"
        )
    datatype = raw.get("datatype")
    if datatype != BYTES and datatype not in NUMERIC_DTYPES:
        raise InputError(
            Reason.WRONG_TYPE, name, f"input {name!r}: unsupported datatype {datatype!r}"
        )
    count = math.prod(shape)
    params = raw.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InputError(Reason.BAD_STRUCTURE, name, f"input {name!r}: bad binary_data_size")
        chunk = binary[offset : offset + size]
        offset += size
        data = (
            _bytes_from_binary(chunk, name)
            if datatype == BYTES
            else _numeric_from_binary(chunk, datatype, name)
        )
    elif "data" in raw:
        data = _from_json(raw["data"], datatype, name)
    else:
        raise InputError(Reason.BAD_STRUCTURE, name, f"input {name!r} has no data")
    if len(data) != count:
        raise InputError(
            Reason.BAD_STRUCTURE,
            name,
            f"input {name!r}: shape {shape} needs {count} values, got {len(data)}",
        )
    return Tensor(name, tuple(shape), datatype, data), offset


def _from_json(data: Any, datatype: str, name: str) -> Any:
    if not isinstance(data, list):
        data = [data]
    if datatype == BYTES:
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise InputError(Reason.WRONG_TYPE, name, f"input {name!r}: BYTES data must be strings")
        return flat
    try:
        arr = np.asarray(data)
    except ValueError:
        raise InputError(Reason.BAD_STRUCTURE, name, f"input {name!r}: ragged data") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(
            Reason.WRONG_TYPE,
            name,
            f"input {name!r}: {datatype} data must be numbers (no null, booleans or strings)",
        )
    return arr.reshape(-1)


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _numeric_from_binary(chunk: bytes, datatype: str, name: str) -> np.ndarray:
    dtype = np.dtype(NUMERIC_DTYPES[datatype])
    if len(chunk) % dtype.itemsize:
        raise InputError(
            Reason.BAD_STRUCTURE,
            name,
            f"input {name!r}: binary size is not a multiple of {datatype}",
        )
    return np.frombuffer(chunk, dtype=dtype)


def _bytes_from_binary(chunk: bytes, name: str) -> list[str]:
    # Each element: a 4-byte little-endian length, then that many bytes.
    out, pos = [], 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise InputError(Reason.BAD_STRUCTURE, name, f"input {name!r}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > len(chunk):
            raise InputError(Reason.BAD_STRUCTURE, name, f"input {name!r}: truncated BYTES element")
        try:
            out.append(chunk[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(
                Reason.WRONG_TYPE, name, f"input {name!r}: BYTES must be UTF-8 text"
            ) from None
        pos += length
    return out


def _output_names(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise InputError(Reason.BAD_STRUCTURE, "outputs", 'outputs must be a list of {"name": ...}')
    return [o["name"] for o in raw]


def to_batch(request: InferRequest, validator: Validator) -> Batch:
    names = [t.name for t in request.inputs]
    known = set(validator.names)
    if all(n in known for n in names):
        columns: dict[str, Any] = {}
        for t in request.inputs:
            if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
                raise InputError(
                    Reason.BAD_STRUCTURE,
                    t.name,
                    f"input {t.name!r}: per-feature inputs take shape [n] or [n, 1]",
                )
            if t.name in columns:
                raise InputError(Reason.BAD_STRUCTURE, t.name, f"input {t.name!r} is given twice")
            columns[t.name] = t.data
        return validator.from_columns(columns)
    if len(request.inputs) == 1:
        t = request.inputs[0]
        if t.datatype == BYTES:
            raise InputError(
                Reason.WRONG_TYPE, t.name, f"input {t.name!r}: a batch tensor must be numeric"
            )
        width = len(validator.names)
        shape = (1, *t.shape) if len(t.shape) == 1 else t.shape
        if len(shape) != 2 or shape[1] != width:
            raise InputError(
                Reason.BAD_STRUCTURE,
                t.name,
                f"input {t.name!r}: expected shape [n, {width}], got {list(t.shape)}",
            )
        return validator.from_matrix(np.asarray(t.data).reshape(shape))
    unknown = next(n for n in names if n not in known)
    raise InputError(
        Reason.UNKNOWN_FEATURE, unknown, f"input {unknown!r} is not a feature of this model"
    )


def available_outputs(task: str) -> list[str]:
    return ["label", "probabilities"] if task == "classification" else ["prediction"]


def requested_outputs(request: InferRequest, task: str) -> list[str]:
    available = available_outputs(task)
    if request.outputs is None:
        return available
    for name in request.outputs:
        if name not in available:
            raise InputError(
                Reason.BAD_STRUCTURE, name, f"unknown output {name!r}; this model has {available}"
            )
    return request.outputs


def label_datatype(classes: list[Any]) -> str:
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if classes and all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return "FP64"
    return BYTES


def outputs(pred: Prediction, wanted: list[str], classes: list[Any]) -> list[dict[str, Any]]:
    n = len(pred.labels)
    out = []
    for name in wanted:
        if name == "probabilities" and pred.probabilities is not None:
            probs = pred.probabilities
            data = probs.astype(np.float64).round(6).reshape(-1).tolist()
            out.append(
                {"name": name, "datatype": "FP32", "shape": [n, probs.shape[1]], "data": data}
            )
        elif name == "label":
            labels = (
                pred.labels if label_datatype(classes) != BYTES else [str(v) for v in pred.labels]
            )
            out.append(
                {"name": name, "datatype": label_datatype(classes), "shape": [n], "data": labels}
            )
        elif name == "prediction":
            out.append({"name": name, "datatype": "FP64", "shape": [n], "data": pred.labels})
    return out


def metadata(name: str, version: str, model: OnnxModel) -> dict[str, Any]:
    if model.layout == "matrix":
        inputs = [{"name": model.tensor, "datatype": "FP32", "shape": [-1, len(model.features)]}]
    else:
        inputs = [
            {
                "name": f["name"],
                "datatype": "FP32" if f["kind"] == "numeric" else BYTES,
                "shape": [-1, 1],
            }
            for f in model.features
        ]
    outs = []
    for out in available_outputs(model.task):
        if out == "probabilities":
            outs.append({"name": out, "datatype": "FP32", "shape": [-1, len(model.classes)]})
        elif out == "label":
            outs.append({"name": out, "datatype": label_datatype(model.classes), "shape": [-1]})
        else:
            outs.append({"name": out, "datatype": "FP64", "shape": [-1]})
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outs,
    }
