"""Parity reports: agreement, LSB difference, XNNPACK vs reference, accuracy; threshold verdict."""
import json

import numpy as np

from edgeasr.eval.parity import kernel_warnings, litert_accuracy, markdown, parity_report, write_reports


def _model(tmp_path):
    import edgeasr  # noqa: F401
    import tf_keras as keras

    from edgeasr.converters.convert import convert_keras
    from edgeasr.converters.ptq import post_training_quantize

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = keras.layers.ReLU(name="relu")(keras.layers.Dense(16, name="hidden")(inputs))
    model = keras.Model(inputs, keras.layers.Softmax(name="probs")(keras.layers.Dense(3, name="logits")(x)))
    features = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    quantized = post_training_quantize(model, "w4a8", features)
    model_bytes, report = convert_keras(quantized, features)
    assert {entry["layer"] for entry in report} == {"hidden", "logits"}
    path = tmp_path / "m.tflite"
    path.write_bytes(model_bytes)
    return path, quantized, features


def test_parity_of_a_ptq_model_and_its_reports(tmp_path):
    path, keras_model, features = _model(tmp_path)
    scores = keras_model.predict(features, verbose=0)
    labels = scores.argmax(-1)
    report = parity_report(path, scores, features, labels, min_agreement=0.9)
    assert report["passed"] and report["argmax_agreement"] >= 0.9
    assert report["output_lsb_difference"]["max"] <= 3 and report["keras_accuracy"] == 1.0
    assert abs(report["litert_accuracy"] - report["argmax_agreement"]) < 1e-9
    assert litert_accuracy(path, features, labels) == report["litert_accuracy"]
    for kernels in ("reference", "builtin"):
        assert litert_accuracy(path, features, labels, kernels=kernels) == report[f"litert_{kernels}_accuracy"]
    json_path, md_path = write_reports(report, path)
    assert json.loads(json_path.read_text())["examples"] == 64
    assert "| argmax agreement Keras vs LiteRT (XNNPACK) |" in md_path.read_text()

    wrong = parity_report(path, np.roll(scores, 1, axis=-1), features, min_agreement=0.99)
    assert not wrong["passed"] and "FAILED" in markdown(wrong)


def test_kernel_sets_that_decide_otherwise_are_warned_about(tmp_path):
    path, keras_model, features = _model(tmp_path)
    scores = keras_model.predict(features, verbose=0)
    report = parity_report(path, scores, features, scores.argmax(-1), min_agreement=0.9)
    assert report["xnnpack_vs_builtin_agreement"] >= 0.99 and kernel_warnings(report) == []
    # the figures of a post-training-quantized 4-bit DS-CNN-S (docs/convert_results.md)
    report.update(xnnpack_vs_builtin_agreement=0.9008, litert_builtin_accuracy=0.8326, litert_accuracy=0.9184)
    (line,) = kernel_warnings(report)
    assert "builtin kernels decide 9.9% of the examples otherwise" in line and "83.26% against 91.84%" in line


def test_litert_model_takes_bytes_views_and_empty_batches_and_names_a_wrong_shape(tmp_path):
    import pytest

    from edgeasr.runtime.litert import LiteRTModel

    path, _, features = _model(tmp_path)
    from_path = LiteRTModel(path).predict(features[:4])
    from_view = LiteRTModel(memoryview(path.read_bytes())).predict(features[:4])
    np.testing.assert_array_equal(from_path, from_view)
    empty = LiteRTModel(path).predict(features[:0])
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    with pytest.raises(ValueError, match=r"batch of shape \(N, 8\) for this model, got \(8,\)"):
        LiteRTModel(path).predict(features[0])
