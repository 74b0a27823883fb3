"""The INT4 packing pass: every FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D weight whose
policy asks for 4 bits or fewer is stored as TFLite INT4 (two values per byte), whatever the
stock converter did with it.

What the converter does (TF 2.21) and what this pass does about it:
  - 4-bit fake-quant weights usually come out as INT4 already: the pass checks every level is
    inside the policy's n-bit range and leaves the tensor as it is.
  - 2- and 3-bit fake-quant weights come out as INT4 too, but on the 4-bit grid: the converter
    quantizes them with step max|w| / 7 (3 bits: levels k * 7/3 rounded, 0, +-2, +-5, +-7), which
    is not the model's weight. The pass finds the n-bit grid again as for an INT8 container
    (below; the levels and step of max|w| / (2^(n-1) - 1), every value within half a stored
    step), so the file holds the model's own weights again, and the bias follows.
  - 2- and 3-bit levels stored as INT4 are spread over the INT4 range (`_spread_over_int4`: 3-bit
    levels x 2, 2-bit levels x 7; the same real weights) so the int32 bias keeps about a 4-bit
    weight's resolution.
  - Some come out as INT8 containers (a Dense on a 3-D input converted from an open-batch
    Keras model: the converter re-quantized the per-tensor 4-bit weight per channel to 8 bits).
    The float weight q * scale is still on the 4-bit grid: the pass finds the grid (the levels
    as stored, else one step per channel, else one step for the tensor), checks every value
    is within half an int8 step of it and inside the n-bit range, packs the levels, rescales
    the op's int32 bias to input_scale * new_scale, and refuses (naming the layer) a weight
    that is not on any n-bit grid rather than rounding it silently.
  - Weights quantised to zero can share one deduplicated buffer across layers; a tensor or
    buffer is never rewritten in place: every rewritten weight or bias gets a buffer of its
    own (identical packed weights share one), so a layer whose policy keeps 8 bits and shares
    the buffer is untouched. Buffers nobody references any more are emptied.
  - An unfused bias (FULLY_CONNECTED without a bias input followed by ADD) needs nothing: the
    weight is packed, the ADD stays an int8 op.
  - FULLY_CONNECTED with one scale for the whole weight: with `fc_per_channel=True` the scale
    (and the bias scale) is repeated per output channel, quantized_dimension 0. The values do
    not change; older XNNPACK builds only delegate INT4 FULLY_CONNECTED with per-channel scales.
  - conv_storage="int8" (what `convert` uses) keeps the 4-bit levels of CONV_2D filters that are not
    pointwise (1x1, stride 1) and of DEPTHWISE_CONV_2D filters in INT8 containers (spread over the
    int8 range: `_spread_over_int8`): XNNPACK
    (LiteRT 2.3) takes INT4 only for FULLY_CONNECTED, and the builtin kernels unpack INT4 on
    every invoke, so an INT4 depthwise or first conv made DS-CNN-S w4 5x slower than its int8
    twin for 1.5 KB. Pointwise convolutions are stored as INT4 and become FULLY_CONNECTED
    (converters/pointwise.py). conv_storage="int4" packs every 4-bit weight.
Op versions: an INT4 filter needs CONV_2D 7, DEPTHWISE_CONV_2D 7, FULLY_CONNECTED 10 (int8
activations) or 13 (int16 activations), per tensorflow/lite/tools/versioning/op_version.cc; an
op whose code has a lower version is pointed at an operator code with that version. A filter kept
in an INT8 container is an ordinary int8 filter, and its op is pointed back from the INT4 version
the stock converter gave it to the int8 one (3): a runtime without INT4 convolutions (LiteRT's
reference kernels, BUILTIN_REF; older builds) refused the whole file for a version it did not need.
"""
import copy
from typing import Callable, List, Optional

import numpy as np

from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.pointwise import is_pointwise
from edgeasr.errors import EdgeasrError

PACKED_OPS = fb.WEIGHTED_OPS
CONV_STORAGE = ("int8", "int4")
INT4_OP_VERSIONS = {("FULLY_CONNECTED", "INT8"): 10, ("FULLY_CONNECTED", "INT16"): 13,
                    ("CONV_2D", "INT8"): 7, ("DEPTHWISE_CONV_2D", "INT8"): 7}
