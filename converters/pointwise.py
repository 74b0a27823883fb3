"""Pointwise convolutions as FULLY_CONNECTED: the pass that puts INT4 1x1 convolutions on
XNNPACK's INT4 path.

XNNPACK (LiteRT 2.3) delegates INT4 FULLY_CONNECTED with int8 activations but no INT4 CONV_2D,
so a DS-CNN with 4-bit pointwise convolutions ran almost entirely on the builtin kernels, which
unpack the INT4 filter on every invoke. A CONV_2D with a 1x1 filter, stride 1 and no dilation is
a FULLY_CONNECTED over the last axis: the filter [out, 1, 1, in] is the FC weight [out, in] with
the same bytes (packed or not) and the same per-channel scales on axis 0, the bias and fused
activation carry over, and keep_num_dims keeps the [1, H, W, out] output. The builtin kernels
compute the same int32 accumulators and requantize them with the same per-channel multipliers,
so the int8 output is bit-identical (tests/test_convert_int4.py checks it).
"""
from edgeasr.converters import flatbuffer as fb

# FULLY_CONNECTED op versions (tensorflow/lite/tools/versioning/op_version.cc): keep_num_dims 5,
# INT4 filter 10, per-channel scales 12, int16 activations with INT4 filter 13.
_FC_VERSION_KEEP_NUM_DIMS, _FC_VERSION_INT4, _FC_VERSION_PER_CHANNEL, _FC_VERSION_INT16_INT4 = 5, 10, 12, 13


def is_pointwise(model, op) -> bool:
    """A CONV_2D whose filter is 1x1 with stride 1 and no dilation, on a constant filter."""
    if fb.op_name(model, op) != "CONV_2D" or len(op.inputs) < 2:
        return False
    graph = model.subgraphs[0]
    weight = graph.tensors[op.inputs[1]]
    options = op.builtinOptions
    return (weight.shape is not None and len(weight.shape) == 4 and tuple(weight.shape[1:3]) == (1, 1)
            and fb.buffer_data(model, weight) is not None
            and (options.strideH, options.strideW, options.dilationHFactor, options.dilationWFactor) == (1, 1, 1, 1))


def pointwise_as_fully_connected(model_bytes: bytes, only_types=("INT4",)) -> tuple:
    """(new model bytes, names of the rewritten weights): every pointwise CONV_2D whose filter is
    stored as one of `only_types` becomes FULLY_CONNECTED with keep_num_dims."""
    model = fb.load(model_bytes)
    graph = model.subgraphs[0]
    types = fb.type_names()
    rewritten = []
    for op in graph.operators:
        if not is_pointwise(model, op):
            continue
        weight = graph.tensors[op.inputs[1]]
        if types[weight.type] not in only_types:
            continue
        _to_fully_connected(model, op, weight, types)
        rewritten.append(fb.tensor_name(weight))
    return (fb.dump(model) if rewritten else bytes(model_bytes)), rewritten


def _to_fully_connected(model, op, weight, types):
    s = fb.schema()
    conv = op.builtinOptions
    weight.shape = [int(weight.shape[0]), int(weight.shape[3])]
    options = s.FullyConnectedOptionsT()
    options.fusedActivationFunction = conv.fusedActivationFunction
    options.keepNumDims = True
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = options
    activation = types[model.subgraphs[0].tensors[op.inputs[0]].type]
    int4 = types[weight.type] == "INT4"
    per_channel = weight.quantization is not None and weight.quantization.scale is not None \
        and len(weight.quantization.scale) > 1
    version = max(_FC_VERSION_KEEP_NUM_DIMS, _FC_VERSION_INT4 if int4 else 0,
                  _FC_VERSION_PER_CHANNEL if per_channel else 0,
                  _FC_VERSION_INT16_INT4 if int4 and activation == "INT16" else 0)
    op.opcodeIndex = fb.operator_code(model, s.BuiltinOperator.FULLY_CONNECTED, version)
