"""Streaming Conformer-CTC (Gulati et al. 2020) in tf_keras, built for fully-integer LiteRT.

    x (B, T, num_mels) log-mel frames, 10 ms hop
    subsampling ×4: two Conv2D 3x3 stride 2 + ReLU (causal in time), Dense to d_model
    N blocks: ½ feed-forward, chunked self-attention, convolution module, ½ feed-forward, norm
    logits: Dense(vocab_size), index 0 is the CTC blank

Streaming. Output frame t belongs to chunk t // chunk_frames and attends to the frames of its
own chunk and of the `left_chunks` chunks before it, never to a later chunk; the depthwise
convolution and the subsampling are causal (left padding only). So appending frames (or
padding) changes no output before the last chunk of the original input, and a chunk size chosen
at inference is a rebuild with another chunk_frames and the same weights (no weight depends on
it). No positional encoding: an absolute one would make outputs depend on where a window
starts; the causal convolutions give the attention its sense of order.

Only layers that convert to LiteRT builtins: every projection (attention, feed-forward,
pointwise convolutions, GLU halves) is a Dense, so it becomes FULLY_CONNECTED, the op that
XNNPACK runs with INT4 weights; heads are Reshape + Permute (RESHAPE, TRANSPOSE); attention
products are BATCH_MATMUL (`MatMul`); the mask is a constant multiply and add, a row maximum, a
subtract and a floor (`ChunkMask`);
the depthwise convolution is a DepthwiseConv2D on (T, 1, C) followed by BatchNormalization,
which quantize_model folds. `LayerNorm` is written from mean, subtract, multiply and rsqrt, each
with an int8 kernel. tf_keras' LayerNormalization converts to integer ops too (measured in
docs/conformer_conversion.md); the own layer exists for QAT: its weights are made where TFMOT's
wrapper can see them, so a saved QAT Conformer loads (see LayerNorm).

Layer names (policies select layers by pattern): subsample_conv1/2, subsample_dense;
block{i}_ff{1,2}_{norm,dense1,dense2}, block{i}_mhsa_{norm,query,key,value,output},
block{i}_conv_{norm,glu_a,glu_gate,dw,bn,pw}, block{i}_norm; logits.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import math
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edgeasr.errors import EdgeasrError
from edgeasr.models.registry import register_model

SUBSAMPLING = 4
# Masked attention scores become this, relative to the row's highest real score (which becomes 0):
# each masked key gets under e^-16 of that key's weight, and the scores the softmax takes span
# [-16, 0] in int8. A fixed -16 without the shift leaked: a query whose real scores all lay below
# it gave its weight to the masked keys; one block of the trained xs put 7.4% of its weight there
# (README).
MASKED_SCORE = -16.0
# Masked keys score this while the row maximum is taken. The maximum is that of the real scores
# (and the masked keys end at or below MASKED_SCORE) while the row's highest real score is above
# ROW_MAX_FILL - MASKED_SCORE = -48; the trained xs's lowest is about -20 (docs/attention_leak.md).
ROW_MAX_FILL = -64.0


@dataclass
class ConformerConfig:
    d_model: int = 96
    num_blocks: int = 4
    num_heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 15
    subsampling_channels: int = 64
    chunk_frames: int = 8          # attention chunk in output frames (×4 input frames, 40 ms each)
    left_chunks: int = 4           # chunks of left context each frame may attend to
    dropout: float = 0.1
    num_mels: int = 40


_SIZES = {
    "tiny": ConformerConfig(d_model=32, num_blocks=2, num_heads=2, ff_mult=2, conv_kernel=5,
                            subsampling_channels=8, chunk_frames=4, left_chunks=2),
    "xs": ConformerConfig(d_model=96, num_blocks=4, num_heads=4, ff_mult=4, conv_kernel=15,
                          subsampling_channels=64),
    "s": ConformerConfig(d_model=256, num_blocks=6, num_heads=4, ff_mult=4, conv_kernel=15,
                         subsampling_channels=128),
}


def conformer_sizes():
    return list(_SIZES)


def conformer_config(size: str, **overrides) -> ConformerConfig:
    if size not in _SIZES:
        raise EdgeasrError(f"unknown Conformer size {size!r}; known sizes: {', '.join(_SIZES)}")
    return replace(_SIZES[size], **overrides)


def output_frames(frames: int) -> int:
    """Frames out of the ×4 subsampling for `frames` input frames: ceil(ceil(T / 2) / 2)."""
    return -(-(-(-int(frames) // 2)) // 2)


def chunk_mask(frames: int, chunk_frames: int, left_chunks: int) -> np.ndarray:
    """(frames, frames) 0/1 float: 1 where query frame i may attend to key frame j."""
    chunk = np.arange(frames) // int(chunk_frames)
    query, key = chunk[:, None], chunk[None, :]
    return ((key <= query) & (key >= query - int(left_chunks))).astype(np.float32)


# --- layers ----------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="edgeasr")
class LayerNorm(keras.layers.Layer):
    """LayerNormalization over the last axis from primitives that all have int8 kernels:
    MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD.

    gamma and beta are created in __init__ when `channels` is given (the model builder gives
    it): TFMOT's QuantizeWrapperV2 lists the inner layer's weights before building it, so weights
    made in build() were missing from a new wrapper but present in a reloaded one, and a saved
    QAT model did not load. Without `channels` (models saved before) they are made in build().
    """

    def __init__(self, channels=None, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.channels = None if channels is None else int(channels)
        self.epsilon = float(epsilon)
        if self.channels is not None:
            self._add_weights(self.channels)

    def _add_weights(self, channels):
        self.gamma = self.add_weight("gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight("beta", shape=(channels,), initializer="zeros")

    def build(self, input_shape):
        if self.channels is None:
            self._add_weights(int(input_shape[-1]))
        super().build(input_shape)

    def call(self, inputs):
        centred = inputs - tf.reduce_mean(inputs, axis=-1, keepdims=True)
        variance = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)
        return centred * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "epsilon": self.epsilon}


@keras.utils.register_keras_serializable(package="edgeasr")
class Scale(keras.layers.Layer):
    """Multiply by a constant (the ½ of the half-step feed-forward residuals)."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.utils.register_keras_serializable(package="edgeasr")
