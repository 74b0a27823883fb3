"""Parity of a converted .tflite with the Keras model it came from (fake-quant for QAT models).

On N examples: argmax agreement Keras vs LiteRT (XNNPACK), the output difference in LSBs of the
int8 output (Keras scores put on the output grid), task accuracy of Keras and LiteRT when labels
are given, and XNNPACK against LiteRT's two other kernel sets (edgeasr.runtime.litert.KERNELS):
the reference kernels, TFLite's plain C++ integer arithmetic that every CPU computes alike, and the builtin
optimized kernels a runtime without XNNPACK uses. Reports as JSON and Markdown.
Like is compared with like: a model converted with `--scores logits` outputs int8 logits, and
`convert` / `validate` pass the Keras logits (the model up to its Softmax); the report's
`scores` says which (from the model's metadata).
litert_accuracy is the same LiteRT path for a model that has no Keras twin to compare with.
Keras scores are passed in, so this module needs no TensorFlow.
"""
from pathlib import Path
from typing import Optional

import numpy as np

from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.runtime.litert import LiteRTModel, quantize
from edgeasr.runtime.metadata import read_metadata

DEFAULT_MIN_AGREEMENT = 0.99


def _raw_outputs(model: LiteRTModel, features: np.ndarray) -> np.ndarray:
    raw = np.stack([model.run_raw(quantize(x, model.input_detail)) for x in features])
    return raw.astype(np.int64) if np.issubdtype(raw.dtype, np.integer) else raw.astype(np.float32)


def _accuracy(top: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(top == np.asarray(labels)))


def litert_accuracy(model_path, features: np.ndarray, labels: np.ndarray, kernels: str = "xnnpack") -> float:
    """Task accuracy of a .tflite on float features (the same path parity_report takes)."""
    raw = _raw_outputs(LiteRTModel(model_path, kernels=kernels), np.asarray(features, np.float32))
    return _accuracy(raw.argmax(-1), labels)


OTHER_KERNELS = ("reference", "builtin")     # compared with XNNPACK


def _against_xnnpack(kernels: str, model_path, features, raw_xnn, labels, quantized: bool) -> dict:
    """XNNPACK's raw outputs against those of another kernel set: argmax agreement, max LSB (int
    outputs) and accuracy; or why this runtime cannot run the model on them (LiteRT's reference
    kernels have no INT4 convolution, `convert --conv-storage int4`)."""
    model, failure = LiteRTModel.on_kernels_if_loadable(model_path, kernels)
    if model is None:
        return {f"{kernels}_unavailable": failure}
    raw = _raw_outputs(model, features)
    result = {f"xnnpack_vs_{kernels}_agreement": float(np.mean(raw_xnn.argmax(-1) == raw.argmax(-1))),
              f"xnnpack_vs_{kernels}_max_lsb": int(np.abs(raw_xnn - raw).max()) if quantized else None}
    if labels is not None:
        result[f"litert_{kernels}_accuracy"] = _accuracy(raw.argmax(-1), labels)
    return result


def parity_report(model_path, keras_scores: np.ndarray, features: np.ndarray, labels: Optional[np.ndarray] = None,
                  min_agreement: float = DEFAULT_MIN_AGREEMENT, float_scores: Optional[np.ndarray] = None) -> dict:
    """Keras (fake-quant) against LiteRT on `features`. float_scores: the float model's, for a
    post-training quantization, whose fake-quant reference already carries the quantization's loss."""
    features = np.asarray(features, np.float32)
    keras_scores = np.asarray(keras_scores, np.float32)
    if not len(features):
        raise EdgeasrError("parity needs at least one example")
    xnn = LiteRTModel(model_path)
    raw_xnn = _raw_outputs(xnn, features)
    detail = xnn.output_detail
    scale, zero_point = detail["quantization"]
    if scale:
        lite_scores = ((raw_xnn - zero_point) * scale).astype(np.float32)
        keras_on_grid = quantize(keras_scores, detail).astype(np.int64)
        lsb = np.abs(keras_on_grid - raw_xnn)
        lsb_stats = {"max": int(lsb.max()), "mean": float(lsb.mean()),
                     "p99": float(np.percentile(lsb, 99))}
    else:
        lite_scores = raw_xnn.astype(np.float32)
        lsb_stats = None
    keras_top, lite_top = keras_scores.argmax(-1), lite_scores.argmax(-1)
    report = {
        "model": str(model_path),
        "examples": int(len(features)),
        "scores": (read_metadata(model_path) or {}).get("scores", "probabilities"),
        "argmax_agreement": float(np.mean(keras_top == lite_top)),
        # Examples whose Keras top score is an exact tie (fake-quant logits are on a grid): there
        # the Keras argmax is the first of the tied classes and LiteRT may pick another.
        "keras_tied_top": int(np.sum(np.sum(keras_scores == keras_scores.max(-1, keepdims=True), -1) > 1)),
        "output_lsb_difference": lsb_stats,
        "output_max_abs_difference": float(np.abs(keras_scores - lite_scores).max()),
        "min_agreement": float(min_agreement),
    }
    if float_scores is not None:
        report["float_vs_litert_agreement"] = float(np.mean(np.asarray(float_scores).argmax(-1) == lite_top))
    if labels is not None:
        report["keras_accuracy"] = _accuracy(keras_top, labels)
        report["litert_accuracy"] = _accuracy(lite_top, labels)
    for kernels in OTHER_KERNELS:
        report.update(_against_xnnpack(kernels, model_path, features, raw_xnn, labels, quantized=bool(scale)))
    report["passed"] = report["argmax_agreement"] >= min_agreement
    return report


