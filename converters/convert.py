"""Keras -> LiteRT conversion. This first version: float, and int8 post-training quantisation
with calibration data and int8 input and output (fully integer)."""
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic

CALIBRATION_EXAMPLES = 300


def float_tflite(model: keras.Model) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def int8_tflite(model: keras.Model, calibration: np.ndarray) -> bytes:
    """Fully integer: int8 weights and activations, int8 input and output, builtin ops only."""
    examples = np.asarray(calibration, np.float32)[:CALIBRATION_EXAMPLES]

    def representative_dataset():
        for example in examples:
            yield [example[None, ...]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def write_model(path, model_bytes: bytes, force: bool = False) -> Path:
    return write_bytes_atomic(path, model_bytes, force=force)


def calibration_features(config, examples: int = CALIBRATION_EXAMPLES) -> np.ndarray:
    """Features of a seeded random sample of the run's training clips (no augmentation)."""
    from edgeasr.data.pipeline import features_of
    from edgeasr.data.speech_commands import load_split

    train = load_split(Path(config.dataset), config.data, "train", progress=False)
    if not len(train.labels):
        raise EdgeasrError(f"{config.dataset}: no training clips to calibrate with")
    rng = np.random.default_rng(config.train.seed)
    chosen = rng.choice(len(train.labels), size=min(examples, len(train.labels)), replace=False)
    return features_of(train.waves[np.sort(chosen)], config.frontend)


def convert_run(run_dir, output, force: bool = False) -> dict:
    """Int8 LiteRT model of a trained run directory; returns sizes of the int8 and float files."""
    from edgeasr.models.registry import build_model
    from edgeasr.train.run_dir import RunDir

    run = RunDir(run_dir)
    config = run.read_config()
    model = run.load_model()
    int8_bytes = int8_tflite(model, calibration_features(config))
    write_model(output, int8_bytes, force=force)
    float_twin = build_model(config.model)  # same architecture, float: the size to compare with
    return {"int8_bytes": len(int8_bytes), "float_bytes": len(float_tflite(float_twin)),
            "parameters": float_twin.count_params()}