class MatMul(keras.layers.Layer):
    """Batched a @ b (or a @ b^T), times a constant: BATCH_MATMUL (and MUL) in LiteRT."""

    def __init__(self, transpose_b=False, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.transpose_b = bool(transpose_b)
        self.factor = float(factor)

    def call(self, inputs):
        a, b = inputs
        product = tf.matmul(a, b, transpose_b=self.transpose_b)
        return product * self.factor if self.factor != 1.0 else product

    def get_config(self):
        return {**super().get_config(), "transpose_b": self.transpose_b, "factor": self.factor}


@keras.utils.register_keras_serializable(package="edgeasr")
class ChunkMask(keras.layers.Layer):
    """Attention scores (B, H, T, T) shifted so each query's highest real score is 0, real scores
    floored and the keys outside the query's chunk window set to MASKED_SCORE:

        filled = scores * mask + (mask - 1) * -ROW_MAX_FILL      MUL, ADD by constants
        maximum(filled - reduce_max(filled), MASKED_SCORE)       REDUCE_MAX, SUB, MAXIMUM

    The shift leaves the softmax of the real scores as it was, and the floor moves a real key's
    weight by under e^-16 of the top key's. A -1e9 bias instead would stretch the int8 range of
    the scores over nine orders of magnitude."""

    def __init__(self, chunk_frames, left_chunks, **kwargs):
        super().__init__(**kwargs)
        self.chunk_frames = int(chunk_frames)
        self.left_chunks = int(left_chunks)
        if self.chunk_frames < 1 or self.left_chunks < 0:
            raise EdgeasrError(f"chunk_frames must be >= 1 and left_chunks >= 0, got {chunk_frames}, {left_chunks}")

    def mask(self, frames):
        if isinstance(frames, int):
            return tf.constant(chunk_mask(frames, self.chunk_frames, self.left_chunks))
        chunk = tf.range(frames) // self.chunk_frames
        query, key = chunk[:, None], chunk[None, :]
        return tf.cast((key <= query) & (key >= query - self.left_chunks), tf.float32)

    def call(self, scores):
        frames = scores.shape[-1]
        mask = self.mask(int(frames) if frames is not None else tf.shape(scores)[-1])
        filled = scores * mask + (mask - 1.0) * -ROW_MAX_FILL
        return tf.maximum(filled - tf.reduce_max(filled, axis=-1, keepdims=True), MASKED_SCORE)

    def get_config(self):
        return {**super().get_config(), "chunk_frames": self.chunk_frames, "left_chunks": self.left_chunks}


def randomize_untrained(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give an untrained model the non-trivial biases, norm gains and BN statistics a trained one
    has (it has zeros and ones there), so conversion and parity checks see every path carry data
    (and do not share the converter's deduplicated all-zero buffers)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.name
        if any(key in name for key in ("bias", "beta", "moving_mean")):
            variable.assign(rng.normal(0.0, 0.1, variable.shape))
        elif any(key in name for key in ("gamma", "moving_variance")):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    return model


def custom_objects() -> dict:
    return {cls.__name__: cls for cls in (LayerNorm, Scale, MatMul, ChunkMask)}


# --- modules ---------------------------------------------------------------------------------------
def _subsampling(features, config: ConformerConfig):
    """Two causal 3x3 stride-2 convolutions: time padded on the left only, mels on both sides."""
    layers = keras.layers
    x = layers.Reshape((-1, config.num_mels, 1), name="subsample_expand")(features)
    mels = config.num_mels
    for i in (1, 2):
        x = layers.ZeroPadding2D(((2, 0), (1, 1)), name=f"subsample_pad{i}")(x)
        x = layers.Conv2D(config.subsampling_channels, 3, strides=2, name=f"subsample_conv{i}")(x)
        x = layers.ReLU(name=f"subsample_relu{i}")(x)
        mels = (mels - 1) // 2 + 1
    x = layers.Reshape((-1, mels * config.subsampling_channels), name="subsample_flatten")(x)
    return layers.Dense(config.d_model, name="subsample_dense")(x)


def _feed_forward(x, config: ConformerConfig, prefix: str):
    layers = keras.layers
    y = LayerNorm(config.d_model, name=f"{prefix}_norm")(x)
    y = layers.Dense(config.ff_mult * config.d_model, name=f"{prefix}_dense1")(y)
    y = layers.Activation("swish", name=f"{prefix}_swish")(y)
    y = layers.Dropout(config.dropout, name=f"{prefix}_dropout1")(y)
    y = layers.Dense(config.d_model, name=f"{prefix}_dense2")(y)
    y = layers.Dropout(config.dropout, name=f"{prefix}_dropout2")(y)
    y = Scale(0.5, name=f"{prefix}_half")(y)
    return layers.Add(name=f"{prefix}_residual")([x, y])


def _self_attention(x, config: ConformerConfig, prefix: str):
    layers = keras.layers
    heads, depth = config.num_heads, config.d_model // config.num_heads
    y = LayerNorm(config.d_model, name=f"{prefix}_norm")(x)

    def split_heads(name):
        h = layers.Dense(config.d_model, name=f"{prefix}_{name}")(y)
        h = layers.Reshape((-1, heads, depth), name=f"{prefix}_{name}_heads")(h)
        return layers.Permute((2, 1, 3), name=f"{prefix}_{name}_transpose")(h)   # (B, H, T, depth)

    query, key, value = split_heads("query"), split_heads("key"), split_heads("value")
    scores = MatMul(transpose_b=True, factor=1.0 / math.sqrt(depth), name=f"{prefix}_scores")([query, key])
    scores = ChunkMask(config.chunk_frames, config.left_chunks, name=f"{prefix}_mask")(scores)
    weights = layers.Softmax(name=f"{prefix}_softmax")(scores)
    weights = layers.Dropout(config.dropout, name=f"{prefix}_attention_dropout")(weights)
    context = MatMul(name=f"{prefix}_context")([weights, value])                 # (B, H, T, depth)
    context = layers.Permute((2, 1, 3), name=f"{prefix}_merge_transpose")(context)
    context = layers.Reshape((-1, config.d_model), name=f"{prefix}_merge_heads")(context)
    y = layers.Dense(config.d_model, name=f"{prefix}_output")(context)
    y = layers.Dropout(config.dropout, name=f"{prefix}_dropout")(y)
    return layers.Add(name=f"{prefix}_residual")([x, y])


def _convolution(x, config: ConformerConfig, prefix: str):
    """Pointwise GLU (two Dense halves), causal depthwise conv + BN, swish, pointwise Dense."""
    layers = keras.layers
    d = config.d_model
    y = LayerNorm(config.d_model, name=f"{prefix}_norm")(x)
    value = layers.Dense(d, name=f"{prefix}_glu_a")(y)
    gate = layers.Dense(d, name=f"{prefix}_glu_gate")(y)
    gate = layers.Activation("sigmoid", name=f"{prefix}_glu_sigmoid")(gate)
    y = layers.Multiply(name=f"{prefix}_glu")([value, gate])
    y = layers.Reshape((-1, 1, d), name=f"{prefix}_expand")(y)
    y = layers.ZeroPadding2D(((config.conv_kernel - 1, 0), (0, 0)), name=f"{prefix}_causal_pad")(y)
    y = layers.DepthwiseConv2D((config.conv_kernel, 1), use_bias=False, name=f"{prefix}_dw")(y)
    y = layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(y)
    y = layers.Activation("swish", name=f"{prefix}_swish")(y)
    y = layers.Reshape((-1, d), name=f"{prefix}_squeeze")(y)
    y = layers.Dense(d, name=f"{prefix}_pw")(y)
    y = layers.Dropout(config.dropout, name=f"{prefix}_dropout")(y)
    return layers.Add(name=f"{prefix}_residual")([x, y])


def _check(config: ConformerConfig, vocab_size: int):
    if config.d_model % config.num_heads:
        raise EdgeasrError(f"d_model {config.d_model} is not a multiple of num_heads {config.num_heads}")
    if config.conv_kernel < 1 or config.chunk_frames < 1 or config.left_chunks < 0:
        raise EdgeasrError(f"conv_kernel and chunk_frames must be >= 1, left_chunks >= 0: {config}")
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise EdgeasrError(f"vocab_size must be an integer >= 2 (blank + at least one token), got {vocab_size!r}")


def build_conformer(config: ConformerConfig, vocab_size: int, time_frames=None, name="conformer") -> keras.Model:
    """(B, T, num_mels) log-mel frames -> (B, output_frames(T), vocab_size) CTC logits (blank = 0).

    time_frames fixes T (for conversion: LiteRT models take a fixed window); None leaves it open.
    """
    _check(config, vocab_size)
    features = keras.Input(shape=(time_frames, config.num_mels), name="features")
    x = _subsampling(features, config)
    x = keras.layers.Dropout(config.dropout, name="subsample_dropout")(x)
    for i in range(1, config.num_blocks + 1):
        x = _feed_forward(x, config, f"block{i}_ff1")
        x = _self_attention(x, config, f"block{i}_mhsa")
        x = _convolution(x, config, f"block{i}_conv")
        x = _feed_forward(x, config, f"block{i}_ff2")
        x = LayerNorm(config.d_model, name=f"block{i}_norm")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    return keras.Model(features, logits, name=name)


@register_model("conformer")
def conformer(input_shape, num_classes, size="xs", chunk_frames=None, left_chunks=None, dropout=None):
    """The registry's view: input_shape (T or None, num_mels), num_classes = vocab size with blank."""
    overrides = {k: v for k, v in (("chunk_frames", chunk_frames), ("left_chunks", left_chunks),
                                   ("dropout", dropout)) if v is not None}
    frames, mels = input_shape
    config = conformer_config(size, num_mels=int(mels), **overrides)
    return build_conformer(config, num_classes, time_frames=frames)
