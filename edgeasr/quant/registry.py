"""Quantize configs per layer class: what quantize_model does with each layer.

A factory is registered per layer class (exact class, not subclasses: a subclass may compute
something else) and called as `factory(layer, request) -> QuantizeConfig | None`:

    request.precision         the layer's LayerPrecision from the policy
    request.quantize_weights  False for float weights (weight_bits None)
    request.quantize_output   False in stage "weights", for float activations, and when the
                              output feeds straight into a ReLU that TFLite fuses into this op
                              (the ReLU's output is quantized instead). This matters for
                              conversion: with a fake-quant between a Dense and its ReLU, the
                              converter ignored the NEXT Dense's weight fake-quant and re-quantized
                              its weights as per-channel INT8 (24 levels, not INT4).

None leaves the layer as it is (not wrapped). A layer whose class has no factory makes
quantize_model fail with the layer's name and class. Other model families add their own
layers with `register_quantize_config(LayerClass, factory)`.

What the built-in factories do (the converter needs a fake-quant on each op's input for the
QAT weight ranges to be used, and computes the rest from the representative dataset):
    Conv2D, DepthwiseConv2D, Dense      weights (policy bits and transform), output (not after a
                                        fused sigmoid/tanh/softmax: a range of its own there made
                                        the converter add a requantizing QUANTIZE op)
    FoldedConvBN (qat.py)               output (the folded layer quantizes its own weight)
    ReLU, LeakyReLU, Activation         output (not for linear/softmax/sigmoid/tanh: TFLite
                                        fixes those output scales itself)
    Add, Concatenate, Average/Multiply  output
    GlobalAveragePooling (MEAN)         output
    BatchNormalization (not folded)     output
    Softmax, Dropout, Flatten, Reshape,
    Permute, ZeroPadding, Cropping,
    MaxPooling, GlobalMaxPooling,
    AveragePooling                      nothing: they keep the scale of their input (int8
                                        AVERAGE_POOL_2D needs equal input and output scales:
                                        a fake-quant on its output made the converter add a
                                        requantizing QUANTIZE op), and int8 SOFTMAX has the
                                        fixed output scale 1/256
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import utils as tfmot_utils

from edgeasr.errors import EdgeasrError
from edgeasr.quant import quantizers as q
from edgeasr.quant.policy import LayerPrecision

QuantizeConfig = tfmot.quantization.keras.QuantizeConfig
layers = keras.layers


@dataclass(frozen=True)
class QuantizeRequest:
    precision: LayerPrecision
    quantize_weights: bool = True
    quantize_output: bool = True


Factory = Callable[[keras.layers.Layer, QuantizeRequest], Optional[QuantizeConfig]]

_FACTORIES: Dict[type, Factory] = {}

# Modules that register configs for other model families' layers, imported on first lookup
# (they import their models, which must not be imported by this module's import).
_CONFIG_MODULES = ("edgeasr.quant.conformer_configs",)
_config_modules_loaded = False


def _load_config_modules() -> None:
    global _config_modules_loaded
    if not _config_modules_loaded:
        _config_modules_loaded = True
        for module in _CONFIG_MODULES:
            importlib.import_module(module)


def register_quantize_config(layer_class: type, factory: Factory, replace: bool = False) -> None:
    if layer_class in _FACTORIES and _FACTORIES[layer_class] is not factory and not replace:
        raise ValueError(f"layer class {layer_class.__name__} already has a quantize config factory")
    _FACTORIES[layer_class] = factory


def is_supported(layer: keras.layers.Layer) -> bool:
    _load_config_modules()
    return type(layer) in _FACTORIES


def check_supported(layer: keras.layers.Layer) -> None:
    if not is_supported(layer):
        raise EdgeasrError(
            f"layer {layer.name!r} ({type(layer).__name__}) cannot be quantized: no quantize config is "
            f"registered for {type(layer).__name__} (see edgeasr.quant.registry.register_quantize_config)")


def quantize_config_for(layer: keras.layers.Layer, request: QuantizeRequest) -> Optional[QuantizeConfig]:
    check_supported(layer)
    return _FACTORIES[type(layer)](layer, request)


def supported_classes() -> list:
    _load_config_modules()
    return sorted(_FACTORIES, key=lambda c: c.__name__)


# --- quantizers from a precision ---------------------------------------------------------------
def weight_quantizer_for(precision: LayerPrecision, depthwise: bool = False) -> Optional[q.WeightQuantizer]:
    if precision.weight_bits is None:
        return None
    per_channel = precision.granularity == "per-channel"
    return q.weight_quantizer(precision.weight_transform, precision.weight_bits, per_channel, depthwise=depthwise)


def output_quantizer_for(precision: LayerPrecision) -> Optional[q.ActivationQuantizer]:
    if precision.activation_bits is None:
        return None
    return q.ActivationQuantizer(bits=precision.activation_bits)


# --- the one QuantizeConfig class ----------------------------------------------------------------
class LayerQuantizeConfig(QuantizeConfig):
    """Quantize the named weight attributes with one weight quantizer, and/or the layer's output."""

    def __init__(self, weight_attrs: Sequence[str] = (), weight_quantizer=None, output_quantizer=None):
        self.weight_attrs = list(weight_attrs) if weight_quantizer is not None else []
        self.weight_quantizer = weight_quantizer
        self.output_quantizer = output_quantizer

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, attr), self.weight_quantizer) for attr in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(self.weight_attrs):
            raise ValueError(f"{layer.name}: expected {len(self.weight_attrs)} quantized weights, "
                             f"got {len(quantize_weights)}")
        for attr, weight in zip(self.weight_attrs, quantize_weights):
            setattr(layer, attr, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.output_quantizer] if self.output_quantizer is not None else []

    def get_config(self):
        return {
            "weight_attrs": list(self.weight_attrs),
            "weight_quantizer": serialize_quantizer(self.weight_quantizer),
            "output_quantizer": serialize_quantizer(self.output_quantizer),
        }

    @classmethod
    def from_config(cls, config):
        return cls(config.get("weight_attrs", ()),
                   deserialize_quantizer(config.get("weight_quantizer")),
                   deserialize_quantizer(config.get("output_quantizer")))

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return (f"LayerQuantizeConfig(weight_attrs={self.weight_attrs}, weight_quantizer={self.weight_quantizer!r}, "
                f"output_quantizer={self.output_quantizer!r})")