INT8_FILTER_OP_VERSIONS = {("CONV_2D", "INT8"): 3, ("DEPTHWISE_CONV_2D", "INT8"): 3}


def _levels_range(bits: int):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _per_axis(values: np.ndarray, axis: int, shape) -> np.ndarray:
    return values.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def _on_grid(q: np.ndarray, scale: np.ndarray, axis: int, bits: int):
    """(levels, per-channel or single step) of the n-bit grid that int8 values q * scale lie on, or None."""
    low, high = _levels_range(bits)
    if q.min() >= low and q.max() <= high:
        return q.astype(np.int8), scale                     # the levels are stored as they are
    per_channel = scale.size > 1
    s = _per_axis(scale, axis, q.shape) if per_channel else scale.reshape([1] * q.ndim)
    w = q.astype(np.float64) * s
    tolerance = 0.5 * s + 1e-6 * np.abs(w).max()
    reduce_axes = tuple(i for i in range(q.ndim) if i != axis)
    candidates = []
    if per_channel:
        candidates.append(np.abs(w).max(axis=reduce_axes, keepdims=True) / high)
    candidates.append(np.full([1] * q.ndim, np.abs(w).max() / high))
    for step in candidates:
        step = np.where(step > 0, step, s)                  # all-zero channels keep their scale
        levels = np.round(w / step)
        if levels.min() >= low and levels.max() <= high and np.all(np.abs(w - levels * step) <= tolerance):
            step = np.broadcast_to(step, s.shape).reshape(-1) if per_channel else step.reshape(-1)
            return levels.astype(np.int8), step.astype(np.float32)
    return None


def _spread_over_int8(levels: np.ndarray, scale: np.ndarray, bits: int):
    """n-bit levels times 2^(8-n) and the scale divided by as much: the same real weights; the int32
    bias, rewritten at the new scale, is as many times larger (exactly, unless the pass also moved
    the weight onto its grid: then it is rounded 2^(8-n) times finer than before). Why: the builtin
    kernels on x86 requantize in two roundings (a rounding high multiply, then a rounding right
    shift), so an output lands up to 2^-(shift+1) LSB off the exact value; with 4-bit levels the
    shift is small and 1% of DS-CNN-S's first-conv outputs came out 1 LSB above the exact result,
    which aarch64's single rounding gives. Levels 16x larger make that shift 4 bits longer
    (measured: first conv 1.07% -> 0.015% of outputs off between x86 and aarch64)."""
    factor = 2 ** (8 - bits)
    return (levels.astype(np.int16) * factor).astype(np.int8), (scale / factor).astype(np.float32)


def int4_spread(bits: int) -> int:
    """What `_spread_over_int4` multiplies n-bit levels by: 7 // (2^(n-1) - 1); 1 for 4 bits."""
    return 7 // (2 ** (bits - 1) - 1) if bits < 4 else 1


def _spread_over_int4(levels: np.ndarray, scale: np.ndarray, bits: int):
    """2- or 3-bit levels times 7 // (2^(n-1) - 1) (3 bits: -3..3 -> -6..6 in steps of 2; 2 bits:
    -1..1 -> -7, 0, 7) and the scale divided by as much: the same real weights. Why: the int32 bias
    is quantized at input_scale * weight_scale, and the pass can only re-round the converter's bias
    (quantized at its step max|w| / 7), not Keras' float one: with 2-bit levels -1..1 every output
    channel got a fixed offset of up to input_scale * max|w| / 2. 2 bits x 7 is the converter's own
    grid, so its weight and bias stay as they are. Measured with `convert` on a small untrained
    DS-CNN-like model (98x40 inputs, 12 classes, int8 conv containers, 400 examples), logits off
    Keras' by a mean of: 2 bits, 0.48 LSB with levels -1..1, 0.32 x 7 (argmax agreement 95.25% ->
    97.5%; 53 examples have their top two logits within 1 LSB); 3 bits, 0.14 -> 0.11 LSB (100%).
    The range check is on the n-bit levels, before the spread."""
    factor = int4_spread(bits)
    return (levels.astype(np.int16) * factor).astype(np.int8), (scale / factor).astype(np.float32)


