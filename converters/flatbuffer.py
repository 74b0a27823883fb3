"""Reading and rewriting a .tflite flatbuffer: ops, tensors with their types, shapes, data and scales.

The interpreter hides what the file really stores (it reports INT4 weights as int8, for one);
this reads the file itself, through the schema that ai_edge_litert ships (TensorFlow's copy when
ai_edge_litert is missing), so nothing here imports TensorFlow.
"""
from dataclasses import dataclass

import flatbuffers
import numpy as np

from edgeasr.errors import EdgeasrError

FILE_IDENTIFIER = b"TFL3"


def schema():
    """The TFLite flatbuffer schema module of the converter side (ai_edge_litert's, else TensorFlow's)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def _names(enum) -> dict:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def type_names() -> dict:
    return _names(schema().TensorType)


def op_names() -> dict:
    return _names(schema().BuiltinOperator)


@dataclass
class TensorInfo:
    name: str
    type: str  # TFLite TensorType name: INT8, INT4, INT32, FLOAT32, ...
    shape: tuple
    data: np.ndarray  # raw bytes of the buffer (uint8), or None for activations
    scale: np.ndarray  # quantisation scales, or None


def load(model_bytes: bytes, source: str = "model"):
    """The whole model as the schema's mutable object tree (ModelT)."""
    s = schema()
    data = bytes(model_bytes)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise EdgeasrError(f"{source}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
        if not model.subgraphs or model.buffers is None or model.operatorCodes is None:
            raise ValueError("no subgraph, buffers or operator codes")
        _check_references(model)
    except Exception as exc:  # a truncated or corrupt flatbuffer raises anything from struct to IndexError
        raise EdgeasrError(f"{source}: corrupt TFLite model ({type(exc).__name__}: {exc})") from exc
    return model


def _check_references(model) -> None:
    """The indices and enums that readers of the tree follow, in range: a flipped byte there
    otherwise surfaces later as an IndexError, KeyError or UnicodeDecodeError far from the file."""
    types = type_names()
    for graph in model.subgraphs:
        tensors = graph.tensors or []
        for tensor in tensors:
            if not 0 <= tensor.buffer < len(model.buffers):
                raise ValueError(f"tensor buffer index {tensor.buffer} out of range")
            if tensor.type not in types:
                raise ValueError(f"unknown tensor type {tensor.type}")
            if isinstance(tensor.name, bytes):
                tensor.name.decode()
        for op in graph.operators or []:
            if not 0 <= op.opcodeIndex < len(model.operatorCodes):
                raise ValueError(f"operator code index {op.opcodeIndex} out of range")
            for index in list(op.inputs if op.inputs is not None else []) + list(
                    op.outputs if op.outputs is not None else []):
                if not -1 <= index < len(tensors):
                    raise ValueError(f"tensor index {index} out of range")


def dump(model) -> bytes:
    """ModelT back to bytes (deterministic for the same tree), each distinct zero-point vector once."""
    for graph in model.subgraphs:
        for tensor in graph.tensors or []:
            quant = tensor.quantization
            if quant is not None and quant.zeroPoint is not None:
                quant.zeroPoint = np.asarray(quant.zeroPoint, np.int64)   # lists would bypass the sharing
    builder = _ZeroPointSharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


class _ZeroPointSharingBuilder(flatbuffers.Builder):
    """Writes each distinct int64 vector once; every table that holds the same one points at it.

    Zero points are the schema's only int64 vectors, and a per-channel weight (and a convolution's
    bias) must have one per channel, all 0: written per tensor they were 7.0 KB of a 33.9 KB
    4-bit DS-CNN-S. A flatbuffer may share a vector between tables; the interpreter copies each
    tensor's zero points when it loads the model (outputs are bit-identical, tests/test_flatbuffer.py).
    """

    def __init__(self, initial_size: int):
        super().__init__(initial_size)
        self._written = {}

    def CreateNumpyVector(self, x):  # noqa: N802 (the flatbuffers method it overrides)
        if x.dtype != np.int64:
            return super().CreateNumpyVector(x)
        key = x.tobytes()
        if key not in self._written:
            self._written[key] = super().CreateNumpyVector(x)
        return self._written[key]


def per_channel_parameter_bytes(tensors) -> int:
    """Bytes the quantisation parameters of per-channel `tensors` (schema TensorT) take in a file
    `dump` wrote: a float32 scale per channel, and each distinct int64 zero-point vector once."""
    quants = [t.quantization for t in tensors
              if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale) > 1]
    zero_points = {np.asarray(q.zeroPoint, np.int64).tobytes() for q in quants if q.zeroPoint is not None}
    return sum(4 * len(q.scale) for q in quants) + sum(len(z) for z in zero_points)


