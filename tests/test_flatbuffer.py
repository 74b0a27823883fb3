"""Writing a .tflite back: each distinct zero-point vector is stored once and shared by its tensors,
and the interpreter computes exactly what it computed from a file with one vector per tensor."""
import edgeasr  # noqa: F401

import flatbuffers
import numpy as np
import pytest
import tf_keras as keras

from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.stock import int8_tflite
from edgeasr.runtime.litert import LiteRTModel

ZERO_POINT_FIELD = 10   # vtable offset of QuantizationParameters.zero_point (its 4th field)


@pytest.fixture(scope="module")
def per_channel_model():
    """Three 16-channel convolutions: per-channel weights and biases, 6 all-zero 16-long vectors."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = inputs
    for index in range(3):
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"conv{index}")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    calibration = np.random.default_rng(0).normal(size=(16, 12, 12, 3)).astype(np.float32)
    return int8_tflite(model, calibration), calibration


def _unshared(model_bytes: bytes) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(fb.load(model_bytes).Pack(builder), file_identifier=fb.FILE_IDENTIFIER)
    return bytes(builder.Output())


def _zero_point_positions(model_bytes: bytes) -> dict:
    """Where in the file each tensor's zero-point vector starts, by the vector's content."""
    graph = fb.schema().Model.GetRootAsModel(model_bytes, 0).Subgraphs(0)
    positions = {}
    for index in range(graph.TensorsLength()):
        quant = graph.Tensors(index).Quantization()
        offset = quant._tab.Offset(ZERO_POINT_FIELD) if quant is not None else 0
        if offset:
            key = quant.ZeroPointAsNumpy().tobytes()
            positions.setdefault(key, set()).add(quant._tab.Vector(offset))
    return positions


def test_each_distinct_zero_point_vector_is_written_once(per_channel_model):
    stock, _ = per_channel_model
    shared, unshared = fb.dump(fb.load(stock)), _unshared(stock)
    positions = _zero_point_positions(shared)
    assert all(len(where) == 1 for where in positions.values())
    per_channel = np.zeros(16, np.int64).tobytes()
    assert len(_zero_point_positions(unshared)[per_channel]) == 6          # 3 weights + 3 biases
    assert len(unshared) - len(shared) >= 5 * 16 * 8                        # five 16 x int64 vectors fewer


def test_shared_zero_points_read_back_and_compute_the_same(per_channel_model):
    stock, calibration = per_channel_model
    shared, unshared = fb.dump(fb.load(stock)), _unshared(stock)
    for a, b in zip(fb.load(shared).subgraphs[0].tensors, fb.load(unshared).subgraphs[0].tensors):
        if a.quantization is not None and a.quantization.zeroPoint is not None:
            np.testing.assert_array_equal(a.quantization.zeroPoint, b.quantization.zeroPoint)
    for kernels in ("xnnpack", "builtin"):
        np.testing.assert_array_equal(LiteRTModel(shared, kernels=kernels).predict(calibration),
                                      LiteRTModel(unshared, kernels=kernels).predict(calibration))


def test_zero_points_given_as_lists_are_shared_too(per_channel_model):
    stock, _ = per_channel_model
    model = fb.load(stock)
    for tensor in model.subgraphs[0].tensors:
        if tensor.quantization is not None and tensor.quantization.zeroPoint is not None:
            tensor.quantization.zeroPoint = [int(z) for z in tensor.quantization.zeroPoint]
    rewritten = fb.dump(model)
    assert all(len(where) == 1 for where in _zero_point_positions(rewritten).values())
    assert rewritten == fb.dump(fb.load(stock))
