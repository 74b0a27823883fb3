"""Global average pooling as MEAN with its own output scale: the pass that stops LiteRT rounding
pooled features onto the grid of the map they were pooled from.

The int8 AVERAGE_POOL_2D keeps its input's scale and zero point, so a global average of a
DS-CNN's last feature map (scale 0.15) is rounded to steps of 0.15 although the averages span
only 0..3.3; Keras (fake-quant) averages in float and does not round, and this rounding was the
largest single source of Keras/LiteRT disagreement (docs/convert_results.md, per-layer table).
MEAN over the spatial axes may requantize: its output gets a scale from the range of the pooled
values on the calibration data (with 10% headroom), ~10x finer for DS-CNN-S, and the
FULLY_CONNECTED ops that read it get their int32 bias rescaled to the new input scale.
XNNPACK delegates this MEAN (it did not take the AVERAGE_POOL_2D).
"""
import numpy as np

from edgeasr.converters import flatbuffer as fb

HEADROOM = 1.1
_MEAN_VERSION = 2          # int8 MEAN (op_version.cc)
_TENSOR_INT32 = 2          # TensorType.INT32


def _global_pools(model) -> list:
    """AVERAGE_POOL_2D ops over the whole int8 map, read only by FULLY_CONNECTED ops."""
    graph, types = model.subgraphs[0], fb.type_names()
    found = []
    for op in graph.operators:
        if fb.op_name(model, op) != "AVERAGE_POOL_2D":
            continue
        source, pooled = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        options = op.builtinOptions
        users = [user for user in graph.operators if op.outputs[0] in list(user.inputs)]
        if (types[source.type] == "INT8" and len(source.shape) == 4 and options.fusedActivationFunction == 0
                and (options.filterHeight, options.filterWidth) == tuple(source.shape[1:3])
                and tuple(pooled.shape[1:3]) == (1, 1) and op.outputs[0] not in graph.outputs and users
                and all(fb.op_name(model, user) == "FULLY_CONNECTED" and list(user.inputs).index(op.outputs[0]) == 0
                        for user in users)):
            found.append((op, users))
    return found


def _pooled_ranges(model_bytes: bytes, tensor_indices, calibration: np.ndarray) -> dict:
    """{tensor index: (min, max)} of the float values the pooled tensors take on `calibration`."""
    from edgeasr.runtime.litert import dequantize, quantize, tracing_interpreter

    interpreter = tracing_interpreter(model_bytes)
    detail = interpreter.get_input_details()[0]
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    low = {index: 0.0 for index in tensor_indices}
    high = {index: 0.0 for index in tensor_indices}
    for example in np.asarray(calibration, np.float32):
        interpreter.set_tensor(detail["index"], quantize(example, detail)[None])
        interpreter.invoke()
        for index in tensor_indices:
            values = dequantize(interpreter.get_tensor(index), details[index])
            low[index], high[index] = min(low[index], float(values.min())), max(high[index], float(values.max()))
    return {index: (low[index], high[index]) for index in tensor_indices}


def global_pools_as_mean(model_bytes: bytes, calibration: np.ndarray) -> tuple:
    """(new model bytes, number of pools rewritten)."""
    model = fb.load(model_bytes)
    pools = _global_pools(model)
    if not pools:
        return bytes(model_bytes), 0
    ranges = _pooled_ranges(model_bytes, [op.outputs[0] for op, _ in pools], calibration)
    for op, users in pools:
        low, high = (HEADROOM * value for value in ranges[op.outputs[0]])
        if high - low <= 0:
            continue
        _to_mean(model, op, users, low, high)
    return fb.dump(model), len(pools)


def _to_mean(model, op, users, low, high):
    s = fb.schema()
    graph = model.subgraphs[0]
    pooled = graph.tensors[op.outputs[0]]
    old_scale = float(pooled.quantization.scale[0])
    source = graph.tensors[op.inputs[0]]
    scale = _scale_with_whole_zero_point_term((high - low) / 255.0, float(source.quantization.scale[0]),
                                              int(source.quantization.zeroPoint[0]))
    pooled.quantization.scale = [scale]
    pooled.quantization.zeroPoint = [int(np.clip(np.round(-128 - low / scale), -128, 127))]
    axes = s.TensorT()
    axes.shape, axes.type, axes.name = [2], _TENSOR_INT32, "mean/axes"
    axes.buffer = fb.add_buffer(model, np.array([1, 2], np.int32))
    graph.tensors.append(axes)
    op.inputs = [op.inputs[0], len(graph.tensors) - 1]
    options = s.ReducerOptionsT()
    options.keepDims = True
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.ReducerOptions, options
    op.opcodeIndex = fb.operator_code(model, s.BuiltinOperator.MEAN, _MEAN_VERSION)
    for user in users:
        _rescale_bias(model, user, old_scale / scale)


def _scale_with_whole_zero_point_term(scale: float, input_scale: float, input_zero_point: int) -> float:
    """The nearest float32 scale at or above `scale` for which input_zero_point x input_scale / scale
    is a whole number when computed in float32, as the builtin MEAN kernel computes it (the exact
    quotient then differs from it by ~1e-5).

    That kernel (the optimized int8 MEAN, which aarch64 runs even with XNNPACK) adds the input zero
    point's share as a constant and truncates it to an integer: every pooled value then lands up to
    1 LSB off, in one direction for the whole file (38.9% of the 4-bit DS-CNN-S's pooled values one
    LSB above x86 XNNPACK's). With a whole-number term nothing is truncated; the 4-bit DS-CNN-S's
    scale grew by 0.04%."""
    if input_zero_point == 0:
        return scale
    term = np.float32(input_zero_point) * np.float32(input_scale)
    for whole in range(int(abs(float(term)) / scale), 0, -1):
        candidate = np.float32(abs(float(term)) / whole)
        if abs(float(term / candidate)) == whole:
            return float(candidate)
    return scale                 # the term is below 1 at this scale: truncating it costs under 1 LSB


def _rescale_bias(model, op, factor):
    """The bias of an op whose input scale was divided by `factor`: values x factor, scales / factor."""
    graph = model.subgraphs[0]
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return
    bias = graph.tensors[op.inputs[2]]
    values = fb.buffer_data(model, bias).view(np.int32).astype(np.float64)
    bias.buffer = fb.add_buffer(model, np.round(values * factor).astype(np.int32))
    bias.quantization.scale = [float(v) / factor for v in bias.quantization.scale]