class _Pass:
    def __init__(self, model, bits_of, fc_per_channel, conv_storage):
        if conv_storage not in CONV_STORAGE:
            raise EdgeasrError(f"conv_storage must be one of {', '.join(CONV_STORAGE)}, got {conv_storage!r}")
        self.model, self.bits_of, self.fc_per_channel = model, bits_of, fc_per_channel
        self.conv_storage = conv_storage
        self.graph = model.subgraphs[0]
        self.types = fb.type_names()
        self.type_codes = {v: k for k, v in self.types.items()}
        self.packed_buffers = {}     # packed bytes -> buffer index (identical packed weights share)
        self.report = []
        self.users = {}
        for op in self.graph.operators:
            for index in op.inputs:
                if index >= 0:
                    self.users[index] = self.users.get(index, 0) + 1

    def run(self):
        for op in self.graph.operators:
            name = fb.op_name(self.model, op)
            if name in PACKED_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
                self._op(op, name)
        self._empty_orphaned_buffers()
        return self.report

    # --- one op -----------------------------------------------------------------------------
    def _op(self, op, op_name):
        weight = self.graph.tensors[op.inputs[1]]
        weight_name = fb.tensor_name(weight)
        layer, bits = self.bits_of(weight_name)
        if bits is None or bits > 4:
            return
        kind = self.types[weight.type]
        entry = {"op": op_name, "layer": layer, "tensor": weight_name, "bits": bits, "stored_as": kind}
        data = fb.buffer_data(self.model, weight)
        count = int(np.prod(weight.shape))
        where = f"layer {layer or '?'} ({op_name}, weight {weight_name!r})"
        if data is None:
            raise EdgeasrError(f"{where}: the weight is not a constant; it cannot be stored as INT4")
        quant = weight.quantization
        if quant is None or quant.scale is None or len(quant.scale) == 0:
            raise EdgeasrError(f"{where}: the weight is {kind} without quantisation scales; "
                               f"a {bits}-bit policy needs a quantized weight")
        if quant.zeroPoint is not None and np.any(np.asarray(quant.zeroPoint) != 0):
            raise EdgeasrError(f"{where}: the weight has non-zero zero points; INT4 weights must be symmetric")
        scale = np.asarray(quant.scale, np.float32)
        axis = int(quant.quantizedDimension or 0)
        if kind == "INT4":
            levels = fb.unpack_int4(data, count).reshape(weight.shape)
            as_stored, new_scale = levels, scale
            entry["action"] = "checked"
            low, high = _levels_range(bits)
            if bits < 4 and levels.size and (levels.min() < low or levels.max() > high):
                # 2- and 3-bit fake-quant: the converter spread the levels over the 4-bit grid (3 bits:
                # k * 7/3 rounded); find the n-bit grid and its step again, as for an INT8 container.
                found = _on_grid(levels, scale, axis, bits)
                if found is None:
                    raise EdgeasrError(f"{where}: stored as INT4 by the converter with levels "
                                       f"{levels.min()}..{levels.max()}, not on a {bits}-bit grid, so it cannot "
                                       f"be stored without changing the model; train it with the policy (QAT) "
                                       f"or give this layer more bits")
                levels, new_scale = found
                entry["action"] = f"rescaled from the converter's 4-bit grid to its {bits}-bit grid"
        elif kind == "INT8":
            q = as_stored = data.view(np.int8)[:count].reshape(weight.shape)
            found = _on_grid(q, scale, axis, bits)
            if found is None:
                raise EdgeasrError(f"{where}: stored as INT8 by the converter and not on a {bits}-bit grid, "
                                   f"so it cannot be packed without changing the model; train it with the "
                                   f"policy (QAT) or give this layer more bits")
            levels, new_scale = found
            entry["action"] = "packed" if np.array_equal(new_scale, scale) else "packed, rescaled to its grid"
        else:
            raise EdgeasrError(f"{where}: a {bits}-bit policy needs an integer weight, the converter wrote {kind}")
        low, high = _levels_range(bits)
        if levels.size and (levels.min() < low or levels.max() > high):
            raise EdgeasrError(f"{where}: levels {levels.min()}..{levels.max()} outside the {bits}-bit range "
                               f"[{low}, {high}]")
        per_tensor_fc = op_name == "FULLY_CONNECTED" and new_scale.size == 1 and self.fc_per_channel \
            and weight.shape[0] > 1
        if per_tensor_fc:
            new_scale = np.repeat(new_scale, weight.shape[0]).astype(np.float32)
            axis = 0
            entry["action"] += ", scales per channel"
        stored = "INT8" if self._int8_container(op, op_name) else "INT4"
        if stored == "INT8":
            levels, new_scale = _spread_over_int8(levels, new_scale, bits)
        elif bits < 4:
            levels, new_scale = _spread_over_int4(levels, new_scale, bits)
        changed = kind != stored or not np.array_equal(new_scale, scale) or not np.array_equal(levels, as_stored)
        if changed:
            self._rewrite_bias(op, scale, new_scale, axis, where)
            weight = self._own_tensor(op, 1)
            weight.type = self.type_codes[stored]
            weight.buffer = self._packed_buffer(fb.pack_int4(levels) if stored == "INT4"
                                               else np.ascontiguousarray(levels, np.int8).reshape(-1).view(np.uint8))
            weight.quantization.scale = [float(v) for v in new_scale]
            weight.quantization.zeroPoint = [0] * len(new_scale)
            weight.quantization.quantizedDimension = axis
        if stored == "INT8":
            entry["action"] += (f", {bits}-bit levels x {2 ** (8 - bits)} in an INT8 container "
                                f"(XNNPACK has no INT4 {op_name})")
        elif bits < 4:
            entry["action"] += f", {bits}-bit levels x {int4_spread(bits)} in INT4"
        entry["converter_wrote"], entry["stored_as"] = kind, stored
        entry["scales"] = "per-channel" if len(new_scale) > 1 else "per-tensor"
        entry["bytes"] = (count + 1) // 2 if stored == "INT4" else count
        self._set_version(op, op_name, stored, where)
        self.report.append(entry)

    def _int8_container(self, op, op_name) -> bool:
        return self.conv_storage == "int8" and (
            op_name == "DEPTHWISE_CONV_2D" or op_name == "CONV_2D" and not is_pointwise(self.model, op))

    def _rewrite_bias(self, op, old_scale, new_scale, axis, where):
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return                                          # no bias input (unfused bias: an ADD follows)
        bias = self.graph.tensors[op.inputs[2]]
        data = fb.buffer_data(self.model, bias)
        if data is None or self.types[bias.type] not in ("INT32", "INT64"):
            raise EdgeasrError(f"{where}: unexpected bias {fb.tensor_name(bias)!r} ({self.types[bias.type]})")
        dtype = np.int32 if self.types[bias.type] == "INT32" else np.int64
        values = data.view(dtype).astype(np.float64)
        input_tensor = self.graph.tensors[op.inputs[0]]
        input_scale = float(input_tensor.quantization.scale[0])
        old_bias_scale = np.asarray(bias.quantization.scale, np.float64)
        real = values * (old_bias_scale if old_bias_scale.size == values.size else old_bias_scale[0])
        new_bias_scale = input_scale * np.broadcast_to(new_scale.astype(np.float64), values.shape) \
            if new_scale.size > 1 else np.array([input_scale * float(new_scale[0])])
        new_values = np.round(real / (new_bias_scale if new_bias_scale.size == values.size else new_bias_scale[0]))
        info = np.iinfo(dtype)
        if new_values.min() < info.min or new_values.max() > info.max:
            raise EdgeasrError(f"{where}: the bias overflows {self.types[bias.type]} at the packed weight's scale")
        bias = self._own_tensor(op, 2)
        bias.buffer = self._new_buffer(new_values.astype(dtype).view(np.uint8))
        bias.quantization.scale = [float(v) for v in new_bias_scale]
        bias.quantization.zeroPoint = [0] * len(new_bias_scale)
        bias.quantization.quantizedDimension = 0

    # --- tensors, buffers, op codes ---------------------------------------------------------------
    def _own_tensor(self, op, position):
        """The op's input tensor, cloned first when other ops use it too (never rewritten under them)."""
        index = op.inputs[position]
        tensor = self.graph.tensors[index]
        if self.users.get(index, 0) > 1:
            tensor = copy.deepcopy(tensor)
            self.graph.tensors.append(tensor)
            self.users[index] -= 1
            op.inputs[position] = len(self.graph.tensors) - 1
            self.users[op.inputs[position]] = 1
        return tensor

    def _new_buffer(self, data: np.ndarray) -> int:
        return fb.add_buffer(self.model, np.asarray(data, np.uint8))

    def _packed_buffer(self, data: np.ndarray) -> int:
        key = bytes(data)
        if key not in self.packed_buffers:
            self.packed_buffers[key] = self._new_buffer(data)
        return self.packed_buffers[key]

    def _set_version(self, op, op_name, stored, where):
        """Point the op at the version its filter type needs (see the module docstring)."""
        activation = self.types[self.graph.tensors[op.inputs[0]].type]
        int4_version = INT4_OP_VERSIONS.get((op_name, activation))
        code = self.model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if stored == "INT8":
            int8_version = INT8_FILTER_OP_VERSIONS.get((op_name, activation))
            if int8_version is not None and code.version == int4_version:
                op.opcodeIndex = fb.operator_code(self.model, builtin, int8_version)
            return
        if int4_version is None:
            raise EdgeasrError(f"{where}: LiteRT has no {op_name} kernel for {activation} activations with INT4 "
                               f"weights; give this layer 8-bit activations or 8-bit weights")
        if code.version < int4_version:
            op.opcodeIndex = fb.operator_code(self.model, builtin, int4_version)

    def _empty_orphaned_buffers(self):
        used = {0}
        for graph in self.model.subgraphs:
            used.update(t.buffer for t in graph.tensors)
        used.update(m.buffer for m in (self.model.metadata or []))
        for index, buffer in enumerate(self.model.buffers):
            if index not in used and buffer.data is not None:
                buffer.data = None


