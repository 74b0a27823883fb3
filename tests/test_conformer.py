"""Conformer-CTC: sizes, shapes, streaming masks, causality, QAT of every sublayer, and the
fully-integer INT4 conversion of a tiny Conformer with parity against Keras."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from edgeasr.converters import convert as cv
from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.int4 import int4_share
from edgeasr.models import conformer as cf
from edgeasr.quant import qat
from edgeasr.quant.policy import preset
from edgeasr.runtime.litert import LiteRTModel

VOCAB = 12


def _tiny(time_frames=None, **overrides):
    return cf.build_conformer(cf.conformer_config("tiny", **overrides), VOCAB, time_frames=time_frames)


def _features(count, frames, seed=1):
    return np.random.default_rng(seed).normal(size=(count, frames, 40)).astype(np.float32)


def test_sizes():
    xs = cf.build_conformer(cf.conformer_config("xs"), 30).count_params()
    s = cf.build_conformer(cf.conformer_config("s"), 30).count_params()
    assert 0.8e6 <= xs <= 1.2e6, xs
    assert 8e6 <= s <= 12e6, s
    with pytest.raises(Exception, match="unknown Conformer size"):
        cf.conformer_config("xl")


@pytest.mark.parametrize("frames, expected", [(1, 1), (4, 1), (5, 2), (100, 25), (101, 26)])
def test_output_shape(frames, expected):
    model = _tiny()
    assert cf.output_frames(frames) == expected
    assert model(_features(2, frames)).shape == (2, expected, VOCAB)


def test_config_round_trips_and_registry_builds_it():
    import json

    from edgeasr.configs import from_dict, to_dict
    from edgeasr.models.registry import ModelConfig, build_model

    config = cf.conformer_config("xs", chunk_frames=3)
    assert from_dict(cf.ConformerConfig, json.loads(json.dumps(to_dict(config)))) == config
    model = build_model(ModelConfig("conformer", (None, 40), VOCAB, {"size": "tiny", "chunk_frames": 2}))
    assert model.get_layer("block1_mhsa_mask").chunk_frames == 2
    assert model(_features(1, 40)).shape == (1, 10, VOCAB)


def test_chunk_mask_no_frame_attends_beyond_its_chunk():
    frames, chunk, left = 14, 3, 1
    mask = cf.chunk_mask(frames, chunk, left)
    for query in range(frames):
        allowed = np.flatnonzero(mask[query])
        first_of_chunk = (query // chunk) * chunk
        assert allowed.max() == min(first_of_chunk + chunk, frames) - 1      # the end of its own chunk
        assert allowed.min() == max(first_of_chunk - left * chunk, 0)       # left context: one chunk
        assert len(allowed) == allowed.max() - allowed.min() + 1
    layer = cf.ChunkMask(chunk, left)
    np.testing.assert_array_equal(layer.mask(tf.constant(frames)).numpy(), mask)   # the open-T graph's mask


def _masked_softmax(scores, keep):
    """The exact attention weights: a softmax over each query's real keys only."""
    e = np.where(keep, np.exp(scores - np.where(keep, scores, -np.inf).max(-1, keepdims=True)), 0.0)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("low, high", [(-4, 4), (-40, -20), (-45, 15)])
def test_masked_scores_get_no_attention(low, high):
    """Masked keys get no weight however low the real scores lie: with every real score below
    MASKED_SCORE (-40 to -20) a fixed masked score would take all of it."""
    scores = np.random.default_rng(0).uniform(low, high, (1, 2, 9, 9)).astype(np.float32)
    masked = cf.ChunkMask(3, 0)(scores).numpy()
    keep = cf.chunk_mask(9, 3, 0).astype(bool)
    assert np.all(masked[..., ~keep] == cf.MASKED_SCORE)
    assert np.all(np.where(keep, masked, -np.inf).max(-1) == 0.0)       # the top real score is 0
    weights = tf.nn.softmax(masked).numpy()
    assert weights[..., ~keep].sum(-1).max() < 1e-5
    np.testing.assert_allclose(weights, _masked_softmax(scores, keep), atol=1e-5)


