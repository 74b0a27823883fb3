"""Weight and activation quantizers for quantization-aware training (TFMOT `Quantizer`s).

Weights. Every weight quantizer works in two steps:

    transform(w)  float values whose largest magnitude (per output channel, or per tensor)
                  is the top of the grid; no rounding happens here;
    lock(x)       ONE `tf.quantization.fake_quant_with_min_max_vars[_per_channel]` op with
                  num_bits=n, narrow_range=True and min=-m, max=m, m = max|x| (no gradient through m).

The fake-quant op does the rounding, its gradient is the straight-through estimator (identity
inside [-m, m], and every value is inside), and it is the op the TFLite converter turns into an
n-bit weight tensor. Its grid is k * m / (2^(n-1) - 1) with integer |k| <= 2^(n-1) - 1: at most
2^n - 1 symmetric levels per channel, and the largest weight sits exactly on the top level.
m is computed from the weight on every call (no stored range), so a weight copied in from a
float checkpoint is on the grid at once, in training and inference alike.

A convolution with a folded BatchNormalization passes its per-channel gain to `quantize(w, gain)`,
which locks transform(w) * gain. Per channel, locking commutes with a per-channel gain, so the
folded weight is exactly the quantized kernel times the gain, on its own n-bit grid.

Linear: transform(w) = w (symmetric, narrow range).
Tanh (stage 1 of "Sub 8-bit quantization of streaming keyword spotting models"):
    u = tanh(w) / max|tanh(w)|            in [-1, 1]
    transform(w) = s * u,   s = rms(w) / rms(u)
s keeps the layer's output scale: for inputs that are uncorrelated with the weights the output
variance of a dot product is proportional to the mean square of its weights, and s makes the
transformed weights' mean square equal the float weights' (per channel or per tensor, as the
quantizer is). For small weights tanh is nearly linear, u ~ w / max|w| and s ~ max|w|, so the
tanh quantizer then agrees with the linear one; for large weights it compresses the outliers
while the RMS, and with it the next layer's input range, stays put. The gradient flows through
tanh (d/dw = s * (1 - tanh(w)^2) / max|tanh(w)| inside the STE); max|tanh| and s are treated
as constants in the backward pass.

Depthwise kernels (kh, kw, in, multiplier) are quantized per output channel (in * multiplier):
with depthwise=True the quantizer reshapes them to (kh, kw, 1, in * multiplier) around the lock,
the layout the converter maps to DEPTHWISE_CONV_2D's quantized dimension 3.

Activations: `ActivationQuantizer(bits=8)` is asymmetric 8-bit with a moving-average range
(min/max variables, initialised from the first training batch rather than TFMOT's fixed
[-6, 6] so short fine-tuning runs are not dominated by the initial range); bits=16 is the
symmetric narrow-range 16-bit variant for layers that need more range (TFLite 16x8 mode).
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from edgeasr.errors import EdgeasrError

Quantizer = tfmot.quantization.keras.quantizers.Quantizer

WEIGHT_BITS = range(2, 9)
ACTIVATION_BITS = (8, 16)
# A channel whose weights are all zero still needs a non-zero range for the fake-quant op.
_MIN_RANGE = 1e-8


def top_level(bits: int) -> int:
    """The largest integer level of the symmetric narrow-range n-bit grid: 2^(n-1) - 1."""
    return 2 ** (int(bits) - 1) - 1


def _check_weight_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in WEIGHT_BITS:
        raise EdgeasrError(f"weight bits must be an integer from 2 to 8, got {bits!r}")


class WeightQuantizer(Quantizer):
    """Symmetric narrow-range n-bit weight quantizer; subclasses define `transform`."""

    transform_name = None

    def __init__(self, bits=8, per_channel=True, depthwise=False):
        _check_weight_bits(bits)
        self.bits = int(bits)
        self.per_channel = bool(per_channel)
        self.depthwise = bool(depthwise)

    # --- the Quantizer interface -------------------------------------------------------------
    def build(self, tensor_shape, name, layer):
        return {}  # no state: the range is recomputed from the weight on every call

    def __call__(self, inputs, training, weights, **kwargs):
        return self.quantize(inputs)

    def get_config(self):
        return {"bits": self.bits, "per_channel": self.per_channel, "depthwise": self.depthwise}

    # --- the quantization itself -------------------------------------------------------------
    def quantize(self, weight, gain=None):
        """lock(transform(weight) * gain); gain (one value per output channel) may be None."""
        shape = tf.shape(weight)
        x = self._channels_last(weight)
        x = self.transform(x)
        if gain is not None:
            x = x * tf.cast(gain, x.dtype)
        x = self.lock(x)
        return tf.reshape(x, shape) if self.depthwise else x

    def grid_position(self, weight, gain=None):
        """transform(weight) * gain in units of the grid step (integers are the grid levels),
        differentiable like `quantize` (used by the MRACos regulariser)."""
        x = self.transform(self._channels_last(weight))
        if gain is not None:
            x = x * tf.cast(gain, x.dtype)
        m = tf.stop_gradient(tf.maximum(self._reduce(tf.abs(x), tf.reduce_max), _MIN_RANGE))
        return x * (top_level(self.bits) / m)

    def transform(self, weight):
        raise NotImplementedError

    def lock(self, x):
        """The one fake-quant op: symmetric range from max|x|, n bits, narrow range."""
        m = tf.stop_gradient(tf.maximum(self._reduce(tf.abs(x), tf.reduce_max), _MIN_RANGE))
        if self._by_channel(x):
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, -m, m, num_bits=self.bits, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_vars(x, -m, m, num_bits=self.bits, narrow_range=True)

    def _channels_last(self, weight):
        if not self.depthwise:
            return weight
        static = weight.shape
        return tf.reshape(weight, (*static[:-2], 1, static[-2] * static[-1]))

    def _reduce(self, x, reduce_fn):
        """Reduce over everything but the output channel (per channel) or over everything."""
        if self._by_channel(x):
            return reduce_fn(x, axis=list(range(len(x.shape) - 1)))
        return reduce_fn(x)

    def _by_channel(self, x) -> bool:
        """Per channel needs a channel axis besides the values: a 1-D weight is one channel (per
        element, every value would be the top of its own grid and pass unquantized)."""
        return self.per_channel and len(x.shape) >= 2

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        return f"{type(self).__name__}(bits={self.bits}, per_channel={self.per_channel}, depthwise={self.depthwise})"


class LinearWeightQuantizer(WeightQuantizer):
    """Symmetric, narrow-range, uniform: w -> k * max|w| / (2^(n-1) - 1)."""

    transform_name = "linear"

    def transform(self, weight):
        return weight


class TanhWeightQuantizer(WeightQuantizer):
    """tanh(w) normalised into [-1, 1], scaled by rms(w)/rms(u) to keep the output scale, then locked."""

    transform_name = "tanh"

    def transform(self, weight):
        t = tf.tanh(weight)
        peak = tf.stop_gradient(self._reduce(tf.abs(t), tf.reduce_max))
        u = tf.math.divide_no_nan(t, peak)
        rms_w = tf.sqrt(self._reduce(tf.square(weight), tf.reduce_mean))
        rms_u = tf.sqrt(self._reduce(tf.square(u), tf.reduce_mean))
        scale = tf.stop_gradient(tf.math.divide_no_nan(rms_w, rms_u))
        # An all-zero channel (a zero-initialised layer) takes the small-weight limit, tanh(w) ~ w,
        # so its gradient is 1, not the 0 that divide_no_nan gives: it could never leave zero.
        return tf.where(tf.equal(peak, 0.0), t, u * scale)


WEIGHT_TRANSFORMS = {"linear": LinearWeightQuantizer, "tanh": TanhWeightQuantizer}


def weight_quantizer(transform: str, bits: int, per_channel: bool = True, depthwise: bool = False) -> WeightQuantizer:
    if transform not in WEIGHT_TRANSFORMS:
        raise EdgeasrError(f"unknown weight transform {transform!r}; known: {', '.join(WEIGHT_TRANSFORMS)}")
    return WEIGHT_TRANSFORMS[transform](bits=bits, per_channel=per_channel, depthwise=depthwise)


class ActivationQuantizer(Quantizer):
    """Per-tensor activation quantizer with a moving-average range.

    bits=8: asymmetric [min, max] (TFLite int8 activations, zero point free).
    bits=16: symmetric, narrow range (TFLite int16 activations have zero point 0).
    The first training batch sets the range; later batches move it by `1 - decay`.

    Converter behaviour measured with TF 2.21: 16-bit activations on some layers of an int8 model
    come out int8 (no INT16 tensor in the file, DS-CNN-S and the FFN) or fail (on `logits`); an
    all-16-bit QAT model does not convert in the 16x8 mode ("Quantization to 16x8-bit not yet
    supported for op: 'DEQUANTIZE'", or a DEPTHWISE_CONV_2D with an int32 bias). Only a float model
    converted post-training with 16 bits everywhere gives int16 activations, so edgeasr refuses the
    rest (`policy.check_16bit_activations`); this quantizer serves that post-training path.
    """

    def __init__(self, bits=8, decay=0.99):
        if bits not in ACTIVATION_BITS:
            raise EdgeasrError(f"activation bits must be 8 or 16, got {bits!r}")
        if not 0.0 <= float(decay) < 1.0:
            raise EdgeasrError(f"activation range decay must be in [0, 1), got {decay!r}")
        self.bits = int(bits)
        self.decay = float(decay)

    @property
    def symmetric(self):
        return self.bits == 16

    def build(self, tensor_shape, name, layer):
        def variable(suffix, value, dtype=tf.float32):
            return layer.add_weight(f"{name}_{suffix}", shape=(), dtype=dtype, trainable=False,
                                    initializer=keras.initializers.Constant(value))

        return {"min_var": variable("min", -6.0), "max_var": variable("max", 6.0),
                "seen_var": variable("seen", 0.0)}

    def __call__(self, inputs, training, weights, **kwargs):
        min_var, max_var = weights["min_var"], weights["max_var"]
        if training:
            low, high = self._batch_range(inputs)
            first = tf.equal(weights["seen_var"], 0.0)
            new_min = tf.where(first, low, min_var * self.decay + low * (1.0 - self.decay))
            new_max = tf.where(first, high, max_var * self.decay + high * (1.0 - self.decay))
            min_var.assign(new_min)
            max_var.assign(new_max)
            weights["seen_var"].assign(1.0)
            low, high = new_min, new_max
        else:
            low, high = min_var, max_var
        if self.symmetric:
            bound = tf.maximum(-low, high)
            low, high = -bound, bound
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, low, high, num_bits=self.bits, narrow_range=self.symmetric)

    def _batch_range(self, inputs):
        low = tf.stop_gradient(tf.minimum(tf.reduce_min(inputs), 0.0))
        high = tf.stop_gradient(tf.maximum(tf.reduce_max(inputs), 0.0))
        if self.symmetric:
            bound = tf.maximum(-low, high)
            return -bound, bound
        return low, high

    def get_config(self):
        return {"bits": self.bits, "decay": self.decay}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((type(self).__name__, self.bits, self.decay))

    def __repr__(self):
        return f"ActivationQuantizer(bits={self.bits}, decay={self.decay})"


def custom_objects() -> dict:
    """Every class a saved edgeasr QAT model needs to load, TFMOT's wrappers included.

    Use as `keras.models.load_model(path, custom_objects=custom_objects())`, or with
    `edgeasr.quant.qat.quantize_scope()`.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_layer, quantize_wrapper)

    from edgeasr.quant import qat, registry

    objects = {
        "QuantizeWrapper": quantize_wrapper.QuantizeWrapper,
        "QuantizeWrapperV2": quantize_wrapper.QuantizeWrapperV2,
        "QuantizeLayer": quantize_layer.QuantizeLayer,
        "WeightQuantizer": WeightQuantizer,
        "LinearWeightQuantizer": LinearWeightQuantizer,
        "TanhWeightQuantizer": TanhWeightQuantizer,
        "ActivationQuantizer": ActivationQuantizer,
    }
    objects.update(registry.config_classes())
    objects.update(qat.layer_classes())
    return objects
