"""The stock TFLite converter, called the way edgeasr needs it.

Conversion runs from a concrete function with a fixed batch of 1: an open batch adds
SHAPE/STRIDED_SLICE/PACK ops and sent a Dense on a 3-D input down the Tensordot path, into an
INT8 container with an unfused bias.

A Dense whose weight quantizer is per channel is converted with its quantized kernel baked in as a
constant: the converter cannot carry a per-channel fake-quant through the transpose it puts on a
FULLY_CONNECTED weight ("'tfl.transpose' op has mismatched quantized axes of input and output").
Baked, every value already lies on its channel's n-bit grid; the converter quantizes the constant
per channel (int8, scale max|w| / 127), and the INT4 pass (converters/int4.py) finds the n-bit
levels and their step again, so the file holds exactly the weights Keras computed with.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import contextlib

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edgeasr.errors import EdgeasrError
from edgeasr.quant.qat import replace_weight_quantizers

CALIBRATION_EXAMPLES = 300


def _concrete(model: keras.Model):
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    return tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)


class _Baked:
    """Stands in for a weight quantizer during conversion: always the quantized value it was given."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def __call__(self, inputs, training, weights, **kwargs):
        return tf.constant(self.value)


@contextlib.contextmanager
def per_channel_dense_baked(model: keras.Model):
    """The model with every per-channel Dense weight quantizer replaced by its output, restored after."""
    def baked(inner, position, weight):
        variable, quantizer, state = weight
        if isinstance(inner, keras.layers.Dense) and getattr(quantizer, "per_channel", False):
            return _Baked(quantizer(variable, False, state).numpy())
        return None

    restore = replace_weight_quantizers(model, baked)
    try:
        yield model
    finally:
        restore()


def float_tflite(model: keras.Model) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete(model)], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def float_tflite_bytes(model: keras.Model) -> int:
    """Size of the float TFLite of `model`'s architecture with every weight distinct, as trained
    weights are: the reference of every "x smaller than float". The converter stores identical
    constant buffers once, so an untrained model (zero biases, unit LayerNorm and BatchNorm scales)
    converts smaller than any trained one: DS-CNN-S 92,856 against 96,300 bytes, Conformer xs
    3,956,368 against 4,003,252, the trained models' sizes exactly. `model` is left untouched."""
    twin = keras.models.clone_model(model)
    rng = np.random.default_rng(0)
    twin.set_weights([rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype) for weight in model.get_weights()])
    return len(float_tflite(twin))


def int8_tflite(model: keras.Model, calibration: np.ndarray, io: str = "int8", int16_activations: bool = False
                ) -> bytes:
    """The converter's fully-integer output (before the checks and the INT4 pass). Float ops it
    cannot quantise are let through (TFLITE_BUILTINS as a fallback) so the check can name them.
    int16_activations: the 16x8 mode (int16 activations, int8 weights, int64 biases)."""
    examples = np.asarray(calibration, np.float32)[:CALIBRATION_EXAMPLES]

    def representative_dataset():
        for example in examples:
            yield [example[None, ...]]

    with per_channel_dense_baked(model):
        function = _concrete(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    integer_set = (tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                   if int16_activations else tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
    converter.target_spec.supported_ops = [integer_set, tf.lite.OpsSet.TFLITE_BUILTINS]
    if io == "int8":
        io_type = tf.int16 if int16_activations else tf.int8
        converter.inference_input_type = converter.inference_output_type = io_type
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and others with long logs
        lines = [line for line in str(exc).splitlines() if "error" in line.lower()] or str(exc).splitlines()
        raise EdgeasrError(f"the TFLite converter failed: {' | '.join(lines[-3:])[:800]}") from exc