def _input_changed_from_output_frame_8(model):
    """Outputs before and after adding 3 to the input from frame 32 (output frame 8) on; frames 8 and
    later must change."""
    x = _features(1, 64)
    y = x.copy()
    y[:, 32:] += 3.0
    before, after = model(x).numpy(), model(y).numpy()
    assert np.abs(after[:, 8:] - before[:, 8:]).max() > 1e-2
    return x, y, before, after


def test_streaming_outputs_ignore_later_chunks():
    """Changing input from output frame 8 on (chunk 2 of 4-frame chunks) leaves frames 0-7 as they are;
    with one chunk over everything (the control) it does not."""
    model = cf.randomize_untrained(_tiny())
    x, y, before, after = _input_changed_from_output_frame_8(model)
    np.testing.assert_allclose(after[:, :8], before[:, :8], atol=1e-5)
    # A chunk size chosen at inference: the same weights in a model built with another chunk.
    full = _tiny(chunk_frames=64)
    full.set_weights(model.get_weights())
    assert np.abs(full(y).numpy()[:, :8] - full(x).numpy()[:, :8]).max() > 1e-3


def test_streaming_outputs_ignore_later_chunks_when_every_score_is_low():
    """Queries and keys made constant so that every attention score is -40, far below MASKED_SCORE:
    attention is uniform over each query's window, and frames 0-7 still ignore input from frame 8 on."""
    model = cf.randomize_untrained(_tiny())
    config = cf.conformer_config("tiny")
    depth = config.d_model // config.num_heads
    level = math.sqrt(40.0 / math.sqrt(depth))               # q . k / sqrt(depth) = -40
    for layer in model.layers:
        if layer.name.endswith(("_mhsa_query", "_mhsa_key")):
            kernel, bias = layer.get_weights()
            sign = 1.0 if layer.name.endswith("query") else -1.0
            layer.set_weights([np.zeros_like(kernel), np.full_like(bias, sign * level)])
    _, _, before, after = _input_changed_from_output_frame_8(model)
    np.testing.assert_allclose(after[:, :8], before[:, :8], atol=1e-5)


def test_subsampling_and_depthwise_conv_are_causal():
    """With attention to itself only, output frame i sees input frames up to 4i and no further."""
    model = cf.randomize_untrained(_tiny(chunk_frames=1, left_chunks=0))
    x = _features(1, 64)
    y = x.copy()
    y[:, 37] += 3.0                                   # input frame 37 first reaches output frame 10
    before, after = model(x).numpy(), model(y).numpy()
    np.testing.assert_allclose(after[:, :10], before[:, :10], atol=1e-5)
    assert np.abs(after[:, 10] - before[:, 10]).max() > 1e-3
    assert np.abs(after[:, 11:] - before[:, 11:]).max() > 1e-3   # the causal conv carries it forward


def _layers_of(model, *classes):
    return {layer.name for layer in model.layers if type(layer) in classes}


