"""Quantization-aware training models: quantize_model, the two stages, BN folding, weight transfer.

    qat = quantize_model(float_model, preset("w4a8-tanh"), stage="full")
    transfer_weights(trained_float_model, qat)      # fine-tune from a float checkpoint

Stages (the two stages of "Sub 8-bit quantization of streaming keyword spotting models"):
    "weights"  stage 1: only the weights of Conv/DepthwiseConv/Dense are fake-quantized, with the
               policy's transform (tanh or linear); BatchNormalization stays a float layer with
               batch statistics; no input or activation quantization.
    "full"     stage 2 (and one-stage QAT): BatchNormalization is folded into the conv before it,
               the folded weights are quantized, and the model input and activations get
               8-bit (or 16-bit) fake-quant. This is the model the converter sees.
Both stages build their quantized layers from the same float variables (kernel, gamma, beta,
moving mean and variance), so `transfer_weights` carries training from float to stage 1 to
stage 2 without loss: `stage_model` spells it out.

BatchNormalization folding. A Conv2D / DepthwiseConv2D / Conv1D (linear activation, one
consumer) followed by a BatchNormalization on the channel axis becomes one `FoldedConvBN` layer
that owns the conv kernel (and bias) and the BN's gamma, beta and moving statistics, and
computes, with g = gamma / sqrt(moving_variance + eps) per output channel,

    W_folded = lock(transform(kernel) * g)       (see quantizers.py)
    b_folded = beta + (bias - moving_mean) * g
    y = conv(x, W_folded) + b_folded

so the weight the converter sees (one fake-quant op on the folded weight) is on the n-bit grid.
Per channel this equals quantizing the kernel and then scaling each output channel by g, so the
tanh transform acts on the raw kernel (not on folded values, whose scale depends on the BN) and
stage 1 and stage 2 quantize the same kernel the same way. Inference uses the moving
statistics. Training uses batch statistics with the correction of Jacob et al. (2018):
conv(x, W_folded) * sigma_moving / sigma_batch + beta - mean_batch * gamma / sigma_batch, i.e.
BatchNormalization (batch statistics, moving averages updated with the BN's momentum) applied
to the conv with the quantized kernel; per channel that is computed from conv(x, Q(kernel))
directly. Folding with moving statistics in training too (tried first) cannot train from
scratch: an untrained net's moving statistics do not normalise, activations shrank ~10x per
layer and the logits quantized to one value. `freeze_bn_stats=True` switches training to the
folded moving-statistics path (for the last steps of fine-tuning; see `freeze_batch_norm`).
Why not TFMOT's own handling: its default 8-bit scheme quantizes the conv kernel before the BN
and lets the converter fold the BN afterwards, which moves 4-bit weights off their grid; its
folded `_ConvBatchNorm2D` layers are experimental and not in the default scheme.

Every 1/sqrt here is `exact_rsqrt`, not tf.math.rsqrt, whose bits differ between CPU designs
(an AMD EPYC and an Intel Xeon trained different QAT weights with it, docs/toolchain_facts.md).

Loading a saved QAT model: `load_model(path)` or `with quantize_scope(): keras.models.load_model(path)`.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer, quantize_wrapper
from tf_keras.src.engine.keras_tensor import KerasTensor
from tf_keras.src.utils import control_flow_util

from edgeasr.errors import EdgeasrError
from edgeasr.quant import quantizers as q
from edgeasr.quant import registry
from edgeasr.quant.policy import PrecisionPolicy, as_policy

STAGES = ("weights", "full")
BATCH_NORM_RSQRT = "float64"  # how exact_rsqrt computes; runs record it (edgeasr.train.numerics)


def exact_rsqrt(x: tf.Tensor) -> tf.Tensor:
    """1 / sqrt(x) with the same bits on every CPU: square root and division in float64, which x86
    TensorFlow computes exactly (as NumPy does), then rounded to x's dtype. tf.math.rsqrt on float32
    is VRSQRTPS and one Newton step: not correctly rounded, and CPU designs disagree in the last bits.
    Traced, where Grappler rewrites divisions, the bits are the same (tests/test_numerics.py)."""
    return tf.cast(1.0 / tf.sqrt(tf.cast(x, tf.float64)), x.dtype)


QuantizeWrapper = quantize_wrapper.QuantizeWrapper
QuantizeWrapperV2 = quantize_wrapper.QuantizeWrapperV2
QuantizeLayer = quantize_layer.QuantizeLayer

_FOLDABLE_CONVS = {"Conv2D": keras.layers.Conv2D, "DepthwiseConv2D": keras.layers.DepthwiseConv2D,
                   "Conv1D": keras.layers.Conv1D}


# --- the folded Conv + BatchNormalization layer ------------------------------------------------
class _Untracked:
    def __init__(self, value):
        self.value = value


class FoldedConvBN(keras.layers.Layer):
    """A Conv2D / DepthwiseConv2D / Conv1D with the BatchNormalization after it folded in.

    Named like the conv; `bn_name` keeps the BN's name so weights map back to both layers.
    """

    def __init__(self, conv: dict, batch_norm: dict, weight_quantizer=None, freeze_bn_stats=False, **kwargs):
        kwargs.setdefault("name", conv["config"]["name"])
        super().__init__(**kwargs)
        if conv.get("class_name") not in _FOLDABLE_CONVS:
            raise ValueError(f"FoldedConvBN cannot fold a {conv.get('class_name')}")
        self.conv_spec = {"class_name": conv["class_name"], "config": dict(conv["config"])}
        self.bn_spec = dict(batch_norm)
        self.weight_quantizer = registry.deserialize_quantizer(weight_quantizer)
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self.conv_name = self.conv_spec["config"]["name"]
        self.bn_name = self.bn_spec["name"]
        # An unbuilt conv that only answers kernel_size, strides, ...: kept out of Keras tracking
        # so that savers do not try to serialise it.
        self._template = _Untracked(_FOLDABLE_CONVS[conv["class_name"]].from_config(self.conv_spec["config"]))
        self.depthwise = conv["class_name"] == "DepthwiseConv2D"
        self.epsilon = float(self.bn_spec.get("epsilon", 1e-3))
        self.momentum = float(self.bn_spec.get("momentum", 0.99))

    @property
    def kernel_name(self):
        return "depthwise_kernel" if self.depthwise else "kernel"

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        channels_in = int(input_shape[-1])
        c = self._template.value
        if self.depthwise:
            kernel_shape = tuple(c.kernel_size) + (channels_in, c.depth_multiplier)
            channels_out = channels_in * c.depth_multiplier
            init, reg = c.depthwise_initializer, c.depthwise_regularizer
        else:
            kernel_shape = tuple(c.kernel_size) + (channels_in, c.filters)
            channels_out = c.filters
            init, reg = c.kernel_initializer, c.kernel_regularizer
        self.kernel = self.add_weight(self.kernel_name, shape=kernel_shape, initializer=init, regularizer=reg)
        self.bias = (self.add_weight("bias", shape=(channels_out,), initializer=c.bias_initializer)
                     if c.use_bias else None)
        bn = self.bn_spec

        def bn_weight(name, default_init, trainable=True):
            init = keras.initializers.get(bn.get(f"{name}_initializer", default_init))
            return self.add_weight(name, shape=(channels_out,), initializer=init, trainable=trainable)

        self.gamma = bn_weight("gamma", "ones") if bn.get("scale", True) else None
        self.beta = bn_weight("beta", "zeros") if bn.get("center", True) else None
        self.moving_mean = bn_weight("moving_mean", "zeros", trainable=False)
        self.moving_variance = bn_weight("moving_variance", "ones", trainable=False)
        super().build(input_shape)

    def gain(self):
        g = exact_rsqrt(self.moving_variance + self.epsilon)
        return g * self.gamma if self.gamma is not None else g

    def folded_kernel(self):
        """The weight the converter sees: on the n-bit grid when there is a weight quantizer."""
        gain = self.gain()
        if self.weight_quantizer is not None:
            return self.weight_quantizer.quantize(self.kernel, gain)
        if self.depthwise:
            return self.kernel * tf.reshape(gain, self.kernel.shape[-2:])
        return self.kernel * gain

    def folded_bias(self):
        gain = self.gain()
        shift = -self.moving_mean if self.bias is None else self.bias - self.moving_mean
        bias = shift * gain
        return bias + self.beta if self.beta is not None else bias

    def _quantized_unfolded_kernel(self):
        if self.weight_quantizer is None:
            return self.kernel
        return self.weight_quantizer.quantize(self.kernel)

    def _convolve(self, x, kernel):
        c = self._template.value
        if self.depthwise:
            return tf.nn.depthwise_conv2d(x, kernel, strides=(1, *c.strides, 1), padding=c.padding.upper(),
                                          dilations=c.dilation_rate)
        padding = c.padding.upper()
        if padding == "CAUSAL":
            left = c.dilation_rate[0] * (c.kernel_size[0] - 1)
            x = tf.pad(x, [[0, 0], [left, 0], [0, 0]])
            padding = "VALID"
        return tf.nn.convolution(x, kernel, strides=c.strides, padding=padding, dilations=c.dilation_rate)

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        if self.freeze_bn_stats:
            return self._folded(inputs)
        return control_flow_util.smart_cond(training, lambda: self._batch_normalized(inputs),
                                            lambda: self._folded(inputs))

    def _folded(self, inputs):
        """Inference (and frozen-statistics training): the folded, quantized conv."""
        return tf.nn.bias_add(self._convolve(inputs, self.folded_kernel()), self.folded_bias())

    def _batch_normalized(self, inputs):
        """Training: the folded conv with batch statistics in place of the moving ones.

        z = conv(x, Q(kernel)) gives the batch mean and variance (gradients flow through them as in
        BatchNormalization), the moving statistics are updated, and the output is
        conv(x, W_folded) * sigma_moving / sigma_batch + beta - mean_batch * gamma / sigma_batch,
        which is BN(z) with batch statistics. Per channel, conv(x, W_folded) equals
        z * gamma / sigma_moving exactly, so BN(z) is computed from z directly (one conv, not two).
        """
        z = self._convolve(inputs, self._quantized_unfolded_kernel())
        if self.bias is not None:
            z = tf.nn.bias_add(z, self.bias)
        mean, variance = tf.nn.moments(z, axes=list(range(len(z.shape) - 1)))
        inv = exact_rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * self.gamma
        shift = -mean * inv
        if self.beta is not None:
            shift = shift + self.beta
        per_tensor = self.weight_quantizer is not None and not self.weight_quantizer.per_channel
        if per_tensor:  # the folded weight is re-rounded on one grid: keep it in the training graph
            sigma_moving = tf.sqrt(self.moving_variance + self.epsilon)
            unbiased = self._convolve(inputs, self.folded_kernel())
            correction = sigma_moving * exact_rsqrt(variance + self.epsilon)
            outputs = tf.nn.bias_add(unbiased * correction, shift)
        else:
            outputs = tf.nn.bias_add(z * inv, shift)
        decay = 1.0 - self.momentum
        self.moving_mean.assign_sub((self.moving_mean - tf.stop_gradient(mean)) * decay)
        self.moving_variance.assign_sub((self.moving_variance - tf.stop_gradient(variance)) * decay)
        return outputs

    def compute_output_shape(self, input_shape):
        return self._template.value.compute_output_shape(input_shape)

    def float_weight_keys(self) -> List[Tuple[Tuple[str, str], tf.Variable]]:
        """The float layers' (layer name, weight name) of each variable: conv kernel/bias, BN vectors."""
        keys = [((self.conv_name, self.kernel_name), self.kernel)]
        if self.bias is not None:
            keys.append(((self.conv_name, "bias"), self.bias))
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            variable = getattr(self, name)
            if variable is not None:
                keys.append(((self.bn_name, name), variable))
        return keys

    def get_config(self):
        config = super().get_config()
        config.update({
            "conv": self.conv_spec,
            "batch_norm": self.bn_spec,
            "weight_quantizer": registry.serialize_quantizer(self.weight_quantizer),
            "freeze_bn_stats": self.freeze_bn_stats,
        })
        return config


