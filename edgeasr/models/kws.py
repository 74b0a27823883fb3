"""Keyword-spotting models on log-mel input: DS-CNN (Hello Edge) and a stateless feed-forward net.

Both are built only from layers that TFMOT quantizes and that convert to builtin TFLite ops:
convolutions carry no bias when a BatchNormalization follows (so BN folds into them), ReLU is
its own layer right after the BN or Dense (so TFMOT's Conv-BN-ReLU / Dense-ReLU patterns match),
and the softmax is a separate layer after the `logits` Dense. Layer names are stable because
precision policies select layers by name pattern.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tf_keras as keras

from edgeasr.errors import EdgeasrError


def ds_cnn(
    input_shape,
    num_classes,
    channels,
    blocks,
    first_kernel=(10, 4),
    first_stride=(2, 2),
    dropout=0.2,
    bn_momentum=0.9,
    name="ds_cnn",
):
    """Depthwise-separable CNN of Zhang et al. 2017, "Hello Edge".

    bn_momentum is 0.9 rather than Keras' 0.99: runs here are a few hundred steps, and with
    0.99 the moving statistics still lag the fast-changing conv outputs when training ends
    (measured: 95% validation accuracy with batch statistics, 22% with the moving ones).

    Layer names: conv0/bn0/relu0, then for block i: dw{i}/bn_dw{i}/relu_dw{i} and
    pw{i}/bn_pw{i}/relu_pw{i}; then dropout, avg_pool, flatten, logits, probs.
    """
    frames, mels = _frames_and_mels(input_shape)
    features = keras.Input(shape=(frames, mels), name="features")
    x = keras.layers.Reshape((frames, mels, 1), name="add_channel")(features)
    x = _conv_bn_relu(
        keras.layers.Conv2D(channels, first_kernel, strides=first_stride, padding="same",
                            use_bias=False, name="conv0"),
        x, suffix="0", bn_momentum=bn_momentum,
    )
    for i in range(1, blocks + 1):
        x = _conv_bn_relu(
            keras.layers.DepthwiseConv2D((3, 3), padding="same", use_bias=False, name=f"dw{i}"),
            x, suffix=f"_dw{i}", bn_momentum=bn_momentum,
        )
        x = _conv_bn_relu(
            keras.layers.Conv2D(channels, (1, 1), use_bias=False, name=f"pw{i}"),
            x, suffix=f"_pw{i}", bn_momentum=bn_momentum,
        )
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = _average_over_map(x)
    return _classifier_head(features, x, num_classes, name)


def ffn_stateless(
    input_shape,
    num_classes,
    units=160,
    layers=3,
    time_pool=3,
    dropout=0.1,
    name="ffn_stateless",
):
    """Stateless streaming feed-forward KWS ("Sub 8-bit quantization of streaming keyword
    spotting models for embedded chipsets", Amazon).

    The paper stacks neighbouring frames into one window; here the window is summarised by
    averaging every `time_pool` frames (98x40 -> 32x40 = 1280 inputs), which keeps the first
    Dense at ~205k weights and converts to a single AVERAGE_POOL_2D.
    Layer names: add_channel, time_pool, flatten, dense{i}/relu{i}/dropout{i}, logits, probs.
    """
    frames, mels = _frames_and_mels(input_shape)
    if time_pool < 1 or time_pool > frames:
        raise EdgeasrError(f"ffn_stateless: time_pool must be in 1..{frames}, got {time_pool}")
    features = keras.Input(shape=(frames, mels), name="features")
    x = keras.layers.Reshape((frames, mels, 1), name="add_channel")(features)
    x = keras.layers.AveragePooling2D((time_pool, 1), strides=(time_pool, 1), padding="valid",
                                      name="time_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(1, layers + 1):
        x = keras.layers.Dense(units, name=f"dense{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    return _classifier_head(features, x, num_classes, name)


def _frames_and_mels(input_shape):
    if len(input_shape) != 2:
        raise EdgeasrError(f"input_shape must be (frames, mels), got {tuple(input_shape)}")
    frames, mels = (int(d) for d in input_shape)
    return frames, mels


def _conv_bn_relu(conv_layer, x, suffix, bn_momentum):
    """Conv (no bias) -> BN -> ReLU, the pattern TFMOT folds into one quantized conv."""
    x = conv_layer(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"bn{suffix}")(x)
    return keras.layers.ReLU(name=f"relu{suffix}")(x)


def _average_over_map(x):
    """Global average pooling as one AveragePooling2D over the whole map: AVERAGE_POOL_2D in
    TFLite, which every int8 kernel and delegate supports."""
    height, width = int(x.shape[1]), int(x.shape[2])
    x = keras.layers.AveragePooling2D((height, width), name="avg_pool")(x)
    return keras.layers.Flatten(name="flatten")(x)


def _classifier_head(inputs, x, num_classes, name):
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    probs = keras.layers.Softmax(name="probs")(logits)
    return keras.Model(inputs, probs, name=name)
