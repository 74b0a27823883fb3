"""The INT4 packing pass on the converter traps of DESIGN.md: a Dense on a 3-D input left in an
INT8 container with an unfused bias, zero weights sharing one buffer between a 4-bit and an
8-bit layer, per-tensor FULLY_CONNECTED scales, weights off the grid, 2- and 3-bit weights the
converter wrote on the 4-bit grid, op versions."""
import edgeasr  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.inspect import format_inspection, inspect_model, xnnpack_nodes
from edgeasr.converters.int4 import (INT4_OP_VERSIONS, INT8_FILTER_OP_VERSIONS, keras_layer_names,
                                     pack_int4_weights, policy_bits)
from edgeasr.converters.pointwise import pointwise_as_fully_connected
from edgeasr.converters.pooling import global_pools_as_mean
from edgeasr.converters.trim import trim_model
from edgeasr.errors import EdgeasrError
from edgeasr.quant import qat
from edgeasr.quant.policy import LayerPrecision, PrecisionPolicy, PrecisionRule
from edgeasr.runtime.litert import LiteRTModel

W4 = LayerPrecision(weight_bits=4, weight_transform="linear", activation_bits=8)
# The stock converter's own FULLY_CONNECTED path (fake-quant carried through): one scale per Dense.
# A per-channel Dense is converted from its baked kernel instead (converters/stock.py).
W4_DENSE_PER_TENSOR = LayerPrecision(weight_bits=4, weight_transform="linear", granularity="per-tensor",
                                     activation_bits=8)


def _open_batch_int8(model, x):
    """The stock path that hits the traps: from_keras_model with an open batch size."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([example[None]] for example in x)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _run(model_bytes, x, kernels="xnnpack"):
    model = LiteRTModel(model_bytes, kernels=kernels)
    return np.stack([model.run_raw(example) for example in x]).astype(np.int32)


def _ops_and_versions(model_bytes):
    model = fb.load(model_bytes)
    return [(fb.op_name(model, op), model.operatorCodes[op.opcodeIndex].version)
            for op in model.subgraphs[0].operators]


def _int8_inputs(n, shape, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape)).astype(np.int8)


@pytest.fixture(scope="module")
def dense_3d():
    """Dense on a (frames, mels) input (Tensordot path) + a Dense head, w4 QAT, a few steps."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 8), name="features")
    x = keras.layers.Dense(16, name="d3")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    model = qat.quantize_model(keras.Model(inputs, outputs), PrecisionPolicy("w4", W4_DENSE_PER_TENSOR))
    data = np.random.default_rng(0).normal(size=(32, 12, 8)).astype(np.float32)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, np.arange(32) % 4, batch_size=16, verbose=0)
    return model, data, _open_batch_int8(model, data[:16])


def test_dense_on_3d_input_int8_container_is_packed_onto_the_qat_grid(dense_3d):
    model, _, stock = dense_3d
    ops, tensors = fb.read_model(stock)
    d3 = next(t for t in tensors if "quant_d3/" in t.name and t.data is not None and len(t.shape) == 2)
    assert d3.type == "INT8" and "ADD" in ops   # the trap: INT8 container, bias left to an ADD

    layer_names = keras_layer_names(model)
    packed, report = pack_int4_weights(stock, policy_bits(PrecisionPolicy("w4", W4_DENSE_PER_TENSOR), layer_names))
    by_layer = {entry["layer"]: entry for entry in report}
    assert by_layer["d3"]["converter_wrote"] == "INT8" and by_layer["d3"]["action"].startswith("packed")
    assert by_layer["d3"]["stored_as"] == "INT4"
    assert by_layer["logits"]["stored_as"] == "INT4"

    _, tensors = fb.read_model(packed)
    weights = [t for t in tensors if t.data is not None and len(t.shape) == 2 and t.type != "INT32"]
    assert [t.type for t in weights] == ["INT4", "INT4"]
    d3 = next(t for t in weights if "quant_d3/" in t.name)
    assert d3.data.size == d3.shape[0] * d3.shape[1] // 2                  # two per byte
    levels = fb.unpack_int4(d3.data, d3.shape[0] * d3.shape[1]).reshape(d3.shape)
    assert np.abs(levels).max() <= 7
    scale = d3.scale.reshape(-1, 1) if d3.scale.size > 1 else d3.scale
    # Back on exactly the grid Keras computes with (the INT8 container had rounded it).
    np.testing.assert_allclose(levels * scale, qat.effective_weights(model)["d3"].T, rtol=1e-5, atol=1e-7)
    assert ("ADD", 1) in [(name, 1) for name, _ in _ops_and_versions(packed)]     # the unfused bias stays int8
    for name, version in _ops_and_versions(packed):
        if name == "FULLY_CONNECTED":
            assert version >= INT4_OP_VERSIONS[("FULLY_CONNECTED", "INT8")]

    x = _int8_inputs(8, (12, 8))
    for kernels in ("xnnpack", "builtin"):   # runs on both kernel sets; near the container's rounded weights
        assert np.abs(_run(packed, x, kernels) - _run(stock, x, kernels)).max() <= 2


