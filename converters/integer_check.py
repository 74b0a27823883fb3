"""The fully-integer check: every op runs on integer tensors and is a builtin op; the ones that
are not are named with the Keras layers they came from."""
from edgeasr.converters import flatbuffer as fb
from edgeasr.errors import EdgeasrError

INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "INT4")   # INT64: 16x8 biases
REQUANTIZING = ("requantizing integer tensors: an op's output got a range of its own where the next op keeps or "
                "fixes its scale (RESHAPE, AVERAGE_POOL_2D, CONCATENATION, LOGISTIC, TANH, SOFTMAX); see "
                "edgeasr/quant/registry.py for the layers that must not quantize their output")


def float_ops(model_bytes: bytes, layer_names=(), io: str = "int8") -> list:
    """Ops that are not fully integer or not builtin: [(op, layer, reason)]. With io="float" a
    QUANTIZE on the model input and a DEQUANTIZE on its output are the allowed float boundary."""
    model = fb.load(model_bytes)
    types = fb.type_names()
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        name = fb.op_name(model, op)
        tensors = [graph.tensors[i] for i in list(op.inputs) + list(op.outputs) if i >= 0]
        # The weight names the layer best (outputs carry fused activations' names), then outputs.
        ordered = [graph.tensors[i] for i in list(op.inputs[1:2]) + list(op.outputs) + list(op.inputs) if i >= 0]
        layer = next((fb.layer_of(fb.tensor_name(t), layer_names) for t in ordered
                      if fb.layer_of(fb.tensor_name(t), layer_names)), "")
        if name.startswith("CUSTOM") or name == "UNKNOWN":
            found.append((name, layer, "not a builtin op (Flex / custom)"))
            continue
        if io == "float" and ((name == "QUANTIZE" and op.inputs[0] in graph.inputs)
                              or (name == "DEQUANTIZE" and op.outputs[0] in graph.outputs)):
            continue
        non_integer = sorted({types[t.type] for t in tensors if types[t.type] not in INTEGER_TYPES})
        if non_integer or name in ("QUANTIZE", "DEQUANTIZE"):   # inside the graph, whatever the io
            found.append((name, layer, f"{', '.join(non_integer)} tensors" if non_integer else REQUANTIZING))
    return found


def check_fully_integer(model_bytes: bytes, layer_names=(), io: str = "int8") -> None:
    found = float_ops(model_bytes, layer_names, io)
    if found:
        described = "; ".join(f"{op} (layer {layer or '?'}: {reason})" for op, layer, reason in found[:12])
        raise EdgeasrError(f"the converted model is not fully integer: {len(found)} op(s) would run in float, "
                           f"outside the builtin set, or requantize between tensors: {described}")
