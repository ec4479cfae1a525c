"""The KServe V2 / Open Inference Protocol tensor encoding, mapped onto an Azure-style ``run()``.

Decoding (``decode_request``): a V2 inference request body, JSON or JSON followed by binary tensor data (Triton's
binary tensor extension, which ``tritonclient`` uses by default: the JSON part's length is in the
``Inference-Header-Content-Length`` header and each binary input says its size in ``parameters.binary_data_size``).
Each input's data, flat (row-major) or already nested, is checked against its ``datatype`` and ``shape`` and
reshaped into nested lists. What ``run()`` gets is the JSON an Azure client would have sent:

- one input: ``{"data": <nested list>}``, whatever the input is called (the example ``score.py`` reads
  ``json.loads(raw_data)["data"]``);
- several inputs: ``{"<input name>": <nested list>, ...}``.

Encoding (``encode_outputs``): ``run()``'s result becomes the outputs. A dict gives one output per key (in order);
anything else gives one output, named after the single requested output if the request named one, else
``output-0``. Shape and datatype are inferred from the value: a rectangular nested list (or scalar, shape ``[1]``)
of bools is ``BOOL``, of ints ``INT64``, of numbers ``FP64``, of strings ``BYTES``; any other value (ragged lists,
dicts, ``None``) is sent as one ``BYTES`` element holding its JSON text. Outputs are returned as binary data when the
request asks for it (``parameters.binary_data_output`` or an output's ``parameters.binary_data``), else as JSON.

Nothing here does I/O or knows about HTTP status codes beyond raising ``V2Error`` (always a client error: 400).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_OUTPUT = "output-0"

# struct codes of the fixed-size datatypes (little-endian on the wire)
_STRUCT = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
_INTS = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
_FLOATS = {"FP16", "FP32", "FP64"}
DATATYPES = (*_STRUCT, "BYTES")


class V2Error(ValueError):
    """The request does not follow the protocol; the message says how."""


class Tensor:
    def __init__(self, name: str, datatype: str, shape: list[int], data: list[Any]) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.data = data  # flat, row-major


class InferRequest:
    def __init__(self, doc: dict[str, Any], inputs: list[Tensor]) -> None:
        self.id = doc.get("id")
        self.parameters = doc.get("parameters") or {}
        self.inputs = inputs
        self.outputs = doc.get("outputs") or []  # requested outputs: [{"name", "parameters"}]

    def run_input(self) -> dict[str, Any]:
        """What ``run()`` gets, as a JSON-ready object (see the module docstring)."""
        if len(self.inputs) == 1:
            return {"data": reshape(self.inputs[0].data, self.inputs[0].shape)}
        return {t.name: reshape(t.data, t.shape) for t in self.inputs}

    def wants_binary(self, name: str) -> bool:
        for out in self.outputs:
            if isinstance(out, dict) and out.get("name") == name:
                params = out.get("parameters") or {}
                if "binary_data" in params:
                    return bool(params["binary_data"])
        return bool(self.parameters.get("binary_data_output", False))


# --- decoding -----------------------------------------------------------------------------------------------------


def decode_request(body: bytes, headers: Mapping[str, str]) -> InferRequest:
    """The inference request in ``body`` (JSON, or JSON + binary tensors); raises ``V2Error``."""
    head, binary = _split_body(body, headers)
    doc = _request_document(head)
    return InferRequest(doc, _decode_inputs(doc["inputs"], binary))


def _split_body(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, memoryview]:
    """The JSON part of ``body`` and the binary data after it (``Inference-Header-Content-Length`` apart)."""
    raw_length = headers.get(HEADER_LENGTH)
    if raw_length is None:
        return body, memoryview(b"")
    try:
        json_length = int(raw_length)
    except ValueError:
        raise V2Error(f"{HEADER_LENGTH} {raw_length!r} is not an integer") from None
    if not 0 <= json_length <= len(body):
        raise V2Error(f"{HEADER_LENGTH} {json_length} is outside the body of {len(body)} bytes")
    return body[:json_length], memoryview(body)[json_length:]


def _request_document(head: bytes) -> dict[str, Any]:
    """The request's JSON object, its ``inputs``, ``outputs`` and ``parameters`` of the right kinds."""
    try:
        doc = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise V2Error(f"the request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise V2Error("the request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2Error("'inputs' must be a non-empty list of tensors")
    outputs = doc.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)):
        raise V2Error("'outputs' must be a list of objects")
    if doc.get("parameters") is not None and not isinstance(doc["parameters"], dict):
        raise V2Error("'parameters' must be an object")
    return doc