def test_per_tensor_fc_scales_become_per_channel_without_changing_outputs(dense_3d, tmp_path):
    model, _, stock = dense_3d
    bits_of = policy_bits(PrecisionPolicy("w4", W4_DENSE_PER_TENSOR), keras_layer_names(model))
    per_tensor, _ = pack_int4_weights(stock, bits_of, fc_per_channel=False)
    per_channel, report = pack_int4_weights(stock, bits_of, fc_per_channel=True)
    _, tensors = fb.read_model(per_channel)
    logits = next(t for t in tensors if "quant_logits/MatMul" in t.name)
    bias = next(t for t in tensors if t.name.endswith("quant_logits/BiasAdd"))
    assert logits.type == "INT4" and logits.scale.size == 4 and np.all(logits.scale == logits.scale[0])
    assert bias.scale.size == 4
    assert all(entry["scales"] == "per-channel" for entry in report)
    x = _int8_inputs(8, (12, 8), seed=1)
    for kernels in ("xnnpack", "builtin"):
        np.testing.assert_array_equal(_run(per_channel, x, kernels), _run(per_tensor, x, kernels))
    # The installed runtime's XNNPACK takes INT4 FULLY_CONNECTED with one scale too (convert's default).
    assert _delegated(per_tensor, tmp_path, "pt.tflite") == _delegated(per_channel, tmp_path, "pc.tflite") >= 2


def _two_fc_sharing_a_zero_buffer():
    """Zero weights deduplicated into one buffer shared by a 4-bit and an 8-bit layer."""
    inputs = keras.Input((16,), name="features")
    x = keras.layers.ReLU(name="r1")(keras.layers.Dense(16, name="d1")(inputs))
    x = keras.layers.ReLU(name="r2")(keras.layers.Dense(16, name="d2")(x))
    outputs = keras.layers.Dense(4, name="logits")(x)
    policy = PrecisionPolicy("t", LayerPrecision(weight_bits=8, granularity="per-tensor"),
                             [PrecisionRule("d1", W4_DENSE_PER_TENSOR)])
    model = qat.quantize_model(keras.Model(inputs, outputs), policy)
    data = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    model(data)
    stock = fb.load(_open_batch_int8(model, data))
    graph = stock.subgraphs[0]
    d1, d2 = (next(t for t in graph.tensors if f"quant_{n}/MatMul;" in fb.tensor_name(t)) for n in ("d1", "d2"))
    stock.buffers[d2.buffer].data = np.zeros(256, np.uint8)       # d2 all zero (INT8)
    d1.type, d1.buffer = d2.type, d2.buffer                        # d1: an INT8 container on d2's buffer
    d1.quantization.scale = [1e-3] * 16
    d1.quantization.zeroPoint = [0] * 16
    d1.quantization.quantizedDimension = 0
    return model, policy, fb.dump(stock)


def test_zero_weights_on_a_shared_buffer_pack_without_touching_the_8bit_layer():
    model, policy, stock = _two_fc_sharing_a_zero_buffer()
    packed, report = pack_int4_weights(stock, policy_bits(policy, keras_layer_names(model)))
    assert {entry["layer"] for entry in report} == {"d1"}
    _, tensors = fb.read_model(packed)
    d1 = next(t for t in tensors if "quant_d1/MatMul;" in t.name)
    d2 = next(t for t in tensors if "quant_d2/MatMul;" in t.name)
    assert d1.type == "INT4" and d1.data.size == 128 and not d1.data.any()
    assert d2.type == "INT8" and d2.data.size == 256 and not d2.data.any()
    out = _run(packed, _int8_inputs(4, (16,)))
    assert out.shape == (4, 4) and (out == out[0]).all()          # zero weights: a constant output


