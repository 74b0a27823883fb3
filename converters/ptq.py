"""Post-training quantisation with edgeasr's own quantizers, so a float model converts under any
precision policy (4-bit included) exactly as its QAT twin would.

quantize_model(float, policy, "full"), then every activation quantizer gets the range QAT would
have learned, from the calibration data: the mean over batches of the batch min / max of the float
model's tensor at that point (QAT takes the first batch's range and then a moving average of batch
ranges; BatchNormalization is folded with its moving statistics, so nothing runs in training mode
and no BN statistic or dropout is disturbed).
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf
import tf_keras as keras


def calibrate_activations(qat_model: keras.Model, float_model: keras.Model, calibration: np.ndarray,
                          batch_size: int = 32) -> int:
    """Set every activation quantizer's range from the float model's tensors on `calibration`."""
    from edgeasr.quant.qat import FoldedConvBN, QuantizeLayer, QuantizeWrapper

    targets = []   # (float tensor, quantizer variables)
    for layer in qat_model.layers:
        if isinstance(layer, QuantizeLayer) and layer.quantizer is not None:
            targets.append((float_model.inputs[0], layer.quantizer_vars))
        elif isinstance(layer, QuantizeWrapper) and getattr(layer, "_output_quantizer_vars", None):
            inner = layer.layer
            name = inner.bn_name if isinstance(inner, FoldedConvBN) else inner.name
            targets.append((float_model.get_layer(name).output, layer._output_quantizer_vars))
    if not targets:
        return 0
    probe = keras.Model(float_model.inputs, [t for t, _ in targets])
    lows, highs = [[] for _ in targets], [[] for _ in targets]
    for start in range(0, len(calibration), batch_size):
        outputs = probe(calibration[start:start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, value in enumerate(outputs):
            lows[i].append(min(float(tf.reduce_min(value)), 0.0))
            highs[i].append(max(float(tf.reduce_max(value)), 0.0))
    for (_, variables), low, high in zip(targets, lows, highs):
        variables["min_var"].assign(float(np.mean(low)))
        variables["max_var"].assign(float(np.mean(high)))
        variables["seen_var"].assign(1.0)
    return len(targets)


def post_training_quantize(float_model: keras.Model, policy, calibration: np.ndarray) -> keras.Model:
    from edgeasr.quant.qat import quantize_model

    model = quantize_model(float_model, policy, stage="full")
    calibrate_activations(model, float_model, calibration)
    return model