def single_op_model(model_bytes: bytes, index: int):
    """The model cut down to op `index` alone (its first input in, its first output out), or None
    when another input of the op is computed rather than constant: one kernel, run in isolation."""
    model = load(model_bytes)
    graph = model.subgraphs[0]
    op = graph.operators[index]
    if any(i >= 0 and buffer_data(model, graph.tensors[i]) is None for i in list(op.inputs)[1:]):
        return None
    graph.operators, graph.inputs, graph.outputs = [op], [op.inputs[0]], [op.outputs[0]]
    model.signatureDefs = None
    return dump(model)


def op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    name = op_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        return f"CUSTOM:{custom}"
    return name


def tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name or "")


def buffer_data(model, tensor):
    data = model.buffers[tensor.buffer].data
    return None if data is None or len(data) == 0 else np.asarray(data, np.uint8)


def read_model(model_bytes: bytes):
    """(op names in execution order, [TensorInfo]) of the first subgraph."""
    model = load(model_bytes)
    types = type_names()
    graph = model.subgraphs[0]
    ops = [op_name(model, op) for op in graph.operators]
    tensors = []
    for tensor in graph.tensors:
        quant = tensor.quantization
        tensors.append(TensorInfo(
            name=tensor_name(tensor), type=types[tensor.type],
            shape=tuple(int(d) for d in tensor.shape) if tensor.shape is not None else (),
            data=buffer_data(model, tensor),
            scale=None if quant is None or quant.scale is None else np.asarray(quant.scale),
        ))
    return ops, tensors


def unpack_int4(data: np.ndarray, count: int) -> np.ndarray:
    """TFLite INT4: two values per byte, element 2i in the low nibble, sign-extended."""
    low = (data & 0x0F).astype(np.int8)
    high = (data >> 4).astype(np.int8)
    values = np.stack([low, high], axis=1).reshape(-1)[:count]
    return np.where(values > 7, values - 16, values).astype(np.int8)


def pack_int4(values: np.ndarray) -> np.ndarray:
    """The inverse of unpack_int4: int values in [-8, 7] -> ceil(n / 2) bytes."""
    flat = np.asarray(values).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"values outside the INT4 range [-8, 7]: {flat.min()}..{flat.max()}")
    if flat.size % 2:
        flat = np.append(flat, 0)
    nibbles = (flat & 0x0F).astype(np.uint8).reshape(-1, 2)
    return (nibbles[:, 0] | (nibbles[:, 1] << 4)).astype(np.uint8)


WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


def weight_storage(model_bytes: bytes) -> dict:
    """How the layers' constant weights (the filters of FULLY_CONNECTED, CONV_2D and
    DEPTHWISE_CONV_2D) are stored: counts and bytes by type. Other constants (a Conformer's
    attention masks, LayerNorm scales) are not weights, packed or not."""
    model = load(model_bytes)
    graph = model.subgraphs[0]
    filters = sorted({op.inputs[1] for op in graph.operators
                      if op_name(model, op) in WEIGHTED_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0})
    _, tensors = read_model(model_bytes)
    weights = [tensors[i] for i in filters if tensors[i].data is not None]
    by_type = {}
    for tensor in weights:
        entry = by_type.setdefault(tensor.type, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(tensor.data.size)
    return by_type


def layer_of(name: str, layer_names) -> str:
    """The Keras layer a TFLite tensor came from, read from its name.

    Converted tensor names are ';'-joined TensorFlow op paths such as
    'model/quant_dense1/MatMul;model/quant_relu1/Relu'; wrapped layers appear as quant_<name>.
    Returns the first path component that names a layer of `layer_names`, else ''.
    """
    known = set(layer_names)
    for part in name.split(";"):
        for component in part.split("/"):
            stripped = component[len("quant_"):] if component.startswith("quant_") else None
            for candidate in (stripped, component):
                if candidate and candidate in known:
                    return candidate
    return ""


def operator_code(model, builtin: int, version: int) -> int:
    """Index of the operator code (builtin op, version), added to the model when missing."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == version:
            return index
    code = schema().OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)   # 127: PLACEHOLDER_FOR_GREATER_OP_CODES
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def without_unused_operator_codes(model_bytes: bytes) -> bytes:
    """The model without the operator codes no op uses any more (the passes point ops at new codes:
    pointwise CONV_2D -> FULLY_CONNECTED, AVERAGE_POOL_2D -> MEAN, INT4 <-> int8 versions). The
    interpreter resolves every code in the file, used or not, so a stale code with a version the
    runtime lacks made it refuse a model that never runs that op."""
    model = load(model_bytes)
    used = sorted({op.opcodeIndex for graph in model.subgraphs for op in graph.operators})
    if len(used) == len(model.operatorCodes):
        return bytes(model_bytes)
    new_index = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[index] for index in used]
    for graph in model.subgraphs:
        for op in graph.operators:
            op.opcodeIndex = new_index[op.opcodeIndex]
    return dump(model)


def add_buffer(model, values: np.ndarray) -> int:
    """Index of a new buffer holding the raw bytes of `values`."""
    buffer = schema().BufferT()
    buffer.data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1