def test_weights_off_the_4bit_grid_are_refused_naming_the_layer():
    inputs = keras.Input((16,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(inputs))
    data = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    stock = _open_batch_int8(model, data)       # plain int8 PTQ: 255 levels, not a 4-bit grid
    with pytest.raises(EdgeasrError, match=r"layer head .*not on a 4-bit grid"):
        pack_int4_weights(stock, policy_bits(PrecisionPolicy("w4", W4), ["head"]))
    unchanged, report = pack_int4_weights(stock, policy_bits(PrecisionPolicy("w8", LayerPrecision()), ["head"]))
    assert report == [] and fb.read_model(unchanged)[1] and _run(unchanged, _int8_inputs(2, (16,))).shape == (2, 4)


@pytest.fixture(scope="module")
def small_cnn():
    """Float conv, depthwise, pointwise conv and Dense (12 classes' worth of logits) on (16, 8) inputs."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 8), name="features")
    x = keras.layers.Reshape((16, 8, 1), name="reshape")(inputs)
    x = keras.layers.ReLU(name="relu0")(keras.layers.Conv2D(8, 3, name="conv")(x))
    x = keras.layers.ReLU(name="relu1")(keras.layers.DepthwiseConv2D(3, name="dw")(x))
    x = keras.layers.ReLU(name="relu2")(keras.layers.Conv2D(16, 1, name="pw")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(6, name="logits")(x))
    return model, np.random.default_rng(0).normal(size=(200, 16, 8)).astype(np.float32)


# Keras kernel layout -> the converted file's weight layout, per layer of small_cnn.
_TO_TFLITE = {"conv": lambda w: w.transpose(3, 0, 1, 2), "dw": lambda w: w.transpose(3, 0, 1, 2),
              "pw": lambda w: w[0, 0].T, "logits": lambda w: w.T}


@pytest.mark.parametrize("bits", [2, 3])
def test_2_and_3_bit_weights_are_stored_on_their_own_grid(small_cnn, bits):
    """The stock converter writes 2- and 3-bit fake-quant weights as INT4 on the 4-bit grid
    (step max|w| / 7; 3 bits: k * 7/3 rounded, not the model's weight). The pass finds the n-bit
    levels again, checks their range, and stores them times 7 // (2^(n-1) - 1) in INT4 (times
    2^(8-n) in the INT8 containers of conv_storage="int8"): exactly Keras' weights."""
    from edgeasr.converters.convert import convert_keras
    from edgeasr.converters.ptq import post_training_quantize
    from edgeasr.converters.stock import int8_tflite
    from edgeasr.quant.quantizers import top_level

    float_model, data = small_cnn
    policy = PrecisionPolicy(f"w{bits}", LayerPrecision(weight_bits=bits))
    model = post_training_quantize(float_model, policy, data)
    top, spread = top_level(bits), 7 // top_level(bits)
    effective = qat.effective_weights(model)

    stock_conv = next(t for t in fb.read_model(int8_tflite(model, data[:50]))[1]
                      if "quant_conv/" in t.name and t.data is not None)
    stock_levels = fb.unpack_int4(stock_conv.data, int(np.prod(stock_conv.shape)))
    assert stock_conv.type == "INT4" and np.abs(stock_levels).max() == 7       # the converter's 4-bit grid

    model_bytes, report = convert_keras(model, data, conv_storage="int4")
    assert {entry["layer"]: entry["stored_as"] for entry in report} == dict.fromkeys(_TO_TFLITE, "INT4")
    _, tensors = fb.read_model(model_bytes)
    for layer, to_tflite in _TO_TFLITE.items():
        weight = next(t for t in tensors if t.name == f"{layer}/weight")
        assert weight.type == "INT4" and weight.data.size == (np.prod(weight.shape) + 1) // 2
        stored = fb.unpack_int4(weight.data, int(np.prod(weight.shape))).reshape(weight.shape)
        assert np.all(stored % spread == 0), layer
        levels = stored // spread
        assert levels.min() >= -top and levels.max() <= top and np.abs(levels).max() == top, layer
        axis = 3 if layer == "dw" else 0
        scale = weight.scale.reshape([-1 if i == axis else 1 for i in range(stored.ndim)])
        np.testing.assert_allclose(stored * scale, to_tflite(effective[layer]), rtol=1e-5, atol=1e-7,
                                   err_msg=layer)
    lite = LiteRTModel(model_bytes)
    keras_scores = model.predict(data, verbose=0)
    lite_scores = lite.predict(data)
    assert np.mean(lite_scores.argmax(-1) == keras_scores.argmax(-1)) >= 0.99
    assert np.abs(lite_scores - keras_scores).max() <= 2.01 * lite.output_detail["quantization"][0]

    containers, report = convert_keras(model, data)                    # conv_storage="int8", convert's default
    assert {entry["layer"]: entry["stored_as"] for entry in report} == {
        "conv": "INT8", "dw": "INT8", "pw": "INT4", "logits": "INT4"}
    for tensor in fb.read_model(containers)[1]:
        if tensor.name in ("conv/weight", "dw/weight"):
            stored = tensor.data.view(np.int8)
            assert tensor.type == "INT8" and np.all(stored % 2 ** (8 - bits) == 0)
            assert np.abs(stored).max() == top * 2 ** (8 - bits)
    lite = LiteRTModel(containers)
    assert np.mean(lite.predict(data).argmax(-1) == keras_scores.argmax(-1)) >= 0.99


@pytest.mark.parametrize("bits", [2, 3])
def test_4bit_levels_are_refused_under_a_2_or_3_bit_policy(ds_cnn_w4, bits):
    """The n-bit range check stays real: the converter's INT4 levels of 4-bit weights (all of -7..7)
    are not on any 2- or 3-bit grid."""
    _, stock, _, _ = ds_cnn_w4
    narrow = LayerPrecision(weight_bits=bits)
    with pytest.raises(EdgeasrError, match=rf"layer conv0 .*INT4 .*not on a {bits}-bit grid"):
        pack_int4_weights(stock, policy_bits(PrecisionPolicy("narrow", narrow), ["conv0"]))


def test_per_channel_dense_is_converted_from_its_baked_kernel_onto_each_channels_grid():
    """The stock converter cannot carry a per-channel fake-quant through the transpose it puts on a
    FULLY_CONNECTED weight; convert bakes the quantized kernel, and the INT4 pass finds every
    channel's own 4-bit grid again: the file computes with exactly Keras' weights."""
    from edgeasr.converters.convert import convert_keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((24,), name="features")
    x = keras.layers.ReLU(name="relu")(keras.layers.Dense(16, name="d1")(inputs))
    float_model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    kernel, bias = float_model.get_layer("d1").get_weights()
    float_model.get_layer("d1").set_weights([kernel * np.geomspace(0.02, 1.0, 16, dtype=np.float32), bias])
    model = qat.quantize_model(float_model, PrecisionPolicy("w4", W4))
    data = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
    keras_before = model.predict(data, verbose=0)

    model_bytes, report = convert_keras(model, data)

    np.testing.assert_array_equal(model.predict(data, verbose=0), keras_before)   # quantizers restored
    assert {entry["layer"]: entry["scales"] for entry in report} == {"d1": "per-channel", "logits": "per-channel"}
    _, tensors = fb.read_model(model_bytes)
    d1 = next(t for t in tensors if t.name == "d1/weight")
    assert d1.type == "INT4" and d1.scale.size == 16
    levels = fb.unpack_int4(d1.data, d1.shape[0] * d1.shape[1]).reshape(d1.shape)
    assert np.all(np.abs(levels).max(axis=1) == 7)                   # each channel's top weight on level 7
    np.testing.assert_allclose(levels * d1.scale.reshape(-1, 1), qat.effective_weights(model)["d1"].T,
                               rtol=1e-5, atol=1e-8)
    assert d1.scale.max() / d1.scale.min() > 10                       # one scale would flatten the small units
    lite = LiteRTModel(model_bytes)
    keras_lsb = keras_before / lite.output_detail["quantization"][0]
    assert np.abs(lite.predict(data) / lite.output_detail["quantization"][0] - keras_lsb).max() <= 1.01


def test_int4_nibble_order_round_trips():
    values = np.array([-8, 7, 3, -1, 0, 5, -7], np.int8)
    packed = fb.pack_int4(values)
    assert packed.size == 4 and packed[0] == 0x78       # element 0 in the low nibble
    np.testing.assert_array_equal(fb.unpack_int4(packed, values.size), values)
    with pytest.raises(ValueError):
        fb.pack_int4(np.array([8]))


@pytest.fixture(scope="module")
def ds_cnn_w4():
    """A small DS-CNN quantised post-training to w4a8, converted by the stock converter."""
    from edgeasr.converters.ptq import post_training_quantize
    from edgeasr.converters.stock import int8_tflite
    from edgeasr.models.registry import ModelConfig, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="ds_cnn_s", num_classes=4, options={"channels": 16, "blocks": 2}))
    x = np.random.default_rng(0).normal(size=(32, 98, 40)).astype(np.float32)
    quantized = post_training_quantize(model, PrecisionPolicy("w4", W4), x)
    stock = int8_tflite(quantized, x)
    bits_of = policy_bits(PrecisionPolicy("w4", W4), keras_layer_names(quantized))
    return quantized, stock, bits_of, x


