"""MRACos: the Multi-Regional Absolute Cosine regulariser of S8BQAT (Zhen et al., "Sub-8-bit
quantization aware training for 8-bit neural network accelerator with on-device speech
recognition", 2022), which pulls weights toward their nearest quantization centroid.

For a weight at grid position x (the weight in units of its quantizer's grid step, see
WeightQuantizer.grid_position) the penalty is 1 - |cos(pi * x)|: zero on a centroid (integer x),
largest half-way between two, and its gradient points to the nearest centroid. The paper's
centroids come from a Lloyd-Max fit, so its regions between centroids have different widths
("multi-regional"); here the centroids are each quantizer's own n-bit grid, uniform in the
quantizer's transformed domain (for the tanh quantizer that is non-uniform in the raw weight),
so every region is one grid step wide. The loss is the penalty averaged over all fake-quantized
weights of the model, times `weight`; weight 0 (the default) turns it off.

    add_mracos(qat_model, weight=1e-3)               # Keras fit: adds it as a model loss
    loss = task_loss + mracos_loss(qat_model, 1e-3)  # a custom training step
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import math

import tensorflow as tf
import tf_keras as keras

from edgeasr.errors import EdgeasrError

DEFAULT_WEIGHT = 0.0


def mracos_penalty(model: keras.Model) -> tf.Tensor:
    """Mean of 1 - |cos(pi * grid position)| over every fake-quantized weight (0 when none)."""
    from edgeasr.quant.qat import weight_quantizers

    total, count = tf.constant(0.0), 0
    for entry in weight_quantizers(model):
        gain = entry["gain"]() if entry["gain"] is not None else None
        position = entry["quantizer"].grid_position(entry["variable"], gain)
        total += tf.reduce_sum(1.0 - tf.abs(tf.cos(math.pi * position)))
        count += int(entry["variable"].shape.num_elements())
    return total / max(count, 1)


def mracos_loss(model: keras.Model, weight: float = DEFAULT_WEIGHT) -> tf.Tensor:
    weight = _check_weight(weight)
    if weight == 0.0:
        return tf.constant(0.0)
    return weight * mracos_penalty(model)


def add_mracos(model: keras.Model, weight: float = DEFAULT_WEIGHT) -> bool:
    """Add the regulariser to `model`'s losses (not saved with the model); False when weight is 0."""
    weight = _check_weight(weight)
    if weight == 0.0:
        return False
    model.add_loss(lambda: mracos_loss(model, weight))
    return True


def _check_weight(weight) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise EdgeasrError(f"MRACos weight must be a number >= 0, got {weight!r}") from None
    if not weight >= 0.0 or math.isinf(weight):
        raise EdgeasrError(f"MRACos weight must be a number >= 0, got {weight!r}")
    return weight