def test_qat_quantizes_every_sublayer():
    model = _tiny()
    quantized = qat.quantize_model(model, "w4a8-tanh")
    weighted = _layers_of(model, keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    bits = {entry["layer"]: entry["quantizer"].bits for entry in qat.weight_quantizers(quantized)}
    assert set(bits) == weighted and set(bits.values()) == {4}
    outputs = set(qat.activation_quantizers(quantized))
    must = _layers_of(model, cf.LayerNorm, cf.Scale, cf.MatMul, cf.ChunkMask, keras.layers.Add,
                      keras.layers.Multiply)
    must |= {layer.name for layer in model.layers if layer.name.endswith("_swish")}
    must |= {layer.name for layer in model.layers if type(layer) is keras.layers.Dense}
    assert must <= outputs, sorted(must - outputs)
    # Depthwise conv + BN fold into one layer; ReLU after the subsampling convs is fused (its output quantized).
    assert all(isinstance(getattr(layer, "layer", layer), qat.FoldedConvBN)
               for layer in quantized.layers if "_dw" in layer.name)
    assert {"subsample_relu1", "subsample_relu2"} <= outputs and not {"subsample_conv1", "subsample_conv2"} & outputs
    # One training step runs and keeps the output shape.
    quantized.compile(keras.optimizers.Adam(1e-3), loss="mse")
    x = _features(2, 32)
    quantized.fit(x, np.zeros((2, 8, VOCAB), np.float32), epochs=1, verbose=0)
    assert quantized(x).shape == (2, 8, VOCAB)


def test_conformer_mixed_preset():
    quantized = qat.quantize_model(_tiny(), preset("conformer-mixed"))
    bits = {entry["layer"]: entry["quantizer"].bits for entry in qat.weight_quantizers(quantized)}
    eight = {name for name, b in bits.items() if b == 8}
    assert eight == {"subsample_conv1", "subsample_conv2", "subsample_dense", "block1_conv_dw", "block2_conv_dw",
                     "logits"}
    assert {"block1_ff1_dense1", "block1_mhsa_query", "block2_conv_glu_a", "block2_conv_pw"} <= \
        {name for name, b in bits.items() if b == 4}


def test_qat_model_saves_and_loads(tmp_path):
    quantized = qat.quantize_model(cf.randomize_untrained(_tiny(time_frames=32)), "w4a8-tanh")
    x = _features(2, 32)
    path = tmp_path / "qat.keras"
    quantized.save(path)
    np.testing.assert_allclose(qat.load_model(path)(x).numpy(), quantized(x).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny Conformer (one block, 64 frames) quantised under w4a8-tanh the way `edgeasr convert`
    quantises a float model, converted and INT4-packed; Keras and LiteRT outputs on 8 windows."""
    model = cf.randomize_untrained(cf.build_conformer(cf.conformer_config("tiny", num_blocks=1), VOCAB, time_frames=64))
    calibration = _features(8, 64, seed=2)
    quantized = cv.post_training_quantize(model, "w4a8-tanh", calibration)
    model_bytes, report = cv.convert_keras(quantized, calibration)
    path = tmp_path_factory.mktemp("conformer") / "tiny.tflite"
    path.write_bytes(model_bytes)
    held_out = _features(8, 64, seed=3)
    lite = LiteRTModel(path)
    scores = {"keras": quantized.predict(held_out, verbose=0), "litert": lite.predict(held_out)}
    return model_bytes, report, model, scores, lite.output_detail["quantization"][0]


def test_tiny_conformer_converts_fully_integer(converted):
    model_bytes = converted[0]
    assert cv.float_ops(model_bytes) == []
    flat = fb.load(model_bytes)
    names = [fb.op_name(flat, op) for op in flat.subgraphs[0].operators]
    assert "BATCH_MATMUL" in names and "SOFTMAX" in names and not any("CUSTOM" in n or n == "EINSUM" for n in names)


def test_every_fully_connected_weight_is_int4(converted):
    model_bytes, report, model = converted[:3]
    flat = fb.load(model_bytes)
    graph = flat.subgraphs[0]
    types = fb.type_names()
    fc_weights = [types[graph.tensors[op.inputs[1]].type] for op in graph.operators
                  if fb.op_name(flat, op) == "FULLY_CONNECTED"]
    dense = [layer for layer in model.layers if type(layer) is keras.layers.Dense]
    assert len(fc_weights) == len(dense) and set(fc_weights) == {"INT4"}
    assert {entry["layer"] for entry in report if entry["op"] == "FULLY_CONNECTED"} == {d.name for d in dense}
    assert int4_share(model_bytes) > 0.8


def test_tiny_conformer_parity_with_keras(converted):
    keras_scores, lite_scores = converted[3]["keras"], converted[3]["litert"]
    output_step = converted[4]
    assert keras_scores.shape == lite_scores.shape == (8, 16, VOCAB)
    agree = keras_scores.argmax(-1) == lite_scores.argmax(-1)                      # per output frame
    top2 = np.sort(keras_scores, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 8 * output_step     # an untrained model has near-ties
    assert clear.mean() >= 0.5 and agree[clear].mean() >= 0.99 and agree.mean() >= 0.85
    assert np.mean(np.abs(keras_scores - lite_scores)) <= 3 * output_step            # in output LSBs