def config_classes() -> dict:
    return {"LayerQuantizeConfig": LayerQuantizeConfig}


def _quantizer_classes() -> dict:
    classes = {c.__name__: c for c in (q.WeightQuantizer, q.LinearWeightQuantizer, q.TanhWeightQuantizer,
                                       q.ActivationQuantizer)}
    tfmot_quantizers = tfmot.quantization.keras.quantizers
    for name in ("LastValueQuantizer", "MovingAverageQuantizer", "AllValuesQuantizer", "FixedQuantizer"):
        if hasattr(tfmot_quantizers, name):
            classes[name] = getattr(tfmot_quantizers, name)
    return classes


def serialize_quantizer(quantizer) -> Optional[dict]:
    if quantizer is None:
        return None
    return tfmot_utils.serialize_keras_object(quantizer)


def deserialize_quantizer(config):
    if config is None or isinstance(config, q.Quantizer):
        return config
    classes = _quantizer_classes()
    if config.get("class_name") in classes:
        return classes[config["class_name"]].from_config(config.get("config", {}))
    return tfmot_utils.deserialize_keras_object(config)  # a quantizer in the caller's custom-object scope


# --- built-in factories ------------------------------------------------------------------------
def weighted_factory(weight_attr: str, depthwise: bool = False) -> Factory:
    """Factory for a layer with one kernel: quantize it (policy transform/bits) and the output."""

    def factory(layer, request):
        weights = weight_quantizer_for(request.precision, depthwise) if request.quantize_weights else None
        fixed_scale = _activation_name(layer) in _FIXED_SCALE_ACTIVATIONS[1:]    # a fused sigmoid, tanh, softmax
        output = output_quantizer_for(request.precision) if request.quantize_output and not fixed_scale else None
        if weights is None and output is None:
            return None
        return LayerQuantizeConfig([weight_attr], weights, output)

    return factory