def _delegated(model_bytes, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(model_bytes)
    return len(xnnpack_nodes(path))


def test_pointwise_convs_become_fully_connected_with_bit_identical_outputs(ds_cnn_w4, tmp_path):
    _, stock, bits_of, _ = ds_cnn_w4
    packed, _ = pack_int4_weights(stock, bits_of, conv_storage="int4")
    rewritten, names = pointwise_as_fully_connected(packed)
    assert len(names) == 2 and all("pw" in name for name in names)
    model = fb.load(rewritten)
    ops = [(fb.op_name(model, op), op) for op in model.subgraphs[0].operators]
    assert [name for name, _ in ops].count("CONV_2D") == 1 and [name for name, _ in ops].count("FULLY_CONNECTED") == 3
    pointwise = [op for name, op in ops if name == "FULLY_CONNECTED" and op.builtinOptions.keepNumDims]
    assert len(pointwise) == 2 and all(op.builtinOptions.fusedActivationFunction == 1 for op in pointwise)  # RELU
    x = _int8_inputs(12, (98, 40), seed=3)
    np.testing.assert_array_equal(_run(rewritten, x, kernels="builtin"), _run(packed, x, kernels="builtin"))
    # XNNPACK has no INT4 CONV_2D; as FULLY_CONNECTED the pointwise convolutions are delegated.
    assert _delegated(rewritten, tmp_path, "fc.tflite") == _delegated(packed, tmp_path, "conv.tflite") + 2


def test_depthwise_and_first_conv_keep_4bit_levels_in_int8_containers(ds_cnn_w4, tmp_path):
    _, stock, bits_of, _ = ds_cnn_w4
    all_int4, _ = pointwise_as_fully_connected(pack_int4_weights(stock, bits_of, conv_storage="int4")[0])
    fast, report = pack_int4_weights(stock, bits_of, conv_storage="int8")
    fast, _ = pointwise_as_fully_connected(fast)
    stored = {entry["layer"]: entry["stored_as"] for entry in report}
    assert stored == {"conv0": "INT8", "dw1": "INT8", "dw2": "INT8", "pw1": "INT4", "pw2": "INT4", "logits": "INT4"}
    _, tensors = fb.read_model(fast)
    containers = {t.name: t for t in tensors if t.type == "INT8" and t.data is not None}
    packed = {t.name: t for t in fb.read_model(all_int4)[1] if t.name in containers}
    assert len(containers) == 3 and set(packed) == set(containers)
    for name, tensor in containers.items():
        stored = tensor.data.view(np.int8).astype(np.int32)
        # The 4-bit levels x 16 and the scale / 16: the same real weights as the packed INT4 tensor.
        assert np.all(stored % 16 == 0) and stored.min() >= -128 and stored.max() <= 112
        levels = fb.unpack_int4(packed[name].data, stored.size)
        np.testing.assert_array_equal(stored // 16, levels)
        np.testing.assert_array_equal(np.asarray(tensor.scale) * 16, np.asarray(packed[name].scale))
    x = _int8_inputs(12, (98, 40), seed=4)
    assert np.abs(_run(fast, x, kernels="builtin") - _run(all_int4, x, kernels="builtin")).max() <= 1
    model = fb.load(fast)
    delegated = _delegated(fast, tmp_path, "fast.tflite")
    weighted = sum(fb.op_name(model, op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
                   for op in model.subgraphs[0].operators)
    assert delegated >= weighted and delegated > _delegated(all_int4, tmp_path, "all_int4.tflite")


def test_int8_containers_declare_the_int8_op_version_and_load_on_the_reference_kernels(ds_cnn_w4):
    """The stock converter gives 4-bit convolutions the INT4 version 7; kept in INT8 containers they
    need 3, and no stale operator code stays behind: LiteRT 2.3's reference kernels (BUILTIN_REF)
    have no version-7 DEPTHWISE_CONV_2D and refused the whole file."""
    from edgeasr.converters.convert import convert_keras

    quantized, stock, _, x = ds_cnn_w4
    assert ("DEPTHWISE_CONV_2D", INT4_OP_VERSIONS[("DEPTHWISE_CONV_2D", "INT8")]) in _ops_and_versions(stock)
    converted, report = convert_keras(quantized, x)
    assert {entry["layer"]: entry["stored_as"] for entry in report if entry["stored_as"] == "INT8"} == \
        {"conv0": "INT8", "dw1": "INT8", "dw2": "INT8"}
    versions = _ops_and_versions(converted)
    assert [v for op, v in versions if op in ("CONV_2D", "DEPTHWISE_CONV_2D")] == \
        [INT8_FILTER_OP_VERSIONS[("CONV_2D", "INT8")]] + [INT8_FILTER_OP_VERSIONS[("DEPTHWISE_CONV_2D", "INT8")]] * 2
    assert sorted(v for op, v in versions if op == "FULLY_CONNECTED")[0] >= INT4_OP_VERSIONS[("FULLY_CONNECTED", "INT8")]
    model = fb.load(converted)
    assert sorted({op.opcodeIndex for op in model.subgraphs[0].operators}) == list(range(len(model.operatorCodes)))
    reference = LiteRTModel(converted, kernels="reference")        # raised "Didn't find op ... version '7'"
    inputs = _int8_inputs(8, (98, 40), seed=6)
    outputs = np.stack([reference.run_raw(example) for example in inputs]).astype(np.int32)
    assert np.abs(outputs - _run(converted, inputs, kernels="builtin")).max() <= 4


def test_parity_says_why_the_reference_kernels_could_not_run_and_still_compares_the_builtin_ones(ds_cnn_w4, tmp_path):
    """LiteRT's reference kernels have no INT4 convolution (version 7), so a file with INT4 convolutions
    (`convert --conv-storage int4`) cannot run on them: parity reports the reason, not a crash."""
    from edgeasr.eval.parity import markdown, parity_report

    quantized, stock, bits_of, x = ds_cnn_w4
    path = tmp_path / "int4_convs.tflite"
    path.write_bytes(pack_int4_weights(stock, bits_of, conv_storage="int4")[0])
    report = parity_report(path, quantized.predict(x, verbose=0), x, x[:, 0, :4].argmax(-1), min_agreement=0.0)
    assert "version" in report["reference_unavailable"] and "litert_reference_accuracy" not in report
    assert report["xnnpack_vs_builtin_agreement"] >= 0.9 and report["xnnpack_vs_builtin_max_lsb"] <= 4
    assert 0.0 <= report["litert_builtin_accuracy"] <= 1.0
    assert "| XNNPACK vs reference kernels | not compared: " in markdown(report)
    shown = format_inspection(inspect_model(path))
    assert "builtin kernels: can run it" in shown and "reference kernels: cannot load it (Didn't find op" in shown


def test_int8_container_levels_requantize_closer_to_the_exact_result(ds_cnn_w4):
    """x86's builtin CONV_2D rounds twice (high multiply, then right shift); levels x 16 make the
    second rounding 4 bits finer. XNNPACK (float requantization) stands in for the exact result."""
    _, stock, bits_of, x = ds_cnn_w4
    spread, _ = pack_int4_weights(stock, bits_of, conv_storage="int8")
    packed, _ = pack_int4_weights(stock, bits_of, conv_storage="int4")
    model = fb.load(spread)
    first_conv = next(i for i, op in enumerate(model.subgraphs[0].operators) if fb.op_name(model, op) == "CONV_2D")
    inputs = _int8_inputs(16, (98, 40, 1), seed=5)
    exact = _run(fb.single_op_model(spread, first_conv), inputs, kernels="xnnpack")
    off = {name: np.abs(_run(fb.single_op_model(source, first_conv), inputs, kernels="builtin") - exact)
           for name, source in (("levels x 16", spread), ("INT4 levels", packed))}
    assert off["levels x 16"].max() <= 1 and off["INT4 levels"].max() <= 1
    assert np.mean(off["levels x 16"] > 0) * 4 < np.mean(off["INT4 levels"] > 0), \
        {name: float(np.mean(values > 0)) for name, values in off.items()}


def test_the_builtin_int4_fully_connected_rounds_twice_and_lands_up_to_1_lsb_above(ds_cnn_w4):
    """docs/toolchain_facts.md (scripts/kernel_rounding.py): the builtin FULLY_CONNECTED rounds the
    product to its top 32 bits, then shifts right rounding again; the reference kernels and XNNPACK
    round once. A pointwise layer's 4-bit weights make the shift short (2-3 bits here), so some
    outputs land 1 above, never below. A runtime that rounds once fails this test: the docs and
    kernel_warnings then need updating."""
    _, stock, bits_of, _ = ds_cnn_w4
    packed, _ = pointwise_as_fully_connected(pack_int4_weights(stock, bits_of)[0])
    model = fb.load(packed)
    index, op = next((i, op) for i, op in enumerate(model.subgraphs[0].operators)
                     if fb.op_name(model, op) == "FULLY_CONNECTED" and op.builtinOptions.keepNumDims)
    assert fb.type_names()[model.subgraphs[0].tensors[op.inputs[1]].type] == "INT4"
    single = fb.without_unused_operator_codes(fb.single_op_model(packed, index))
    x = _int8_inputs(16, tuple(model.subgraphs[0].tensors[op.inputs[0]].shape[1:]), seed=7)
    reference = _run(single, x, kernels="reference")
    above = _run(single, x, kernels="builtin") - reference
    assert set(np.unique(above).tolist()) == {0, 1} and 0.001 < np.mean(above) < 0.1, np.mean(above)
    np.testing.assert_array_equal(_run(single, x, kernels="xnnpack"), reference)


def test_trimmed_model_is_smaller_and_computes_the_same(ds_cnn_w4, tmp_path):
    quantized, stock, bits_of, _ = ds_cnn_w4
    untrimmed, _ = pointwise_as_fully_connected(pack_int4_weights(stock, bits_of, conv_storage="int8")[0])
    trimmed = trim_model(untrimmed, keras_layer_names(quantized))
    assert len(trimmed) < len(untrimmed) - 1000
    model = fb.load(trimmed)
    graph = model.subgraphs[0]
    used = {t.buffer for t in graph.tensors} | {m.buffer for m in model.metadata or []} | {0}
    assert used == set(range(len(model.buffers)))                       # no orphaned buffers
    assert "CONVERSION_METADATA" not in [fb.tensor_name(m) for m in model.metadata or []]
    names = [fb.tensor_name(t) for t in graph.tensors]
    assert {"pw1/weight", "pw1/bias", "dw2/weight", "logits/weight"} <= set(names)
    for op in graph.operators:
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = graph.tensors[op.inputs[2]]
            one_scale = fb.op_name(model, op) == "FULLY_CONNECTED"      # conv biases keep theirs (XNNPACK)
            assert (len(bias.quantization.scale) == 1) == one_scale, fb.tensor_name(bias)
    x = _int8_inputs(12, (98, 40), seed=5)
    for kernels in ("xnnpack", "builtin"):
        np.testing.assert_array_equal(_run(trimmed, x, kernels), _run(untrimmed, x, kernels))
    assert _delegated(trimmed, tmp_path, "trimmed.tflite") == _delegated(untrimmed, tmp_path, "untrimmed.tflite")


def _pool_values(model_bytes, x):
    """(map feeding the global pool, pooled values) in float, per example, on the builtin kernels."""
    from edgeasr.runtime.litert import tracing_interpreter

    model = fb.load(model_bytes)
    graph = model.subgraphs[0]
    pool = next(op for op in graph.operators if fb.op_name(model, op) in ("AVERAGE_POOL_2D", "MEAN"))
    interpreter = tracing_interpreter(model_bytes)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    values = []
    for example in x:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], example[None])
        interpreter.invoke()
        values.append([(interpreter.get_tensor(i).astype(np.float64) - details[i]["quantization"][1])
                       * details[i]["quantization"][0] for i in (pool.inputs[0], pool.outputs[0])])
    return values, details[pool.outputs[0]]["quantization"][0]


def test_global_average_pool_becomes_a_finer_delegated_mean(ds_cnn_w4, tmp_path):
    _, stock, bits_of, x = ds_cnn_w4
    before, _ = pointwise_as_fully_connected(pack_int4_weights(stock, bits_of, conv_storage="int8")[0])
    after, rewritten = global_pools_as_mean(before, x)
    model = fb.load(after)
    ops = [fb.op_name(model, op) for op in model.subgraphs[0].operators]
    assert rewritten == 1 and "MEAN" in ops and "AVERAGE_POOL_2D" not in ops
    from edgeasr.runtime.litert import quantize

    graph = model.subgraphs[0]
    quant = graph.tensors[graph.inputs[0]].quantization
    inputs = quantize(x[:8], {"quantization": (quant.scale[0], quant.zeroPoint[0]), "dtype": np.int8})  # calibrated
    (old, old_scale), (new, new_scale) = _pool_values(before, inputs), _pool_values(after, inputs)
    assert new_scale < old_scale / 2
    for (feature_map, pooled), (_, pooled_before) in zip(new, old):
        exact = feature_map.mean(axis=(1, 2)).reshape(pooled.shape)     # the float average Keras computes
        assert np.abs(pooled - exact).max() <= new_scale + 1e-9          # within one step of the finer grid
        assert np.abs(pooled_before - exact).max() <= old_scale / 2 + 1e-6
    for kernels in ("xnnpack", "builtin"):                                      # runs on both; logits bias rescaled
        assert np.abs(_run(after, inputs, kernels) - _run(before, inputs, kernels)).max() <= 16
    assert _delegated(after, tmp_path, "mean.tflite") == _delegated(before, tmp_path, "pool.tflite") + 1


def _mean_alone(model_bytes, x, scale=None):
    """(the MEAN as a single-op model, its int8 input maps for x, input scale, input zero point, output
    scale), the output scale replaced by `scale` if given."""
    from edgeasr.runtime.litert import layer_outputs

    model = fb.load(model_bytes)
    index = next(i for i, op in enumerate(model.subgraphs[0].operators) if fb.op_name(model, op) == "MEAN")
    maps = next(v for name, v in layer_outputs(model_bytes, x).items() if int(name.split("_")[0]) == index - 1)
    single = fb.load(fb.single_op_model(model_bytes, index))
    graph = single.subgraphs[0]
    if scale is not None:
        graph.tensors[graph.operators[0].outputs[0]].quantization.scale = [scale]
    source, pooled = (graph.tensors[t].quantization for t in (graph.operators[0].inputs[0], graph.operators[0].outputs[0]))
    return (fb.without_unused_operator_codes(fb.dump(single)), maps[:, 0],
            float(source.scale[0]), int(source.zeroPoint[0]), float(pooled.scale[0]))


def test_the_mean_scale_keeps_the_builtin_kernel_from_truncating_its_zero_point_term(ds_cnn_w4):
    """The builtin int8 MEAN adds zero point x input scale / output scale as a truncated constant:
    at a scale where that term is x.5, every pooled value shifts by half an LSB, half of them by one
    whole LSB. The pass picks a scale with a whole-number term, so the builtin MEAN rounds like the
    reference kernels and XNNPACK (only near-ties of its fixed-point multiply differ)."""
    _, stock, bits_of, x = ds_cnn_w4
    before, _ = pointwise_as_fully_connected(pack_int4_weights(stock, bits_of, conv_storage="int8")[0])
    after, _ = global_pools_as_mean(before, x)
    inputs = _int8_inputs(24, (98, 40), seed=7)
    mean, maps, input_scale, zero_point, output_scale = _mean_alone(after, inputs)
    term = np.float32(zero_point) * np.float32(input_scale) / np.float32(output_scale)
    assert zero_point == -128 and term == np.round(term)
    reference = _run(mean, maps, "reference")
    for kernels in ("builtin", "xnnpack"):
        difference = np.abs(_run(mean, maps, kernels) - reference)
        assert difference.max() <= 1 and (difference > 0).mean() <= 0.05, kernels
    half = float(np.float32(zero_point) * np.float32(input_scale) / (np.floor(term) + 0.5))   # term x.5
    truncating = _mean_alone(after, inputs, scale=half)[0]
    off = np.abs(_run(truncating, maps, "builtin") - _run(truncating, maps, "reference"))
    assert off.max() == 1 and (off > 0).mean() >= 0.25


def test_trim_keeps_the_scales_of_a_bias_a_convolution_shares_with_a_fully_connected(tmp_path):
    """The converter may give an FC and a conv one all-zero bias tensor: trimming the FC's bias
    scales must not take the conv's per-channel scales with them (XNNPACK then fails to prepare)."""
    from edgeasr.converters.stock import int8_tflite

    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(8, name="dense")(x))
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 4)).astype(np.float32)
    flat = fb.load(int8_tflite(model, x))
    graph = flat.subgraphs[0]
    ops = {fb.op_name(flat, op): op for op in graph.operators}
    conv_bias = ops["CONV_2D"].inputs[2]
    ops["FULLY_CONNECTED"].inputs = [*ops["FULLY_CONNECTED"].inputs[:2], conv_bias]
    graph.tensors[conv_bias].buffer = fb.add_buffer(flat, np.zeros(8, np.int32))
    shared = fb.dump(flat)

    trimmed = fb.load(trim_model(shared))
    assert len(trimmed.subgraphs[0].tensors[conv_bias].quantization.scale) == 8
    probe = np.random.default_rng(1).integers(-128, 128, size=(1, 6, 6, 4)).astype(np.int8)
    for kernels in ("builtin", "xnnpack"):
        np.testing.assert_array_equal(_run(trim_model(shared), probe, kernels), _run(shared, probe, kernels))