def _folded_factory(layer, request):
    # The folded layer quantizes its own (folded) weight; the wrapper only quantizes the output.
    return registry.output_factory(layer, request)


registry.register_quantize_config(FoldedConvBN, _folded_factory)


class QuantizeInput(QuantizeLayer):
    """TFMOT's QuantizeLayer, marked built after build(): TFMOT's own leaves `built` False, so
    loading a .keras file builds it twice and fails on the doubled range variables."""

    def build(self, input_shape):
        super().build(input_shape)
        self.built = True


registry.register_quantize_config(QuantizeInput, registry.passthrough_factory)


def layer_classes() -> dict:
    return {"FoldedConvBN": FoldedConvBN, "QuantizeInput": QuantizeInput}


# --- quantize_model ------------------------------------------------------------------------------
def quantize_model(model: keras.Model, policy, stage: str = "full") -> keras.Model:
    """A new QAT model for `model` under `policy` (a PrecisionPolicy or preset name).

    The float model is left untouched; its weights are copied into the new model. With a float
    policy the model itself is returned.
    """
    policy = as_policy(policy)
    if stage not in STAGES:
        raise EdgeasrError(f"unknown QAT stage {stage!r}; known stages: {', '.join(STAGES)}")
    if policy.is_float:
        return model
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise EdgeasrError(f"model {getattr(model, 'name', model)!r}: quantize_model needs a functional or "
                           f"Sequential keras model with known input shapes")
    for layer in model.layers:
        if isinstance(layer, (QuantizeWrapper, QuantizeLayer, FoldedConvBN)):
            raise EdgeasrError(f"model {model.name!r} is already quantized (layer {layer.name!r}, "
                               f"{type(layer).__name__}); quantize the float model instead")
        if not isinstance(layer, keras.layers.InputLayer):
            registry.check_supported(layer)
    check_rules_name_layers(model, policy)
    quantized = _Rebuilder(model, policy, stage).build()
    transfer_weights(model, quantized)
    return quantized