def pack_int4_weights(model_bytes: bytes, bits_of: Callable[[str], tuple], fc_per_channel: bool = True,
                      conv_storage: str = "int4"):
    """(new model bytes, one report entry per 4-bit weight). `bits_of(tensor_name)` returns
    (layer name, weight bits or None) for the weight tensor of a FULLY_CONNECTED / CONV_2D /
    DEPTHWISE_CONV_2D op. conv_storage: see the module docstring."""
    model = fb.load(model_bytes)
    report = _Pass(model, bits_of, fc_per_channel, conv_storage).run()
    return fb.dump(model), report


def policy_bits(policy, layer_names) -> Callable[[str], tuple]:
    """bits_of for a PrecisionPolicy and the Keras layer names of the converted model."""
    names = list(layer_names)

    def bits_of(tensor_name):
        layer = fb.layer_of(tensor_name, names)
        return layer, policy.resolve(layer).weight_bits if layer else policy.default.weight_bits

    return bits_of


def keras_layer_names(model) -> list:
    """The names a policy matches: float layer names, also inside QAT wrappers and folded layers."""
    names = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        names.append(inner.name)
        if getattr(inner, "bn_name", None):
            names.append(inner.bn_name)
    return names


def int4_metadata(report) -> dict:
    """What the model's metadata keeps of the INT4 report: layer -> how its n-bit weight is stored
    ("INT4": packed two per byte; "INT8": levels spread over an INT8 container). The full report,
    with what the pass did to each weight, is convert's JSON report; in the file it cost 1.3 KB of
    a 27 KB DS-CNN-S."""
    return {entry["layer"]: entry["stored_as"] for entry in report}


def int4_share(model_bytes: bytes) -> Optional[float]:
    """Share of constant weight bytes (2-D and up, not biases) stored as INT4."""
    storage = fb.weight_storage(model_bytes)
    total = sum(entry["bytes"] for entry in storage.values())
    return storage.get("INT4", {}).get("bytes", 0) / total if total else None


__all__: List[str] = ["pack_int4_weights", "policy_bits", "int4_share", "PACKED_OPS", "INT4_OP_VERSIONS",
                      "INT8_FILTER_OP_VERSIONS", "CONV_STORAGE"]
