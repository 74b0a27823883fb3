"""Bytes the runtime does not need, taken out of a converted model.

Measured on DS-CNN-S w4 (36.9 KB before): per-channel quantisation parameters were 14.1 KB, half
of them on biases. What is trimmed, and why it is safe:
  - FULLY_CONNECTED bias scales: the int32 (int64 for 16x8) bias is added to the accumulator as
    it is; the builtin kernels read the bias scale only for uint8 models, and XNNPACK's fully
    connected only needs the bias to be affine-quantized with zero points of 0. One scale (input
    scale * the first channel's weight scale) and one zero point stay instead of a float32 scale
    + int64 zero point per output channel. Not for CONV_2D / DEPTHWISE_CONV_2D: XNNPACK fails to
    prepare an int8 per-channel convolution whose bias has one scale (measured, LiteRT 2.3).
    Weight scales stay: they are the arithmetic.
    The schema stores zero points as int64 and the interpreter refuses a tensor whose zero points
    do not match its scales one for one, so weight zero points cannot go; `flatbuffer.dump`
    writes each distinct zero-point vector once instead.
  - Tensor names: the converter's ';'-joined TensorFlow op paths become `layer/weight`,
    `layer/bias`, `layer` (activations); the model's input and output keep their names.
  - The converter's CONVERSION_METADATA entry (converter options, not read by any runtime).
  - Buffers nobody references (the INT4 pass and metadata rewrites leave them behind).
tests/test_convert_int4.py checks that a trimmed model loads, runs with and without XNNPACK, has
the same XNNPACK partition and gives identical outputs.
"""
from edgeasr.converters import flatbuffer as fb

WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
DROPPED_METADATA = ("CONVERSION_METADATA",)


def trim_model(model_bytes: bytes, layer_names=()) -> bytes:
    model = fb.load(model_bytes)
    _one_bias_scale(model)
    _short_names(model, layer_names)
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) not in DROPPED_METADATA] or None
    _drop_unused_buffers(model)
    return fb.dump(model)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _fully_connected_biases(model):
    """Bias tensors that only FULLY_CONNECTED ops read (the converter may hand one all-zero bias
    tensor to an FC and a convolution alike; the convolution needs its per-channel scales)."""
    graph = model.subgraphs[0]
    fc_biases, other_inputs = set(), set()
    for op in graph.operators:
        if fb.op_name(model, op) == "FULLY_CONNECTED" and len(op.inputs) > 2 and op.inputs[2] >= 0:
            fc_biases.add(op.inputs[2])
            other_inputs.update(op.inputs[:2])
        else:
            other_inputs.update(op.inputs)
    for index in sorted(fc_biases - other_inputs):
        yield graph.tensors[index]


def _one_bias_scale(model):
    for bias in _fully_connected_biases(model):
        quant = bias.quantization
        if quant is not None and quant.scale is not None and len(quant.scale) > 1:
            quant.scale = [float(quant.scale[0])]
            quant.zeroPoint = [0]
            quant.quantizedDimension = 0


def _short_names(model, layer_names):
    graph = model.subgraphs[0]
    if not layer_names:
        return
    named = {}                                  # weight and bias: named after the weight's layer
    for op in graph.operators:
        if fb.op_name(model, op) in WEIGHTED_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
            layer = fb.layer_of(fb.tensor_name(graph.tensors[op.inputs[1]]), layer_names)
            for position, role in ((1, "weight"), (2, "bias")):
                if layer and len(op.inputs) > position and op.inputs[position] >= 0:
                    named[op.inputs[position]] = f"{layer}/{role}"
    boundary = set(graph.inputs) | set(graph.outputs)
    for index, tensor in enumerate(graph.tensors):
        layer = fb.layer_of(fb.tensor_name(tensor), layer_names)
        if index in boundary or not (layer or index in named):
            continue
        constant = fb.buffer_data(model, tensor) is not None
        tensor.name = named.get(index) or (f"{layer}/const" if constant else layer)


def _drop_unused_buffers(model):
    used = {0}                                  # buffer 0 is the schema's empty sentinel
    for graph in model.subgraphs:
        used.update(t.buffer for t in graph.tensors)
    used.update(m.buffer for m in (model.metadata or []))
    kept = sorted(used)
    new_index = {old: new for new, old in enumerate(kept)}
    model.buffers = [model.buffers[i] for i in kept]
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = new_index[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new_index[entry.buffer]
