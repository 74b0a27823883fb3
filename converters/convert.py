"""Keras -> fully-integer LiteRT, with guaranteed INT4 packing, metadata and parity.

    convert(SOURCE, OUTPUT, policy=None, calibration=None, io="int8", scores="auto")

SOURCE is an edgeasr run directory or a tf_keras model file (SavedModel folder, .h5, .keras),
read by converters/sources.py. A QAT model keeps its learned ranges; its weight bits come from its
own quantizers. A float model is quantised post-training with edgeasr's quantizers under
`policy` (w8a8 by default, converters/ptq.py). Then, in order: the stock converter
(converters/stock.py), the fully-integer check naming float ops and their layers
(converters/integer_check.py), the INT4 packing pass (converters/int4.py), pointwise
convolutions as FULLY_CONNECTED (converters/pointwise.py), global average pooling as MEAN with
its own scale (converters/pooling.py), trimming what the runtime does not need
(converters/trim.py), the `edgeasr` metadata entry, parity against the Keras model and an
atomic write.

scores="logits" converts the model up to its final Softmax layer: the int8 output is the logits
tensor with its learned range, and the runtime applies the softmax in float (an int8 softmax
output tops out at 255/256, so confident false peaks saturate exactly like keywords;
docs/stream_results.md). "probabilities" keeps the model's own output (its Softmax, if any);
"auto" is logits for a model ending in a Softmax layer, else the model's own output.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import tf_keras as keras

from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.int4 import int4_metadata, int4_share, keras_layer_names, pack_int4_weights
from edgeasr.converters.integer_check import INTEGER_TYPES, check_fully_integer, float_ops  # noqa: F401
from edgeasr.converters.metadata import (calibration_digest, embed_metadata, legacy_source_hash, source_hash,
                                         tensor_io)
from edgeasr.converters.pointwise import pointwise_as_fully_connected
from edgeasr.converters.pooling import global_pools_as_mean
from edgeasr.converters.ptq import calibrate_activations, post_training_quantize  # noqa: F401
from edgeasr.converters.sources import (  # noqa: F401
    calibration_features, check_paths, described_inputs, input_notes, is_qat, load_calibration, load_keras,
    load_source, qat_weight_bits, run_test_features, spread_rows)
from edgeasr.converters.stock import CALIBRATION_EXAMPLES, float_tflite, float_tflite_bytes, int8_tflite  # noqa: F401
from edgeasr.converters.trim import trim_model
from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic

PARITY_EXAMPLES = 500
IO_TYPES = ("int8", "float")
SCORE_KINDS = ("auto", "logits", "probabilities")


# --- the whole conversion ------------------------------------------------------------------------
def convert_keras(model: keras.Model, calibration: np.ndarray, io: str = "int8", fc_per_channel: bool = False,
                  conv_storage: str = "int8", int16_activations: bool = False, trim: bool = True,
                  float_model: Optional[keras.Model] = None) -> tuple:
    """(model bytes, INT4 report) of a QAT (or PTQ'd) Keras model: convert, check, pack, rewrite
    pointwise convolutions and global pools, trim. conv_storage: see converters/int4.py.

    fc_per_channel=False keeps a 4-bit FULLY_CONNECTED weight quantized per tensor with its one
    scale: on LiteRT 2.3 XNNPACK delegates it as it does the per-channel copy, with identical
    outputs and latency, and the file is smaller by a float32 scale and an int64 zero point per
    output unit (docs/toolchain_facts.md). True repeats the scale per output channel, for older
    XNNPACK builds that take INT4 FULLY_CONNECTED only per channel.
    """
    if io not in IO_TYPES:
        raise EdgeasrError(f"--io must be one of {', '.join(IO_TYPES)}, got {io!r}")
    names = keras_layer_names(model)
    bits = qat_weight_bits(model)
    model_bytes = int8_tflite(_converted_model(model, float_model, int16_activations, bits), calibration, io=io,
                              int16_activations=int16_activations)
    check_fully_integer(model_bytes, names, io)
    bits_of = (lambda tensor: (fb.layer_of(tensor, names), bits.get(fb.layer_of(tensor, names))))
    model_bytes, report = pack_int4_weights(model_bytes, bits_of, fc_per_channel=fc_per_channel,
                                            conv_storage=conv_storage)
    model_bytes, rewritten = pointwise_as_fully_connected(model_bytes)
    model_bytes, _ = global_pools_as_mean(model_bytes, np.asarray(calibration, np.float32)[:CALIBRATION_EXAMPLES])
    model_bytes = fb.without_unused_operator_codes(model_bytes)
    for entry in report:
        if entry["tensor"] in rewritten:
            entry["op"], entry["action"] = "FULLY_CONNECTED", entry["action"] + ", pointwise CONV_2D as FULLY_CONNECTED"
    return (trim_model(model_bytes, names) if trim else model_bytes), report


def _converted_model(model, float_model, int16_activations, bits):
    """What the stock converter gets. 16x8: it does not carry a 16-bit fake-quant graph to int16
    input and output (TF 2.21: "Unsupported output type INT16 for output tensor ... FLOAT32"), so
    a float model is quantized by its own 16x8 calibration (8-bit per-channel weights), and the
    fake-quant model stays the Keras side of parity."""
    if not int16_activations or float_model is None:
        return model
    narrow = sorted(layer for layer, layer_bits in bits.items() if layer_bits is not None and layer_bits < 8)
    if narrow:
        raise EdgeasrError(f"16-bit activations are converted with 8-bit weights; layers {', '.join(narrow)} ask "
                           f"for fewer weight bits")
    return float_model


def _parity_data(calibration, model, config, examples):
    """(features, labels) parity runs on, at most `examples` spread over them: the test split of a
    run or dataset folder, else the calibration array."""
    if calibration is not None and Path(calibration).is_dir():
        return load_calibration(calibration, model, config, "test", limit=examples)
    test = _run_test_sample(config, examples)
    if test is not None:
        return test
    if calibration is None:
        return calibration_features(config), None
    return load_calibration(calibration, model, config, limit=examples)


def _run_test_sample(config, examples):
    """At most `examples` (features, labels) spread over a run's test split; None without one."""
    test = run_test_features(config) if config is not None else None
    if test is None:
        return None
    rows = spread_rows(len(test[1]), examples)
    return test[0][rows], test[1][rows]


def model_to_convert(model, config, policy, features, source):
    """(Keras model the converter sees, policy or None, "qat" | "post-training")."""
    from edgeasr.quant.policy import check_16bit_activations

    refuse_policy_for_qat(model, config, policy, source)
    if is_qat(model):
        if config is not None:
            check_16bit_activations(config.policy, post_training=False)
        refuse_16bit_qat(model, source)
        return model, config.policy if config is not None else None, "qat"
    used_policy = post_training_policy(model, policy)
    return post_training_quantize(model, used_policy, features), used_policy, "post-training"


def post_training_policy(model, policy):
    """The policy a float model is quantized with (default w8a8), checked against the model before
    any calibration data is read: a float policy, 16-bit activations the converter cannot give, and
    rules that name none of its layers are refused."""
    from edgeasr.quant.policy import as_policy, check_16bit_activations, load_policy
    from edgeasr.quant.qat import check_rules_name_layers

    used_policy = as_policy(load_policy(policy) if isinstance(policy, str) else (policy or "w8a8"))
    if used_policy.is_float:
        raise EdgeasrError("convert writes fully-integer models; choose a quantized policy "
                           "(w8a8, w4a8, w4a8-tanh, mixed or a policy JSON file)")
    check_16bit_activations(used_policy, post_training=True, layer_names=[layer.name for layer in model.layers])
    check_rules_name_layers(model, used_policy)
    return used_policy


def refuse_16bit_qat(model, source) -> None:
    """A QAT model file built through the Python API carries no policy; its 16-bit activation
    quantizers would reach the stock converter's 16x8 mode, which fails on them (a DEQUANTIZE or a
    depthwise int32 bias, measured: `policy.check_16bit_activations`)."""
    from edgeasr.quant.qat import activation_bits

    sixteen = [name for name, bits in activation_bits(model).items() if bits == 16]
    if sixteen:
        raise EdgeasrError(f"{source}: a QAT model with 16-bit activations ({', '.join(sixteen[:4])}"
                           f"{', ...' if len(sixteen) > 4 else ''}), which the stock converter does not convert; "
                           f"16-bit activations convert only post-training: convert the float model with a "
                           f"policy of 16 bits for every layer")


def refuse_policy_for_qat(model, config, policy, source) -> None:
    """A QAT model converts with the policy it was trained with: another --policy is refused
    (checked before calibration data is read, so the refusal comes first)."""
    from edgeasr.quant.policy import as_policy, load_policy

    if not is_qat(model) or policy is None:
        return
    trained_policy = config.policy if config is not None else None
    asked = as_policy(load_policy(policy) if isinstance(policy, str) else policy)
    if trained_policy is None or asked.to_dict() != trained_policy.to_dict():
        trained = f"policy {trained_policy.name!r}" if trained_policy is not None else "its own precision"
        raise EdgeasrError(f"{source} was trained with {trained}; a QAT model keeps its learned ranges, "
                           f"convert it without --policy")


def resolved_scores(model: keras.Model, scores: str) -> str:
    """"logits" or "probabilities": what `scores` ("auto" included) means for this model."""
    if scores not in SCORE_KINDS:
        raise EdgeasrError(f"--scores must be one of {', '.join(SCORE_KINDS)}, got {scores!r}")
    if scores == "auto":
        return "logits" if isinstance(model.layers[-1], keras.layers.Softmax) else "probabilities"
    return scores


def with_scores(model: keras.Model, scores: str) -> keras.Model:
    """The model itself ("probabilities"), or the sub-model ending at the input of its final
    Softmax layer ("logits"; in a QAT model that is the wrapped `logits` Dense's output)."""
    if resolved_scores(model, scores) == "probabilities":
        return model
    last = model.layers[-1]
    if not isinstance(last, keras.layers.Softmax):
        raise EdgeasrError(f"--scores logits needs a model ending in a Softmax layer; {model.name}'s last layer "
                           f"is {last.name} ({type(last).__name__}); convert it with --scores probabilities")
    return keras.Model(model.inputs, last.input, name=f"{model.name}_logits")


def uses_int16_activations(policy) -> bool:
    return policy is not None and all(
        p.activation_bits == 16 for p in [policy.default] + [r.precision for r in policy.rules])


def convert(source, output, policy=None, calibration=None, io: str = "int8", force: bool = False,
            min_agreement: Optional[float] = None, parity_examples: Optional[int] = PARITY_EXAMPLES,
            fc_per_channel: bool = False, conv_storage: str = "int8", scores: str = "auto",
            labels=None, frontend: Optional[str] = None) -> dict:
    """Convert SOURCE, validate it, write OUTPUT (and OUTPUT's .parity.json / .parity.md).
    SOURCE, OUTPUT and calibration are paths (a model object is saved first: its file is hashed).

    labels, frontend: a model file's class names (a list, names separated by commas, or a text
    file) and input features (`described_inputs`); a run directory has its own.

    min_agreement: fail when the Keras-LiteRT argmax agreement is below it: OUTPUT is not written,
    the parity reports go to OUTPUT's name + .rejected; None only reports.
    """
    from edgeasr.eval.parity import parity_report, write_reports

    check_paths(source=source, output=output, calibration=calibration)
    output = Path(output)
    if output.exists() and not force:
        raise EdgeasrError(f"{output} already exists; pass --force to overwrite it")
    source = Path(source)
    model, config = load_source(source)
    scores = resolved_scores(model, scores)
    with_scores(model, scores)                     # a model without a final Softmax fails here, early
    if config is not None and (labels or frontend):
        raise EdgeasrError(f"{source} is a run directory: its labels and frontend come from its config.json; "
                           f"--labels and --frontend are for model files")
    labels, frontend = ((list(config.data.labels), config.frontend) if config is not None
                        else described_inputs(model, labels, frontend))
    refuse_policy_for_qat(model, config, policy, source)
    notes = []
    if calibration is not None:
        features = load_calibration(calibration, model, config, limit=CALIBRATION_EXAMPLES)[0]
        notes = input_notes(model, features, f"calibration data {calibration}", calibrating=not is_qat(model))
    elif config is not None:
        features = calibration_features(config)
    else:
        raise EdgeasrError(f"{source}: a model file needs --calibration (a dataset folder or a .npy array of "
                           f"model inputs)")
    qat_model, used_policy, mode = model_to_convert(model, config, policy, features, source)
    qat_model = with_scores(qat_model, scores)
    model_bytes, int4_report = convert_keras(qat_model, features, io=io, fc_per_channel=fc_per_channel,
                                             conv_storage=conv_storage,
                                             int16_activations=uses_int16_activations(used_policy),
                                             float_model=with_scores(model, scores) if mode == "post-training"
                                             else None)
    model_bytes = embed_metadata(model_bytes, {**_metadata(model, labels, frontend, used_policy, mode, io, source,
                                                           model_bytes, int4_report), "scores": scores,
                                               "calibration": {"examples": len(features),
                                                               "sha256": calibration_digest(features)}})
    parity_features, parity_labels = _parity_data(calibration, model, config, parity_examples)
    keras_scores = qat_model.predict(parity_features, batch_size=64, verbose=0)
    float_scores = (with_scores(model, scores).predict(parity_features, batch_size=64, verbose=0)
                    if mode == "post-training" else None)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / output.name
        candidate.write_bytes(model_bytes)
        report = parity_report(candidate, keras_scores, parity_features, parity_labels,
                               min_agreement=min_agreement if min_agreement is not None else 0.0,
                               float_scores=float_scores)
    report["model"], report["notes"] = str(output), notes
    # a rejected conversion's reports must not replace those of a model already at OUTPUT
    json_path, md_path = write_reports(report, output if report["passed"] else _rejected(output))
    if not report["passed"]:
        raise EdgeasrError(f"parity failed: argmax agreement {report['argmax_agreement']:.2%} < "
                           f"{min_agreement:.2%}; {output} not written (see {md_path})")
    write_bytes_atomic(output, model_bytes, force=force)
    return {"path": str(output), "bytes": len(model_bytes), "int4_share": int4_share(model_bytes),
            "int4": int4_report, "parity": report, "parity_json": str(json_path), "parity_md": str(md_path),
            "quantization": mode, "policy": used_policy.name if used_policy is not None else None,
            **_float_size(model, config)}


def _rejected(path: Path) -> Path:
    """Where a failed parity check's reports go (OUTPUT.rejected.parity.*): a model already at the
    path keeps the reports that belong to it."""
    return path.with_name(path.stem + ".rejected" + path.suffix)


def _metadata(model, labels, frontend, policy, mode, io, source, model_bytes, int4_report) -> dict:
    details = _io_details(model_bytes)
    return {
        "labels": labels,
        "frontend": _dict(frontend) if frontend is not None else None,
        "window_ms": frontend.window_ms if frontend is not None else None,
        "hop_ms": frontend.hop_ms if frontend is not None else None,
        "input_frames": int(model.input_shape[1]) if len(model.input_shape) > 2 else None,
        "input": details[0], "output": details[1],
        "policy": policy.to_dict() if policy is not None else {"name": "qat (from the model)",
                                                               "weight_bits": qat_weight_bits(model)},
        "quantization": mode,
        "io": io,
        "source": {"path": source.name, "sha256": source_hash(source)},
        "int4_weights": int4_metadata(int4_report),
    }


def _float_size(model, config) -> dict:
    """Size of the float TFLite twin (same architecture, distinct float weights: `float_tflite_bytes`)
    and its parameter count."""
    if config is not None:
        from edgeasr.models.registry import build_model

        twin = build_model(config.model)
    elif not is_qat(model):
        twin = model
    else:
        return {"float_bytes": None, "parameters": None}
    return {"float_bytes": float_tflite_bytes(twin), "parameters": int(twin.count_params())}


def _dict(value):
    from edgeasr.configs import to_dict

    return to_dict(value)


def _io_details(model_bytes: bytes):
    from edgeasr.runtime.litert import _interpreter_module

    interpreter = _interpreter_module().Interpreter(model_content=model_bytes)
    return tensor_io(interpreter.get_input_details()[0]), tensor_io(interpreter.get_output_details()[0])


def write_model(path, model_bytes: bytes, force: bool = False) -> Path:
    return write_bytes_atomic(path, model_bytes, force=force)


def convert_run(run_dir, output, force: bool = False, policy=None, min_agreement: Optional[float] = None,
                parity_examples: Optional[int] = PARITY_EXAMPLES) -> dict:
    """Fully-integer LiteRT model of a trained run directory (see `convert`); sizes of it and the float twin.
    parity_examples=None: parity on the whole test split."""
    result = convert(run_dir, output, policy=policy, force=force, min_agreement=min_agreement,
                     parity_examples=parity_examples)
    result["int8_bytes"] = result["bytes"]
    return result


def validate(model_path, source, data=None, examples: int = PARITY_EXAMPLES,
             min_agreement: float = 0.99, calibration=None, report_path=None) -> dict:
    """Parity of a .tflite with the Keras model it came from; writes the JSON and Markdown reports
    beside `report_path` (default: the model, where convert wrote its own).

    A float SOURCE is compared through the same post-training quantisation `convert` applies: the
    policy recorded in the model's metadata, calibrated on `calibration` (default: what convert
    takes by default, the run's training clips, or for a model file the --data inputs). The
    report's notes say when SOURCE or the calibration differ from what the model records: the
    LSB differences then measure two quantisations, not the conversion.
    """
    from edgeasr.eval.parity import parity_report, write_reports
    from edgeasr.quant.policy import PrecisionPolicy
    from edgeasr.runtime.metadata import MetadataError, read_metadata

    check_paths(model_path=model_path, source=source, data=data, calibration=calibration)
    try:
        metadata = read_metadata(model_path) or {}
    except MetadataError as exc:
        raise EdgeasrError(str(exc)) from exc
    from edgeasr.train.asr_fit import is_asr_run

    if "asr" in metadata or is_asr_run(source):
        raise EdgeasrError(f"{model_path}: validate compares keyword models; a speech-recognition model's parity "
                           f"(frames and transcripts) is written by convert to its .parity.json, and `edgeasr "
                           f"eval-asr RUN MODEL.tflite` compares their WER")
    model, config = load_source(source)
    notes = _source_notes(metadata, source)
    if calibration is not None and is_qat(model):
        raise EdgeasrError(f"--calibration: {source} is a QAT model, which converts with its learned ranges and "
                           f"takes no calibration; the option is for a float source")
    if data is not None:
        features, labels = load_calibration(data, model, config, "test" if Path(data).is_dir() else "train",
                                            limit=examples, what="--data")
        notes += input_notes(model, features, f"--data {data}", calibrating=False)
    elif (test := _run_test_sample(config, examples)) is not None:
        features, labels = test
    else:
        raise EdgeasrError(f"{source}: give --data (a dataset folder or a .npy array of model inputs)")
    if not is_qat(model):
        policy_dict = metadata.get("policy")
        if not policy_dict or "default" not in policy_dict:
            raise EdgeasrError(f"{model_path}: no edgeasr policy in its metadata to quantise the float source with")
        rows = _validation_calibration(model, config, calibration if calibration is not None else
                                       (None if config is not None else data))
        notes += _calibration_notes(metadata, rows)
        float_scores = with_scores(model, metadata.get("scores", "probabilities")).predict(features, batch_size=64,
                                                                                         verbose=0)
        model = post_training_quantize(model, PrecisionPolicy.from_dict(policy_dict), rows)
    else:
        float_scores = None
    model = with_scores(model, metadata.get("scores", "probabilities"))
    keras_scores = model.predict(features, batch_size=64, verbose=0)
    report = parity_report(model_path, keras_scores, features, labels, min_agreement=min_agreement,
                           float_scores=float_scores)
    report["notes"] = notes
    if report_path is not None:
        stem = Path(f"{report_path}.tflite")         # write_reports names the reports after a model's stem
    else:
        stem = Path(model_path) if report["passed"] else _rejected(Path(model_path))
    json_path, md_path = write_reports(report, stem)
    report["json"], report["markdown"] = str(json_path), str(md_path)
    return report


def _validation_calibration(model, config, calibration) -> np.ndarray:
    """The calibration inputs validate quantises a float source with, drawn as convert draws them."""
    if calibration is None:
        if not Path(config.dataset).is_dir():
            raise EdgeasrError(f"{config.dataset}: the run's dataset, which convert calibrated with, is not found "
                               f"from here (runs trained before paths were stored absolute keep them relative to "
                               f"where they trained); give --calibration with that data")
        return calibration_features(config)
    return load_calibration(calibration, model, config, limit=CALIBRATION_EXAMPLES)[0]


def _calibration_notes(metadata: dict, rows: np.ndarray) -> list:
    recorded = (metadata.get("calibration") or {}).get("sha256")
    if recorded is None or recorded == calibration_digest(rows):
        return []
    return [f"the float source was re-quantised with other calibration inputs than the conversion used "
            f"({len(rows)} inputs, sha256 {calibration_digest(rows)} vs {recorded}): the Keras reference is "
            f"another quantisation; pass --calibration with the data given to convert"]


def _source_notes(metadata: dict, source) -> list:
    recorded = (metadata.get("source") or {}).get("sha256")
    if recorded is None or recorded in (source_hash(source), legacy_source_hash(source)):
        return []
    return [f"{source} is not what the model was converted from (its sha256 differs from the one in the "
            f"model's metadata, {recorded[:16]}...)"]