def _decode_inputs(raw_inputs: list[Any], binary: memoryview) -> list[Tensor]:
    """The input tensors, which between them must claim all the binary data, in order, under unique names."""
    inputs: list[Tensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, used = _decode_input(raw, i, binary[offset:])
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise V2Error(f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise V2Error("input names must be unique")
    return inputs


def _decode_input(raw: Any, index: int, binary: memoryview) -> tuple[Tensor, int]:
    """One input tensor and how many bytes of ``binary`` it took (0 when its data is in the JSON)."""
    if not isinstance(raw, dict):
        raise V2Error(f"input {index} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise V2Error(f"input {index} needs a 'name'")
    what = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise V2Error(f"{what}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = _input_shape(raw.get("shape"), what)
    count = 1
    for d in shape:
        count *= d
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error(f"{what}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return Tensor(name, datatype, shape, _json_data(raw, datatype, shape, count, what)), 0
    if "data" in raw:
        raise V2Error(f"{what}: has both 'data' and binary_data_size")
    if not isinstance(size, int) or size < 0 or size > len(binary):
        raise V2Error(
            f"{what}: binary_data_size {size!r} exceeds the {len(binary)} bytes of binary data left"
        )
    return Tensor(name, datatype, shape, _from_binary(binary[:size], datatype, count, what)), size


def _input_shape(shape: Any, what: str) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise V2Error(f"{what}: 'shape' must be a list of non-negative integers")
    return shape


def _json_data(raw: dict[str, Any], datatype: str, shape: list[int], count: int, what: str) -> list[Any]:
    """An input's elements from its JSON ``data``, flat, checked against its datatype and element count."""
    if "data" not in raw:
        raise V2Error(f"{what}: has no 'data'")
    flat = flatten(raw["data"], what)
    if len(flat) != count:
        raise V2Error(f"{what}: shape {shape} needs {count} elements, 'data' has {len(flat)}")
    _check_types(flat, datatype, what)
    if datatype in _FLOATS:
        flat = [float(x) for x in flat]  # JSON writes 1.0 as 1: an FP tensor holds floats all the same
    return flat


def flatten(data: Any, what: str) -> list[Any]:
    """Row-major elements of ``data`` (a flat or nested list, or a scalar)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_types(flat: list[Any], datatype: str, what: str) -> None:
    for x in flat:
        if not _fits(x, datatype):
            raise V2Error(f"{what}: a {type(x).__name__} value in a {datatype} tensor")


def _fits(x: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(x, bool)
    if datatype in _INTS:
        return isinstance(x, int) and not isinstance(x, bool)
    if datatype in _FLOATS:
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    return isinstance(x, str)


def _from_binary(data: memoryview, datatype: str, count: int, what: str) -> list[Any]:
    if datatype == "BYTES":
        items: list[Any] = []
        pos = 0
        while pos < len(data):
            if pos + 4 > len(data):
                raise V2Error(f"{what}: BYTES element length cut short")
            (n,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if pos + n > len(data):
                raise V2Error(f"{what}: BYTES element of {n} bytes runs past the tensor's data")
            try:
                items.append(bytes(data[pos : pos + n]).decode("utf-8"))
            except UnicodeDecodeError:
                raise V2Error(f"{what}: BYTES element {len(items)} is not UTF-8 text") from None
            pos += n
        if len(items) != count:
            raise V2Error(f"{what}: shape needs {count} elements, the binary data holds {len(items)}")
        return items
    code = _STRUCT[datatype]
    width = struct.calcsize(code)
    if len(data) != count * width:
        raise V2Error(
            f"{what}: shape needs {count * width} bytes of {datatype}, binary_data_size is {len(data)}"
        )
    return list(struct.unpack(f"<{count}{code}", data))


def reshape(flat: list[Any], shape: list[int]) -> Any:
    """Nested lists of ``shape`` from row-major ``flat`` (whose length is the shape's product)."""
    if not shape:
        return flat[0]

    def build(offset: int, dims: list[int]) -> list[Any]:
        if len(dims) == 1:
            return flat[offset : offset + dims[0]]
        stride = 1
        for d in dims[1:]:
            stride *= d
        return [build(offset + i * stride, dims[1:]) for i in range(dims[0])]

    return build(0, shape)


# --- encoding -----------------------------------------------------------------------------------------------------


def infer_tensor(value: Any) -> tuple[str, list[int], list[Any]] | None:
    """(datatype, shape, flat data) of a rectangular nested list or a scalar, or None for anything else."""
    if not isinstance(value, list):
        value = [value]
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[Any] = []
    if not _collect(value, shape, 0, flat):
        return None
    datatype = _datatype_of(flat)
    if datatype is None:
        return None
    return datatype, shape, flat


def _collect(value: Any, shape: list[int], depth: int, flat: list[Any]) -> bool:
    if depth == len(shape):
        if isinstance(value, (list, dict)):
            return False
        flat.append(value)
        return True
    if not isinstance(value, list) or len(value) != shape[depth]:
        return False
    if depth == len(shape) - 1:
        if any(isinstance(x, (list, dict)) for x in value):
            return False
        flat.extend(value)
        return True
    return all(_collect(v, shape, depth + 1, flat) for v in value)


def _datatype_of(flat: list[Any]) -> str | None:
    if not flat:
        return "FP64"
    if all(isinstance(x, bool) for x in flat):
        return "BOOL"
    if all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
        return "INT64" if all(-(2**63) <= x < 2**63 for x in flat) else None
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
        return "FP64"
    if all(isinstance(x, str) for x in flat):
        return "BYTES"
    return None


def encode_outputs(result: Any, request: InferRequest) -> list[tuple[str, Any]]:
    """(name, value) pairs for ``run()``'s result, JSON-ready values (see the module docstring)."""
    if isinstance(result, dict):
        pairs = [(str(k), v) for k, v in result.items()]
    else:
        names = [o.get("name") for o in request.outputs if isinstance(o.get("name"), str)]
        pairs = [(names[0] if len(names) == 1 else DEFAULT_OUTPUT, result)]
    wanted = {o.get("name") for o in request.outputs}
    if wanted:
        pairs = [(n, v) for n, v in pairs if n in wanted]
        missing = wanted - {n for n, _ in pairs}
        if missing:
            raise V2Error(f"requested output(s) {', '.join(sorted(map(str, missing)))} not in run()'s result")
    return pairs


def response_body(
    model_name: str, model_version: str | None, request: InferRequest, outputs: list[tuple[str, Any]]
) -> tuple[bytes, int | None]:
    """The response body and, when some outputs are binary, the length of its JSON part."""
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version:
        doc["model_version"] = model_version
    if request.id is not None:
        doc["id"] = request.id
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in outputs:
        inferred = infer_tensor(value)
        if inferred is None:
            datatype, shape, flat = "BYTES", [1], [json.dumps(value, default=str)]
        else:
            datatype, shape, flat = inferred
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if request.wants_binary(name):
            blob = _to_binary(flat, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = flat
        tensors.append(tensor)
    doc["outputs"] = tensors
    head = json.dumps(doc).encode("utf-8")
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_binary(flat: list[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for s in flat:
            b = s.encode("utf-8")
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    code = _STRUCT[datatype]
    return struct.pack(f"<{len(flat)}{code}", *flat)


def metadata_tensors(example: Any) -> list[dict[str, Any]]:
    """V2 tensor metadata (name, datatype, shape with the batch dimension as -1) for an example input or output."""
    if example is None:
        return []
    pairs = list(example.items()) if isinstance(example, dict) else [(DEFAULT_OUTPUT, example)]
    out = []
    for name, value in pairs:
        inferred = infer_tensor(value)
        if inferred is None:
            out.append({"name": str(name), "datatype": "BYTES", "shape": [1]})
            continue
        datatype, shape, _ = inferred
        out.append({"name": str(name), "datatype": datatype, "shape": [-1, *shape[1:]] if shape else [-1]})
    return out