def check_rules_name_layers(model: keras.Model, policy) -> None:
    """Refuse a policy whose layer rules match no layer of the model: it would silently be its
    default everywhere (the `mixed` presets name the layers of edgeasr's own models). Refuse a rule
    that matches only BatchNormalization layers folded into the convolution before them: the folded
    layer takes the convolution's rule, so the rule would do nothing."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if policy.rules and not any(policy.matching_rule(name) for name in names):
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        patterns = ", ".join(rule.pattern for rule in policy.rules)
        raise EdgeasrError(f"policy {policy.name!r}: none of its layer rules ({patterns}) "
                           f"matches a layer of model {model.name!r} ({shown}), so every layer would get the policy's "
                           f"default; give a policy JSON file whose rule patterns name this model's layers")
    for rule in policy.rules:
        matched = [layer for layer in layers if policy.matching_rule(layer.name) is rule]
        convs = [_folding_conv(layer) for layer in matched]
        if matched and all(convs):
            raise EdgeasrError(f"policy {policy.name!r}: rule {rule.pattern!r} matches only BatchNormalization layers "
                               f"({', '.join(layer.name for layer in matched[:6])}), which are folded into the "
                               f"convolution before them and take its rule; name {', '.join(convs[:6])} instead")


def _folding_conv(layer):
    """The name of the convolution a BatchNormalization is folded into (see _Rebuilder), else None."""
    if type(layer) is not keras.layers.BatchNormalization or len(layer._inbound_nodes) != 1:
        return None
    conv = layer._inbound_nodes[0].inbound_layers
    foldable = isinstance(conv, (keras.layers.Conv2D, keras.layers.Conv1D))       # DepthwiseConv2D included
    return conv.name if foldable and getattr(conv.activation, "__name__", "") == "linear" else None


class _Rebuilder:
    """Rebuilds a functional model node by node with quantized (wrapped / folded) layers."""

    def __init__(self, model, policy: PrecisionPolicy, stage: str):
        self.model, self.policy, self.stage = model, policy, stage
        self.full = stage == "full"
        self.nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True)
                      for node in model._nodes_by_depth[depth]]
        self.consumers = defaultdict(list)   # id(tensor) -> consuming nodes
        for node in self.nodes:
            for tensor in node.keras_inputs:
                self.consumers[id(tensor)].append(node)
        self.output_ids = {id(t) for t in tf.nest.flatten(model.outputs)}
        self.calls_per_layer = defaultdict(int)
        for node in self.nodes:
            if not node.is_input:
                self.calls_per_layer[id(node.layer)] += 1
        self.tensors = {}        # id(original tensor) -> new tensor
        self.input_grids = {}    # id(new tensor) -> the QuantizeInput whose int8 grid its values are on
        self.new_layers = {}     # id(original layer) -> new layer
        self.pending_convs = {}  # id(conv output) -> (conv node) waiting for its BN

    def build(self):
        new_inputs = []
        for tensor, layer in zip(self.model.inputs, self.model._input_layers):
            new_input = keras.Input(type_spec=tensor.type_spec, name=layer.name)
            new_inputs.append(new_input)
            quantized = self._quantize_input(new_input, layer.name)
            self.tensors[id(tensor)] = quantized
            if quantized is not new_input:
                self.input_grids[id(quantized)] = quantized.node.layer
        for node in self.nodes:
            if node.is_input:
                continue
            self._rebuild(node)
        outputs = tf.nest.map_structure(lambda t: self.tensors[id(t)], self.model._nested_outputs)
        inputs = tf.nest.pack_sequence_as(self.model._nested_inputs, new_inputs)
        return keras.Model(inputs, outputs, name=self.model.name)

    def _quantize_input(self, tensor, name):
        bits = self.policy.resolve(name).activation_bits
        if not self.full or bits is None:
            return tensor
        return QuantizeInput(q.ActivationQuantizer(bits), name=f"quantize_{name}")(tensor)

    def _rebuild(self, node):
        layer = node.layer
        if self._is_foldable_conv(node):
            self.pending_convs[id(node.outputs)] = node
            return
        if isinstance(layer, keras.layers.BatchNormalization) and len(node.keras_inputs) == 1 \
                and id(node.keras_inputs[0]) in self.pending_convs:
            conv_node = self.pending_convs.pop(id(node.keras_inputs[0]))
            self._fold(conv_node, node)
            return
        new_layer = self.new_layers.get(id(layer))
        if new_layer is None:
            new_layer = self._quantized_layer(layer, self._request(layer.name, layer, node.outputs))
            self.new_layers[id(layer)] = new_layer
        self._call(new_layer, node, node)

    def _call(self, new_layer, input_node, output_node):
        def mapped(t):
            return self.tensors[id(t)] if isinstance(t, KerasTensor) else t

        args = tf.nest.map_structure(mapped, input_node.call_args)
        kwargs = tf.nest.map_structure(mapped, input_node.call_kwargs)
        outputs = self._on_input_grid(new_layer, args, new_layer(*args, **kwargs))
        for old, new in zip(tf.nest.flatten(output_node.outputs), tf.nest.flatten(outputs)):
            self.tensors[id(old)] = new

    def _on_input_grid(self, layer, args, outputs):
        """An average pool of the quantized model input rounded onto the input's grid, as the int8
        AVERAGE_POOL_2D (which keeps its input's scale) rounds it: the input's QuantizeInput called
        again, in inference mode, so it neither moves its range nor gets a range of its own (which
        would make the converter add a requantizing op). Reshapes keep the grid. The stateless FFN
        pools its input over time; unrounded, Keras and LiteRT part on 26% of the pooled values."""
        grid = self.input_grids.get(id(args[0])) if len(args) == 1 and isinstance(args[0], KerasTensor) else None
        if grid is None or isinstance(outputs, (list, tuple)):
            return outputs
        inner = type(getattr(layer, "layer", layer))
        if inner in (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D):
            outputs = grid(outputs, training=False)
        elif inner not in (keras.layers.Reshape, keras.layers.Flatten):
            return outputs
        self.input_grids[id(outputs)] = grid
        return outputs

    def _is_foldable_conv(self, node):
        layer = node.layer
        if not self.full or type(layer) not in _FOLDABLE_CONVS.values():
            return False
        if self.calls_per_layer[id(layer)] != 1 or getattr(layer, "groups", 1) != 1:
            return False
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return False
        if getattr(layer.activation, "__name__", "") != "linear":
            return False
        output = node.outputs
        if isinstance(output, (list, tuple)) or id(output) in self.output_ids:
            return False
        users = self.consumers[id(output)]
        if len(users) != 1:
            return False
        bn = users[0].layer
        if type(bn) is not keras.layers.BatchNormalization or self.calls_per_layer[id(bn)] != 1:
            return False
        axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
        rank = len(output.shape)
        return [a % rank for a in axis] == [rank - 1] and not getattr(bn, "renorm", False)

    def _fold(self, conv_node, bn_node):
        conv, bn = conv_node.layer, bn_node.layer
        request = self._request(conv.name, bn, bn_node.outputs)
        quantizer = None
        if request.quantize_weights:
            quantizer = registry.weight_quantizer_for(request.precision,
                                                      depthwise=isinstance(conv, keras.layers.DepthwiseConv2D))
        folded = FoldedConvBN(keras.layers.serialize(conv), bn.get_config(), weight_quantizer=quantizer)
        config = registry.quantize_config_for(folded, request)
        if config is not None:
            # Built before wrapping: QuantizeWrapperV2 lists the inner layer's weights when it is
            # built, and a reloaded model builds the inner layer first (else a saved model with a
            # wrapped folded layer, e.g. the Conformer's depthwise conv before swish, did not load).
            folded.build(conv_node.keras_inputs[0].shape)
        new_layer = QuantizeWrapperV2(folded, config) if config is not None else folded
        self._call(new_layer, conv_node, bn_node)

    def _request(self, name, layer, output) -> registry.QuantizeRequest:
        precision = self.policy.resolve(name)
        quantize_output = (self.full and precision.activation_bits is not None
                           and not self._feeds_fused_activation(output))
        return registry.QuantizeRequest(precision, quantize_weights=precision.weight_bits is not None,
                                        quantize_output=quantize_output)

    def _feeds_fused_activation(self, output):
        """True when `output` goes only into a ReLU-like layer whose own output will be quantized."""
        if isinstance(output, (list, tuple)) or id(output) in self.output_ids:
            return False
        users = self.consumers[id(output)]
        if len(users) != 1 or not registry.is_fused_activation(users[0].layer):
            return False
        return self.policy.resolve(users[0].layer.name).activation_bits is not None

    def _quantized_layer(self, layer, request):
        clone = layer.__class__.from_config(layer.get_config())
        config = registry.quantize_config_for(clone, request)
        return QuantizeWrapperV2(clone, config) if config is not None else clone


# --- weights between float, stage-1 and stage-2 models ------------------------------------------
def _short_name(variable) -> str:
    return variable.name.split(":")[0].split("/")[-1]


def _named(layer_name, variables):
    """(layer_name, short name) per variable; position keys when short names repeat in a layer."""
    shorts = [_short_name(v) for v in variables]
    if len(set(shorts)) != len(shorts):
        shorts = [f"#{i}" for i in range(len(variables))]
    return [((layer_name, s), v) for s, v in zip(shorts, variables)]


def _float_entries(layer) -> List[Tuple[Tuple[str, str], tf.Variable]]:
    if isinstance(layer, FoldedConvBN):
        return layer.float_weight_keys()
    if isinstance(layer, keras.Model):
        return [entry for sub in layer.layers for entry in _float_entries(sub)]
    return _named(layer.name, layer.weights)


def _quantizer_state(wrapper) -> list:
    state = [wrapper.optimizer_step] if hasattr(wrapper, "optimizer_step") else []
    for _, _, variables in getattr(wrapper, "_weight_vars", []):
        state.extend(variables.values())
    state.extend(getattr(wrapper, "_output_quantizer_vars", {}).values())
    return state


def variable_map(model: keras.Model) -> Tuple[Dict, Dict]:
    """({float key: variable}, {quantizer key: variable}) of a float or QAT model.

    Float keys are (float layer name, weight name), e.g. ("bn0", "moving_mean"), the same for a
    float model, a stage-1 model and a stage-2 model (where conv0 and bn0 are one folded layer).
    Quantizer keys are ("quant", layer name, variable name) for range and step variables.
    """
    floats, quants = {}, {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        if isinstance(layer, QuantizeLayer):
            entries = []
        elif isinstance(layer, QuantizeWrapper) and not isinstance(inner, FoldedConvBN):
            # The wrapper re-assigns the quantized weight attributes (layer.kernel = tensor), which
            # drops those variables from the inner layer's `weights`: the wrapper holds them.
            quantizer_state = {id(v) for v in _quantizer_state(layer)}
            entries = _named(inner.name, [v for v in layer.weights if id(v) not in quantizer_state])
        else:
            entries = _float_entries(inner)
        floats.update(entries)
        owned = {id(v) for _, v in entries}
        extra = [v for v in layer.weights if id(v) not in owned]
        quants.update({("quant",) + key: v for key, v in _named(inner.name, extra)})
    return floats, quants


def transfer_weights(source: keras.Model, target: keras.Model) -> int:
    """Copy the float-side variables (and matching quantizer ranges) from `source` into `target`.

    Both may be float or QAT models (any stage) of the same architecture. Every float variable
    of `target` must exist in `source` with the same shape. Returns how many variables were copied.
    """
    source_floats, source_quants = variable_map(source)
    target_floats, target_quants = variable_map(target)
    missing = [f"{layer}/{name}" for layer, name in target_floats if (layer, name) not in source_floats]
    if missing:
        raise EdgeasrError(f"cannot transfer weights from {source.name!r} to {target.name!r}: the source has no "
                           f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    copied = 0
    for table_target, table_source, required in ((target_floats, source_floats, True),
                                                 (target_quants, source_quants, False)):
        for key, variable in table_target.items():
            if key not in table_source:
                continue
            value = table_source[key]
            if tuple(value.shape) != tuple(variable.shape):
                if not required:
                    continue
                raise EdgeasrError(f"cannot transfer {'/'.join(key)}: shape {tuple(value.shape)} in "
                                   f"{source.name!r}, {tuple(variable.shape)} in {target.name!r}")
            variable.assign(value)
            copied += 1
    return copied


def replace_weight_quantizers(model: keras.Model, choose) -> Callable[[], None]:
    """In every QuantizeWrapper, put `choose(inner_layer, position, (variable, quantizer, state))`
    in place of the quantizer of its position-th weight, where that returns something other than None;
    returns a function that puts the originals back. A TFMOT wrapper quantizes with the list it
    holds, so do this before the model is traced: a compiled function keeps what it saw."""
    replaced = []
    for layer in model.layers:
        if not isinstance(layer, QuantizeWrapper) or not layer.built:
            continue
        chosen = [choose(layer.layer, position, weight) for position, weight in enumerate(layer._weight_vars)]
        if all(new is None for new in chosen):
            continue
        replaced.append((layer, layer._weight_vars, getattr(layer.quantize_config, "weight_quantizer", None)))
        layer._weight_vars = [(variable, quantizer if new is None else new, state)
                              for (variable, quantizer, state), new in zip(layer._weight_vars, chosen)]
        if replaced[-1][2] is not None:
            layer.quantize_config.weight_quantizer = layer._weight_vars[0][1]

    def restore():
        for layer, weight_vars, config_quantizer in replaced:
            layer._weight_vars = weight_vars
            if config_quantizer is not None:
                layer.quantize_config.weight_quantizer = config_quantizer

    return restore


def adopt_weight_quantizers(trained: keras.Model, rebuilt: keras.Model) -> int:
    """Give `rebuilt` (the same layers, e.g. the model rebuilt for another input length) the weight
    quantizers `trained` was trained with; returns how many differed.

    A run's policy is re-read with today's meaning of its fields, and that meaning can change:
    Dense kernels were per tensor whatever the granularity until they followed it (per channel in
    every preset). The trained model's serialized quantizers are what its weights were trained on."""
    trained_quantizers = {layer.layer.name: [quantizer for _, quantizer, _ in layer._weight_vars]
                          for layer in trained.layers if isinstance(layer, QuantizeWrapper) and layer.built}
    differed = []

    def trained_one(inner, position, weight):
        adopted = trained_quantizers.get(inner.name, [])[position:position + 1]
        differed.extend(1 for source in adopted if source != weight[1])
        return adopted[0] if adopted else None

    replace_weight_quantizers(rebuilt, trained_one)
    return len(differed)


def stage_model(float_model: keras.Model, policy, stage: str = "full", init_from: Optional[keras.Model] = None
                ) -> keras.Model:
    """The `stage` QAT model of `float_model`, its weights taken from `init_from` when given.

    The paper's schedule:  stage1 = stage_model(float_model, policy, "weights");  train stage1;
    stage2 = stage_model(float_model, policy, "full", init_from=stage1);  train stage2;  convert.
    """
    model = quantize_model(float_model, policy, stage=stage)
    if init_from is not None and init_from is not model:
        transfer_weights(init_from, model)
    return model


def freeze_batch_norm(model: keras.Model, frozen: bool = True) -> int:
    """Switch the folded layers to (or from) moving-statistics training, e.g. for the last epochs
    of stage 2. Resets the model's compiled train function so the change takes effect. Returns
    how many layers were switched."""
    count = 0
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        if isinstance(inner, FoldedConvBN):
            inner.freeze_bn_stats = bool(frozen)
            count += 1
    model.train_function = None
    return count


# --- inspection ----------------------------------------------------------------------------------
def weight_quantizers(model: keras.Model) -> List[dict]:
    """Each fake-quantized weight: {'layer', 'variable', 'quantizer', 'effective', 'gain'} where
    `effective()` returns the weight as the layer uses it (folded, on the grid) and `gain` is the
    folded BN gain function (None for unfolded layers)."""
    found = []
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        if isinstance(inner, FoldedConvBN) and inner.weight_quantizer is not None:
            found.append({"layer": inner.conv_name, "variable": inner.kernel, "quantizer": inner.weight_quantizer,
                          "effective": inner.folded_kernel, "gain": inner.gain})
        elif isinstance(layer, QuantizeWrapper) and layer.built:
            # The wrapper's own (variable, quantizer, state) list: after a call the inner layer's
            # `kernel` attribute holds the quantized tensor of that call, not the variable.
            for variable, quantizer, _ in layer._weight_vars:
                if isinstance(quantizer, q.WeightQuantizer):
                    found.append({"layer": inner.name, "variable": variable, "quantizer": quantizer,
                                  "effective": (lambda v=variable, qz=quantizer: qz.quantize(v)), "gain": None})
    return found


def effective_weights(model: keras.Model) -> Dict[str, np.ndarray]:
    """{float layer name: the weight the layer computes with (folded and fake-quantized)}."""
    return {entry["layer"]: entry["effective"]().numpy() for entry in weight_quantizers(model)}


def activation_quantizers(model: keras.Model) -> List[str]:
    """Names of the layers that fake-quantize an activation (model input, layer outputs)."""
    return list(_activation_quantizers(model))


def activation_bits(model: keras.Model) -> Dict[str, int]:
    """{layer name: bits} of each fake-quantized activation; a QAT model file carries no policy,
    but its quantizers know their bits."""
    return {name: quantizer.bits for name, quantizer in _activation_quantizers(model).items()
            if isinstance(quantizer, q.ActivationQuantizer)}


def _activation_quantizers(model: keras.Model) -> Dict[str, object]:
    found = {}
    for layer in model.layers:
        if isinstance(layer, QuantizeLayer) and layer.quantizer is not None:
            found[layer.name] = layer.quantizer
        elif isinstance(layer, QuantizeWrapper):
            quantizers = layer.quantize_config.get_output_quantizers(layer.layer)
            if quantizers:
                found[layer.layer.name] = quantizers[0]
    return found


# --- saving and loading --------------------------------------------------------------------------
def quantize_scope():
    """Scope under which keras.models.load_model reads edgeasr QAT models."""
    return tfmot.quantization.keras.quantize_scope(q.custom_objects())


def load_model(path, compile: bool = True) -> keras.Model:
    with quantize_scope():
        return keras.models.load_model(path, compile=compile)