def conv1d_factory(layer, request):
    """Conv1D: the converter lowers it to a CONV_2D on a reshaped kernel, and fails on a per-channel
    fake-quant's 3-D scale axis (a 'tfl.reshape' type error naming no layer)."""
    if request.quantize_weights and request.precision.granularity == "per-channel":
        raise EdgeasrError(f"layer {layer.name!r} (Conv1D): TFLite's converter cannot quantize a Conv1D kernel per "
                           f"channel; give it a per-tensor rule in a policy JSON (\"granularity\": \"per-tensor\"), "
                           f"or build the model with Conv2D and a (k, 1) kernel")
    return weighted_factory("kernel")(layer, request)


def output_factory(layer, request):
    """Factory for a layer without weights whose output needs its own range."""
    output = output_quantizer_for(request.precision) if request.quantize_output else None
    return LayerQuantizeConfig([], None, output) if output is not None else None


def passthrough_factory(layer, request):
    """Factory for layers that move or drop values and keep their input's scale."""
    return None


# Activations whose int8 TFLite kernels fix the output scale themselves.
_FIXED_SCALE_ACTIVATIONS = ("linear", "softmax", "sigmoid", "tanh")
# Activations the converter fuses into a preceding CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED.
_FUSED_ACTIVATIONS = ("relu", "relu6")


def _activation_name(layer) -> str:
    return getattr(layer.activation, "__name__", str(layer.activation))


def activation_layer_factory(layer, request):
    name = _activation_name(layer)
    if name in _FIXED_SCALE_ACTIVATIONS:
        return None
    if name not in ("relu", "relu6", "swish", "silu", "gelu", "hard_sigmoid", "hard_swish", "leaky_relu"):
        raise EdgeasrError(f"layer {layer.name!r} (Activation): activation {name!r} has no int8 TFLite kernel here")
    return output_factory(layer, request)


def is_fused_activation(layer) -> bool:
    """True for a layer TFLite fuses into the conv/FC that feeds it (ReLU, ReLU6)."""
    if type(layer) is layers.ReLU:
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
        max_value = layer.max_value
        return slope == 0.0 and threshold == 0.0 and (max_value is None or float(max_value) == 6.0)
    if type(layer) is layers.Activation:
        return _activation_name(layer) in _FUSED_ACTIVATIONS
    return False


def _register_builtins():
    register_quantize_config(layers.Conv2D, weighted_factory("kernel"))
    register_quantize_config(layers.Conv1D, conv1d_factory)
    register_quantize_config(layers.DepthwiseConv2D, weighted_factory("depthwise_kernel", depthwise=True))
    register_quantize_config(layers.Dense, weighted_factory("kernel"))
    for cls in (layers.ReLU, layers.LeakyReLU, layers.Add, layers.Subtract, layers.Multiply, layers.Average,
                layers.Concatenate, layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
                layers.BatchNormalization):
        register_quantize_config(cls, output_factory)
    register_quantize_config(layers.Activation, activation_layer_factory)
    for cls in (layers.Softmax, layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D,
                layers.GaussianNoise, layers.ActivityRegularization, layers.Flatten, layers.Reshape,
                layers.Permute, layers.ZeroPadding1D, layers.ZeroPadding2D, layers.Cropping1D, layers.Cropping2D,
                layers.MaxPooling1D, layers.MaxPooling2D, layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D,
                layers.AveragePooling1D, layers.AveragePooling2D):
        register_quantize_config(cls, passthrough_factory)


_register_builtins()
