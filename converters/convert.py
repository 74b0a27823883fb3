"""Keras -> fully-integer LiteRT, with guaranteed INT4 packing, metadata and parity.

    convert(SOURCE, OUTPUT, policy=None, calibration=None, io="int8")

SOURCE is an edgeasr run directory or a tf_keras model file (SavedModel folder, .h5, .keras).
- A QAT model keeps its learned ranges; its weight bits come from its own quantizers.
- A float model is quantised post-training with edgeasr's quantizers under `policy` (w8a8 by
  default): quantize_model(float, policy, "full"), then every activation quantizer gets the
  range QAT would have learned, from the calibration data: the mean over batches of the batch
  min / max of the float model's tensor at that point (QAT takes the first batch's range and
  then a moving average of batch ranges; BatchNormalization is folded with its moving
  statistics, so nothing runs in training mode and no BN statistic or dropout is disturbed).
Conversion runs from a concrete function with a fixed batch of 1 (an open batch adds
SHAPE/STRIDED_SLICE/PACK ops and sent a Dense on a 3-D input down the Tensordot path, into an
INT8 container with an unfused bias). Then: the fully-integer check (names float ops and their
layers), the INT4 packing pass (converters/int4.py), the `edgeasr` metadata entry, parity
against the Keras model, and an atomic write.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.int4 import int4_share, keras_layer_names, pack_int4_weights
from edgeasr.converters.metadata import embed_metadata, source_hash, tensor_io
from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic

CALIBRATION_EXAMPLES = 300
PARITY_EXAMPLES = 500
IO_TYPES = ("int8", "float")
INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT4")


# --- plain conversions ---------------------------------------------------------------------------
def _concrete(model: keras.Model):
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    return tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)


def float_tflite(model: keras.Model) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete(model)], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def int8_tflite(model: keras.Model, calibration: np.ndarray, io: str = "int8", int16_activations: bool = False
                ) -> bytes:
    """The converter's fully-integer output (before the checks and the INT4 pass). Float ops it
    cannot quantise are let through (TFLITE_BUILTINS as a fallback) so the check can name them."""
    examples = np.asarray(calibration, np.float32)[:CALIBRATION_EXAMPLES]

    def representative_dataset():
        for example in examples:
            yield [example[None, ...]]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete(model)], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    integer_set = (tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                   if int16_activations else tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
    converter.target_spec.supported_ops = [integer_set, tf.lite.OpsSet.TFLITE_BUILTINS]
    if io == "int8":
        io_type = tf.int16 if int16_activations else tf.int8
        converter.inference_input_type = converter.inference_output_type = io_type
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and others with long logs
        lines = [line for line in str(exc).splitlines() if "error" in line.lower()] or str(exc).splitlines()
        raise EdgeasrError(f"the TFLite converter failed: {' | '.join(lines[-3:])[:800]}") from exc


# --- the fully-integer check ---------------------------------------------------------------------
def float_ops(model_bytes: bytes, layer_names=(), io: str = "int8") -> list:
    """Ops that are not fully integer or not builtin: [(op, layer, reason)]. With io="float" a
    QUANTIZE on the model input and a DEQUANTIZE on its output are the allowed float boundary."""
    model = fb.load(model_bytes)
    types = fb.type_names()
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        name = fb.op_name(model, op)
        tensors = [graph.tensors[i] for i in list(op.inputs) + list(op.outputs) if i >= 0]
        # The weight names the layer best (outputs carry fused activations' names), then outputs.
        ordered = [graph.tensors[i] for i in list(op.inputs[1:2]) + list(op.outputs) + list(op.inputs) if i >= 0]
        layer = next((fb.layer_of(fb.tensor_name(t), layer_names) for t in ordered
                      if fb.layer_of(fb.tensor_name(t), layer_names)), "")
        if name.startswith("CUSTOM") or name == "UNKNOWN":
            found.append((name, layer, "not a builtin op (Flex / custom)"))
            continue
        if io == "float" and ((name == "QUANTIZE" and op.inputs[0] in graph.inputs)
                              or (name == "DEQUANTIZE" and op.outputs[0] in graph.outputs)):
            continue
        non_integer = sorted({types[t.type] for t in tensors if types[t.type] not in INTEGER_TYPES})
        if non_integer or name in ("QUANTIZE", "DEQUANTIZE") and io != "float":
            found.append((name, layer, f"{', '.join(non_integer) or 'requantizing'} tensors"))
    return found


def check_fully_integer(model_bytes: bytes, layer_names=(), io: str = "int8") -> None:
    found = float_ops(model_bytes, layer_names, io)
    if found:
        described = "; ".join(f"{op} (layer {layer or '?'}: {reason})" for op, layer, reason in found[:12])
        raise EdgeasrError(f"the converted model is not fully integer: {len(found)} op(s) would run in float "
                           f"or outside the builtin set: {described}")


# --- sources -------------------------------------------------------------------------------------
def is_qat(model: keras.Model) -> bool:
    from edgeasr.quant.qat import FoldedConvBN, QuantizeLayer, QuantizeWrapper

    return any(isinstance(layer, (QuantizeWrapper, QuantizeLayer, FoldedConvBN)) for layer in model.layers)


def load_keras(path) -> keras.Model:
    """A tf_keras model from a SavedModel folder, .h5 or .keras file (float or edgeasr QAT)."""
    from edgeasr.quant.qat import load_model

    path = Path(path)
    if not path.exists():
        raise EdgeasrError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise EdgeasrError(f"{path}: not an edgeasr run directory (no config.json) and not a SavedModel "
                           f"(no saved_model.pb)")
    try:
        model = load_model(path, compile=False)
    except Exception as exc:
        raise EdgeasrError(f"{path}: not a readable tf_keras model ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from exc
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise EdgeasrError(f"{path}: convert needs a functional or Sequential tf_keras model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EdgeasrError(f"{path}: convert handles models with one input and one output, this one has "
                           f"{len(model.inputs)} and {len(model.outputs)}")
    return model


def qat_weight_bits(model: keras.Model) -> dict:
    from edgeasr.quant.qat import weight_quantizers

    return {entry["layer"]: entry["quantizer"].bits for entry in weight_quantizers(model)}


def load_calibration(data, model: keras.Model, config=None, split: str = "train"):
    """(features, labels or None) from a .npy array of model inputs or a dataset folder."""
    path = Path(data)
    if not path.exists():
        raise EdgeasrError(f"calibration data {path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".npy":
            raise EdgeasrError(f"calibration data {path}: expected a .npy array of model inputs or a dataset folder")
        try:
            features = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EdgeasrError(f"calibration data {path}: not a readable .npy array ({exc})") from exc
        labels = None
    else:
        from edgeasr.audio.frontend import FrontendConfig
        from edgeasr.data.pipeline import features_of
        from edgeasr.data.speech_commands import DataConfig, load_split

        frontend = config.frontend if config is not None else FrontendConfig()
        data_config = config.data if config is not None else DataConfig()
        clips = load_split(path, data_config, split, progress=False)
        if not len(clips.labels):
            raise EdgeasrError(f"calibration data {path}: no {split} clips")
        features, labels = features_of(clips.waves, frontend), np.asarray(clips.labels)
    expected = tuple(model.input_shape[1:])
    if features.ndim != len(expected) + 1 or tuple(features.shape[1:]) != expected or not len(features):
        raise EdgeasrError(f"calibration data {path}: shape {features.shape}, the model takes (N, "
                           f"{', '.join(map(str, expected))})")
    return features.astype(np.float32), labels


# --- post-training quantisation with edgeasr's quantizers ---------------------------------------
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


# --- the whole conversion ------------------------------------------------------------------------
def convert_keras(model: keras.Model, calibration: np.ndarray, io: str = "int8", fc_per_channel: bool = True,
                  int16_activations: bool = False) -> tuple:
    """(model bytes, INT4 report) of a QAT (or PTQ'd) Keras model: convert, check, pack."""
    if io not in IO_TYPES:
        raise EdgeasrError(f"--io must be one of {', '.join(IO_TYPES)}, got {io!r}")
    names = keras_layer_names(model)
    model_bytes = int8_tflite(model, calibration, io=io, int16_activations=int16_activations)
    check_fully_integer(model_bytes, names, io)
    bits = qat_weight_bits(model)
    bits_of = (lambda tensor: (fb.layer_of(tensor, names), bits.get(fb.layer_of(tensor, names))))
    return pack_int4_weights(model_bytes, bits_of, fc_per_channel=fc_per_channel)


def convert(source, output, policy=None, calibration=None, io: str = "int8", force: bool = False,
            min_agreement: Optional[float] = None, parity_examples: int = PARITY_EXAMPLES) -> dict:
    """Convert SOURCE, validate it, write OUTPUT (and OUTPUT's .parity.json / .parity.md).

    min_agreement: fail (nothing written but the parity reports) when the Keras-LiteRT argmax
    agreement is below it; None only reports.
    """
    from edgeasr.eval.parity import parity_report, write_reports
    from edgeasr.quant.policy import as_policy, load_policy

    output = Path(output)
    if output.exists() and not force:
        raise EdgeasrError(f"{output} already exists; pass --force to overwrite it")
    source = Path(source)
    config = None
    if source.is_dir() and (source / "config.json").is_file():
        from edgeasr.train.run_dir import RunDir

        run = RunDir(source)
        config = run.read_config()
        model = run.load_model()
    else:
        model = load_keras(source)
    # Calibration (and parity) data.
    test = None
    if calibration is not None:
        features, labels = load_calibration(calibration, model, config)
        test = load_calibration(calibration, model, config, "test") if Path(calibration).is_dir() else None
    elif config is not None:
        features, labels = calibration_features(config), None
    else:
        raise EdgeasrError(f"{source}: a model file needs --calibration (a dataset folder or a .npy array of "
                           f"model inputs)")
    if test is None and config is not None:
        test = run_test_features(config)
    # The model the converter sees.
    trained_policy = config.policy if config is not None else None
    if is_qat(model):
        if policy is not None and trained_policy is not None and as_policy(
                load_policy(policy) if isinstance(policy, str) else policy).to_dict() != trained_policy.to_dict():
            raise EdgeasrError(f"{source} was trained with policy {trained_policy.name!r}; a QAT model keeps its "
                               f"learned ranges, convert it without --policy")
        qat_model, used_policy, mode = model, trained_policy, "qat"
    else:
        used_policy = as_policy(load_policy(policy) if isinstance(policy, str) else (policy or "w8a8"))
        if used_policy.is_float:
            raise EdgeasrError("convert writes fully-integer models; choose a quantized policy "
                               "(w8a8, w4a8, w4a8-tanh, mixed or a policy JSON file)")
        qat_model, mode = post_training_quantize(model, used_policy, features), "post-training"
    int16 = used_policy is not None and all(
        p.activation_bits == 16 for p in [used_policy.default] + [r.precision for r in used_policy.rules])
    model_bytes, int4_report = convert_keras(qat_model, features, io=io, int16_activations=int16)
    # Metadata.
    details = _io_details(model_bytes)
    values = {
        "labels": list(config.data.labels) if config is not None else None,
        "frontend": _dict(config.frontend) if config is not None else None,
        "window_ms": config.frontend.window_ms if config is not None else None,
        "hop_ms": config.frontend.hop_ms if config is not None else None,
        "input_frames": int(model.input_shape[1]) if len(model.input_shape) > 2 else None,
        "input": details[0], "output": details[1],
        "policy": used_policy.to_dict() if used_policy is not None else {"name": "qat (from the model)",
                                                                          "weight_bits": qat_weight_bits(model)},
        "quantization": mode,
        "io": io,
        "source": {"path": source.name, "sha256": source_hash(source)},
        "int4_weights": [{k: e[k] for k in ("layer", "op", "stored_as", "action")} for e in int4_report],
    }
    model_bytes = embed_metadata(model_bytes, values)
    # Parity on the test split (run directories and dataset folders) or the calibration array.
    parity_features, parity_labels = test if test is not None else (features, labels)
    parity_features = parity_features[:parity_examples]
    parity_labels = None if parity_labels is None else parity_labels[:parity_examples]
    keras_scores = qat_model.predict(parity_features, batch_size=64, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / output.name
        candidate.write_bytes(model_bytes)
        report = parity_report(candidate, keras_scores, parity_features, parity_labels,
                               min_agreement=min_agreement if min_agreement is not None else 0.0)
    report["model"] = str(output)
    json_path, md_path = write_reports(report, output)
    if not report["passed"]:
        raise EdgeasrError(f"parity failed: argmax agreement {report['argmax_agreement']:.2%} < "
                           f"{min_agreement:.2%}; {output} not written (see {md_path})")
    write_bytes_atomic(output, model_bytes, force=force)
    return {"path": str(output), "bytes": len(model_bytes), "int4_share": int4_share(model_bytes),
            "int4": int4_report, "parity": report, "parity_json": str(json_path), "parity_md": str(md_path),
            "quantization": mode, "policy": used_policy.name if used_policy is not None else None,
            **_float_size(model, config)}


def _float_size(model, config) -> dict:
    """Size of the float TFLite twin (same architecture, float weights) and its parameter count."""
    if config is not None:
        from edgeasr.models.registry import build_model

        twin = build_model(config.model)
    elif not is_qat(model):
        twin = model
    else:
        return {"float_bytes": None, "parameters": None}
    return {"float_bytes": len(float_tflite(twin)), "parameters": int(twin.count_params())}


def _dict(value):
    from edgeasr.configs import to_dict

    return to_dict(value)


def _io_details(model_bytes: bytes):
    from edgeasr.runtime.litert import _interpreter_module

    interpreter = _interpreter_module().Interpreter(model_content=model_bytes)
    return tensor_io(interpreter.get_input_details()[0]), tensor_io(interpreter.get_output_details()[0])


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


def run_test_features(config):
    """(features, labels) of the run's test split, or None when the dataset is not there."""
    from edgeasr.data.pipeline import features_of
    from edgeasr.data.speech_commands import load_split

    if not Path(config.dataset).is_dir():
        return None
    test = load_split(Path(config.dataset), config.data, "test", progress=False)
    return (features_of(test.waves, config.frontend), np.asarray(test.labels)) if len(test.labels) else None


def convert_run(run_dir, output, force: bool = False, policy=None, min_agreement: Optional[float] = None) -> dict:
    """Fully-integer LiteRT model of a trained run directory (see `convert`); sizes of it and the float twin."""
    result = convert(run_dir, output, policy=policy, force=force, min_agreement=min_agreement)
    result["int8_bytes"] = result["bytes"]
    return result


def validate(model_path, source, data=None, examples: int = PARITY_EXAMPLES,
             min_agreement: float = 0.99) -> dict:
    """Parity of a .tflite with the Keras model it came from; writes the JSON and Markdown reports.

    A float SOURCE is compared through the same post-training quantisation `convert` applies,
    with the policy and calibration recorded in the model's metadata where possible.
    """
    from edgeasr.eval.parity import parity_report, write_reports
    from edgeasr.quant.policy import PrecisionPolicy
    from edgeasr.runtime.metadata import MetadataError, read_metadata

    try:
        metadata = read_metadata(model_path) or {}
    except MetadataError as exc:
        raise EdgeasrError(str(exc)) from exc
    source = Path(source)
    config = None
    if source.is_dir() and (source / "config.json").is_file():
        from edgeasr.train.run_dir import RunDir

        config = RunDir(source).read_config()
        model = RunDir(source).load_model()
    else:
        model = load_keras(source)
    if data is not None:
        features, labels = load_calibration(data, model, config, "test" if Path(data).is_dir() else "train")
    elif config is not None and run_test_features(config) is not None:
        features, labels = run_test_features(config)
    else:
        raise EdgeasrError(f"{source}: give --data (a dataset folder or a .npy array of model inputs)")
    if not is_qat(model):
        policy_dict = metadata.get("policy")
        if not policy_dict or "default" not in policy_dict:
            raise EdgeasrError(f"{model_path}: no edgeasr policy in its metadata to quantise the float source with")
        calibration = calibration_features(config) if config is not None else features
        model = post_training_quantize(model, PrecisionPolicy.from_dict(policy_dict), calibration)
    features, labels = features[:examples], None if labels is None else labels[:examples]
    keras_scores = model.predict(features, batch_size=64, verbose=0)
    report = parity_report(model_path, keras_scores, features, labels, min_agreement=min_agreement)
    json_path, md_path = write_reports(report, model_path)
    report["json"], report["markdown"] = str(json_path), str(md_path)
    return report
