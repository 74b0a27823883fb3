"""Reading a .tflite flatbuffer: op names and tensors with their types, shapes, data and scales.

The interpreter hides what the file really stores (it reports INT4 weights as int8, for one);
this reads the file itself, through the schema TensorFlow ships.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class TensorInfo:
    name: str
    type: str  # TFLite TensorType name: INT8, INT4, INT32, FLOAT32, ...
    shape: tuple
    data: np.ndarray  # raw bytes of the buffer (uint8), or None for activations
    scale: np.ndarray  # quantisation scales, or None


def read_model(model_bytes: bytes):
    """(op names in execution order, [TensorInfo]) of the first subgraph."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        ops.append(op_names[max(code.builtinCode, code.deprecatedBuiltinCode)])
    tensors = []
    for tensor in graph.tensors:
        data = model.buffers[tensor.buffer].data
        quant = tensor.quantization
        tensors.append(TensorInfo(
            name=tensor.name.decode(), type=type_names[tensor.type],
            shape=tuple(int(d) for d in tensor.shape),
            data=None if data is None else np.asarray(data, np.uint8),
            scale=None if quant is None or quant.scale is None else np.asarray(quant.scale),
        ))
    return ops, tensors


def unpack_int4(data: np.ndarray, count: int) -> np.ndarray:
    """TFLite INT4: two values per byte, element 2i in the low nibble, sign-extended."""
    low = (data & 0x0F).astype(np.int8)
    high = (data >> 4).astype(np.int8)
    values = np.stack([low, high], axis=1).reshape(-1)[:count]
    return np.where(values > 7, values - 16, values).astype(np.int8)


def weight_storage(model_bytes: bytes) -> dict:
    """How the constant weight tensors (2-D and up, not biases) are stored: counts and bytes by type."""
    _, tensors = read_model(model_bytes)
    weights = [t for t in tensors if t.data is not None and len(t.shape) >= 2 and t.type != "INT32"]
    by_type = {}
    for tensor in weights:
        entry = by_type.setdefault(tensor.type, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(tensor.data.size)
    return by_type
