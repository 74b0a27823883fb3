"""KWS model builders and the model registry: shapes, parameter counts, names, TFLite ops."""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from edgeasr.configs import from_dict, to_dict
from edgeasr.errors import EdgeasrError
from edgeasr.models.registry import ModelConfig, build_model, known_models, option_names

FRAMES, MELS, CLASSES = 98, 40, 12
KWS_MODELS = ("ds_cnn_s", "ds_cnn_m", "ffn_stateless")


def _build(name, **options):
    return build_model(ModelConfig(name=name, options=options))


@pytest.fixture(scope="module")
def models():
    return {name: _build(name) for name in KWS_MODELS}


def _features(batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, FRAMES, MELS)).astype(np.float32)


def expected_ds_cnn_params(channels, blocks, first_kernel=(10, 4), classes=CLASSES):
    """Conv0 (no bias) + per block a 3x3 depthwise and a 1x1 pointwise (no bias), each followed
    by a BN with 4 vectors (gamma, beta, moving mean, moving variance), then the Dense head."""
    batch_norm = 4 * channels
    conv0 = first_kernel[0] * first_kernel[1] * 1 * channels + batch_norm
    depthwise = 3 * 3 * channels + batch_norm
    pointwise = channels * channels + batch_norm
    head = channels * classes + classes
    return conv0 + blocks * (depthwise + pointwise) + head


def expected_ffn_params(units=160, layers=3, time_pool=3, classes=CLASSES):
    inputs = (FRAMES // time_pool) * MELS
    first = inputs * units + units
    hidden = (layers - 1) * (units * units + units)
    head = units * classes + classes
    return first + hidden + head


def test_known_models_lists_the_kws_models():
    assert set(KWS_MODELS) <= set(known_models())


@pytest.mark.parametrize("name", KWS_MODELS)
def test_output_is_a_softmax_over_classes(models, name):
    probs = models[name](_features(batch=2), training=False).numpy()
    assert probs.shape == (2, CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


@pytest.mark.parametrize("name, channels", [("ds_cnn_s", 64), ("ds_cnn_m", 172)])
def test_ds_cnn_parameter_count(models, name, channels):
    assert models[name].count_params() == expected_ds_cnn_params(channels, blocks=4)


def test_ffn_parameter_count(models):
    count = models["ffn_stateless"].count_params()
    assert count == expected_ffn_params() == 258_412
    assert 240_000 <= count <= 270_000


def test_options_override_builder_defaults():
    model = _build("ffn_stateless", units=64, layers=2)
    assert model.get_layer("dense1").units == 64
    assert model.count_params() == expected_ffn_params(units=64, layers=2)
    assert "dense3" not in [layer.name for layer in model.layers]


def test_unknown_model_name_lists_known_models():
    with pytest.raises(EdgeasrError) as error:
        _build("ds_cnn_xxl")
    for name in KWS_MODELS:
        assert name in str(error.value)


def test_unknown_option_is_named():
    with pytest.raises(EdgeasrError, match="unit_count"):
        _build("ffn_stateless", unit_count=64)


def test_option_names_come_from_the_builder():
    assert {"channels", "blocks", "dropout"} <= set(option_names("ds_cnn_s"))
    assert {"units", "layers", "time_pool", "dropout"} <= set(option_names("ffn_stateless"))


def test_model_config_round_trips_through_json_dict():
    config = ModelConfig(name="ffn_stateless", options={"units": 96})
    assert from_dict(ModelConfig, to_dict(config)) == config


def test_ds_cnn_layer_names_are_stable():
    names = [layer.name for layer in _build("ds_cnn_s").layers]
    assert names == [layer.name for layer in _build("ds_cnn_s").layers]
    expected = {"conv0", "bn0", "relu0", "avg_pool", "logits", "probs"}
    for i in range(1, 5):
        expected |= {f"dw{i}", f"bn_dw{i}", f"relu_dw{i}", f"pw{i}", f"bn_pw{i}", f"relu_pw{i}"}
    assert expected <= set(names)


def test_ffn_layer_names_are_stable():
    names = [layer.name for layer in _build("ffn_stateless").layers]
    assert names == [layer.name for layer in _build("ffn_stateless").layers]
    assert {"time_pool", "dense1", "relu1", "dense3", "relu3", "logits", "probs"} <= set(names)


def test_convolutions_feeding_batch_norm_have_no_bias(models):
    """BN folding during QAT needs bias-free convolutions."""
    for layer in models["ds_cnn_s"].layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            assert not layer.use_bias, layer.name


def _interpreter(model_content):
    """LiteRT's interpreter where installed (tf.lite.Interpreter is deprecated), else TF's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_content=model_content)


def _convert_builtins_only(model):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


@pytest.mark.parametrize("name, must_contain", [
    ("ds_cnn_s", {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "SOFTMAX"}),
    ("ffn_stateless", {"AVERAGE_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"}),
])
def test_converts_to_builtin_tflite_ops(models, name, must_contain):
    model = models[name]
    interpreter = _interpreter(_convert_builtins_only(model))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert must_contain <= ops
    assert not any(op.startswith("Flex") for op in ops), ops

    features = _features(batch=1, seed=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], features)
    interpreter.invoke()
    tflite_probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite_probs, model(features, training=False).numpy(), atol=1e-5)