KERNEL_WARNING_AGREEMENT = 0.99   # below it, the kernel sets decide examples differently enough to say so


def kernel_warnings(report: dict) -> list:
    """Lines for the console when another kernel set decides more than 1% of the examples otherwise
    than XNNPACK: a device without XNNPACK (or a check on the reference kernels) would then see another
    model. Measured: a post-training-quantized 4-bit DS-CNN-S gives 91.74% on XNNPACK, 83.26% on the
    builtin kernels; QAT files agree within 0.2 points. Why: the builtin FULLY_CONNECTED rounds twice,
    which moves up to 3.6% of a 4-bit layer's outputs 1 LSB up, and the PTQ model's layers amplify the
    shift (scripts/kernel_rounding.py, docs/toolchain_facts.md)."""
    lines = []
    for kernels in OTHER_KERNELS:
        agreement = report.get(f"xnnpack_vs_{kernels}_agreement")
        if agreement is not None and agreement < KERNEL_WARNING_AGREEMENT:
            line = f"warning: the {kernels} kernels decide {1 - agreement:.1%} of the examples otherwise than XNNPACK"
            if f"litert_{kernels}_accuracy" in report:
                line += (f" (accuracy {report[f'litert_{kernels}_accuracy']:.2%} against "
                         f"{report['litert_accuracy']:.2%})")
            lines.append(line + "; quantization-aware training makes the model less sensitive to kernel rounding")
    return lines


FLOAT_WARNING_AGREEMENT = 0.9   # below it, a post-training quantization changed too many decisions to pass quietly


def quantization_warnings(report: dict) -> list:
    """A line for the console when the LiteRT model of a post-training quantization decides many
    examples otherwise than the float model: parity with the fake-quant model cannot show that
    (measured: a 2-bit PTQ model at 99.2% parity kept 64% of the float model's decisions)."""
    agreement = report.get("float_vs_litert_agreement")
    if agreement is None or agreement >= FLOAT_WARNING_AGREEMENT:
        return []
    return [f"warning: the LiteRT model decides {1 - agreement:.1%} of the examples otherwise than the float "
            f"model: the post-training quantization lost that much (check that the calibration inputs are the "
            f"features the model takes, in its units, and cover every class; or use more bits or QAT)"]


def markdown(report: dict) -> str:
    rows = [("examples", report["examples"]), ("outputs compared", report.get("scores", "probabilities")),
            ("argmax agreement Keras vs LiteRT (XNNPACK)", f"{report['argmax_agreement']:.2%}"),
            ("examples whose Keras top score is a tie", report["keras_tied_top"])]
    if report.get("output_lsb_difference"):
        lsb = report["output_lsb_difference"]
        rows.append(("output difference, LSB (max / mean / p99)", f"{lsb['max']} / {lsb['mean']:.3f} / {lsb['p99']:.1f}"))
    rows.append(("output max abs difference", f"{report['output_max_abs_difference']:.4g}"))
    if "float_vs_litert_agreement" in report:
        rows.append(("argmax agreement float Keras vs LiteRT", f"{report['float_vs_litert_agreement']:.2%}"))
    for key, title in (("keras_accuracy", "Keras (fake-quant) accuracy"), ("litert_accuracy", "LiteRT accuracy")):
        if key in report:
            rows.append((title, f"{report[key]:.2%}"))
    for kernels in OTHER_KERNELS:
        rows += _kernel_rows(report, kernels)
    verdict = "passed" if report["passed"] else "FAILED"
    rows.append(("verdict", f"{verdict} (threshold {report['min_agreement']:.2%} agreement)"))
    lines = [f"# Parity: {Path(report['model']).name}", "", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if report.get("notes"):
        lines += ["", "Warnings:", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _kernel_rows(report: dict, kernels: str) -> list:
    name = f"{kernels} kernels"
    if f"{kernels}_unavailable" in report:
        return [(f"XNNPACK vs {name}", f"not compared: {report[f'{kernels}_unavailable']}")]
    rows = [(f"argmax agreement XNNPACK vs {name}", f"{report[f'xnnpack_vs_{kernels}_agreement']:.2%}")]
    if report.get(f"xnnpack_vs_{kernels}_max_lsb") is not None:
        rows.append((f"XNNPACK vs {name}, max LSB", report[f"xnnpack_vs_{kernels}_max_lsb"]))
    if f"litert_{kernels}_accuracy" in report:
        rows.append((f"LiteRT accuracy on the {name}", f"{report[f'litert_{kernels}_accuracy']:.2%}"))
    return rows


def write_reports(report: dict, stem) -> tuple:
    """STEM.parity.json and STEM.parity.md next to the model."""
    stem = Path(stem)
    json_path = stem.with_name(stem.stem + ".parity.json")
    md_path = stem.with_name(stem.stem + ".parity.md")
    write_json_atomic(json_path, report)
    write_bytes_atomic(md_path, markdown(report).encode())
    return json_path, md_path
