#!/usr/bin/env python3
"""How LiteRT's three kernel sets round, op by op, and what that does to a whole model.

`edgeasr convert` warns when another kernel set decides more than 1% of the examples otherwise
than XNNPACK. On the files of scripts/convert_results.py that happens only for post-training-
quantized 4-bit DS-CNN-S files (w4a8-tanh: 91.74% on XNNPACK, 83.26% on the builtin kernels).
This script says why.

For each file, the model runs on the reference kernels (BUILTIN_REF, every tensor kept) over
--clips test clips; that gives every op's inputs. Then:
  1. each op runs alone on those inputs on the builtin kernels and on XNNPACK, and is compared
     with the reference kernels (signed LSB);
  2. every FULLY_CONNECTED is recomputed from the file's integers and requantized in two ways:
     with one rounding of accumulator x multiplier to the nearest integer, and with two (the
     product rounded to its top 32 bits, as gemmlowp's SaturatingRoundingDoublingHighMul does,
     then shifted right with ties rounded upward). The table gives the share of each kernel set's
     outputs that each way reproduces. The first of two roundings keeps only the multiplier's right
     shift in bits below the output LSB, and 4-bit weights have 16x coarser scales than 8-bit ones,
     so 4 bits fewer: a value within 2^-(shift+1) below a half rounds up;
  3. the whole model runs on the builtin kernels against the reference kernels, op by op: how
     the differences chain. The accuracy on the clips is given for each kernel set.

Writes docs/kernel_rounding.md and docs/kernel_rounding.json.

    python scripts/kernel_rounding.py                  # every file of convert_results.py
    python scripts/kernel_rounding.py --models ds_cnn_s --policies w4a8-tanh --how ptq --clips 50
"""
import edgeasr  # noqa: F401

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _repo import MAIN_RUN, REPO, repo_relative
from edgeasr.converters import flatbuffer as fb
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.runtime.litert import LiteRTModel, quantize, tracing_interpreter

MODELS = ("ds_cnn_s", "ffn_stateless")
POLICIES = ("w8a8", "w4a8-tanh", "mixed")
HOW = ("qat", "ptq")
OTHER_KERNELS = ("builtin", "xnnpack")
ROUNDINGS = ("one rounding", "two roundings")
KERNEL_TITLES = {"reference": "the reference kernels", "builtin": "the builtin kernels", "xnnpack": "XNNPACK"}
FUSED_RELU, FUSED_RELU6 = 1, 3                       # schema ActivationFunctionType


# --- running the file --------------------------------------------------------------------------
def traced(model, inputs: np.ndarray, kernels: str, op_names=None, quantize_inputs=False):
    """(interpreter, ops, {op index: (first inputs, first outputs)}) of a whole run on each raw input
    (or float input, quantized onto the model's input first where quantize_inputs), every tensor
    kept; `model` a path or bytes; `op_names`: only ops of these types."""
    interpreter = tracing_interpreter(model, kernels=kernels)
    detail = interpreter.get_input_details()[0]
    if quantize_inputs:
        inputs = quantize(inputs, detail)
    ops = [op for op in interpreter._get_ops_details()
           if len(op["outputs"]) and (op_names is None or op["op_name"] in op_names)]
    seen = {op["index"]: ([], []) for op in ops}
    for example in inputs:
        interpreter.set_tensor(detail["index"], example[None, ...])
        interpreter.invoke()
        for op in ops:
            for values, tensor in zip(seen[op["index"]], (op["inputs"][0], op["outputs"][0])):
                values.append(interpreter.get_tensor(tensor).astype(np.int64))
    return interpreter, ops, {index: (np.stack(x), np.stack(y)) for index, (x, y) in seen.items()}


def alone(model_bytes: bytes, index: int, inputs: np.ndarray, kernels: str):
    """Op `index` run alone on `kernels` for each of its traced inputs, or None where it cannot."""
    single = fb.single_op_model(model_bytes, index)
    model = LiteRTModel.on_kernels_if_loadable(single, kernels)[0] if single is not None else None
    if model is None:
        return None
    interpreter, outputs = model.interpreter, []
    for example in inputs:
        interpreter.set_tensor(model.input_detail["index"], example.astype(model.input_detail["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(model.output_detail["index"]).astype(np.int64))
    return np.stack(outputs)


# --- a FULLY_CONNECTED by hand -----------------------------------------------------------------
def quantized_multiplier(real: np.ndarray):
    """TFLite's QuantizeMultiplier: real = q * 2^(shift - 31) with q a 31-bit fraction in [2^30, 2^31]."""
    fraction, shift = np.frexp(real)
    q = np.round(fraction * 2.0 ** 31).astype(np.int64)
    carry = q == 2 ** 31
    return np.where(carry, q // 2, q), np.where(carry, shift + 1, shift).astype(np.int64)


def requantized(accumulator: np.ndarray, real_multiplier: np.ndarray, rounding: str) -> np.ndarray:
    """accumulator x multiplier in integers: rounded once, or twice (to the nearest integer of the
    product's top 32 bits, then a right shift rounding ties upward)."""
    q, shift = quantized_multiplier(real_multiplier)
    if (shift > 0).any():
        raise ValueError("multipliers of 1 or more are not modelled here")
    right = -shift
    if rounding == "one rounding":
        total = 31 + right
        return (accumulator * q + (np.int64(1) << (total - 1))) >> total
    product = accumulator * q
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))         # C++ division truncates
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    return (high + half) >> right


def fully_connected_operands(interpreter, inputs, outputs) -> dict:
    """What a FULLY_CONNECTED computes with, read from the interpreter: weight (out, in) and bias as
    int64, the weight scale per output channel, the input's (scale, zero point), the weight tensor's
    name and the output tensor's details."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    x_detail, w_detail, b_detail, y_detail = (details[i] for i in (*inputs[:3], outputs[0]))
    weight = interpreter.get_tensor(w_detail["index"]).astype(np.int64)
    scales = w_detail["quantization_parameters"]["scales"].astype(np.float64)
    return {"weight": weight, "bias": interpreter.get_tensor(b_detail["index"]).astype(np.int64),
            "weight_scale": np.broadcast_to(scales, weight.shape[:1]), "input": x_detail["quantization"],
            "weight_name": w_detail["name"], "output": y_detail}


def fully_connected_by_hand(op, interpreter, x: np.ndarray):
    """({rounding: outputs}, right shifts) of a FULLY_CONNECTED recomputed from the file's integers
    on inputs x; `op` is the flatbuffer operator."""
    fc = fully_connected_operands(interpreter, op.inputs, op.outputs)
    weight = fc["weight"]
    input_scale, input_zero_point = fc["input"]
    output_scale, output_zero_point = fc["output"]["quantization"]
    accumulator = (x.reshape(-1, weight.shape[1]) - input_zero_point) @ weight.T + fc["bias"]
    real = input_scale * fc["weight_scale"] / output_scale
    activation = op.builtinOptions.fusedActivationFunction if op.builtinOptions is not None else 0
    low = output_zero_point if activation in (FUSED_RELU, FUSED_RELU6) else -128
    high = min(127, output_zero_point + round(6 / output_scale)) if activation == FUSED_RELU6 else 127
    outputs = {rounding: np.clip(requantized(accumulator, real, rounding) + output_zero_point, low, high)
               for rounding in ROUNDINGS}
    return outputs, sorted({int(-shift) for shift in quantized_multiplier(real)[1]})


# --- one file ----------------------------------------------------------------------------------
def difference(values: np.ndarray, reference: np.ndarray) -> dict:
    d = values.reshape(reference.shape) - reference
    return {"off": float(np.mean(d != 0)), "above": float(np.mean(d > 0)), "below": float(np.mean(d < 0)),
            "signed_mean_lsb": float(d.mean()), "max_lsb": int(np.abs(d).max())}


def share_equal(values, expected: np.ndarray):
    return None if values is None else float(np.mean(values.reshape(-1) == expected.reshape(-1)))


def op_rows(model_bytes: bytes, interpreter, ops, reference: dict) -> list:
    model = fb.load(model_bytes)
    operators, tensors = model.subgraphs[0].operators, model.subgraphs[0].tensors
    rows = []
    for op in ops:
        inputs, expected = reference[op["index"]]
        outputs = {kernels: alone(model_bytes, op["index"], inputs, kernels) for kernels in OTHER_KERNELS}
        row = {"op": f"{op['index']:03d}_{op['op_name']}",
               **{k: None if v is None else difference(v, expected) for k, v in outputs.items()}}
        if op["op_name"] == "FULLY_CONNECTED":
            operator = operators[op["index"]]
            by_hand, row["right_shifts"] = fully_connected_by_hand(operator, interpreter, inputs)
            row["weights"] = fb.type_names()[tensors[operator.inputs[1]].type]
            row["reproduced"] = {rounding: {k: share_equal(v, by_hand[rounding])
                                            for k, v in {"reference": expected, **outputs}.items()}
                                 for rounding in ROUNDINGS}
        rows.append(row)
    return rows


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.reshape(len(labels), -1).argmax(-1) == labels))


def analyse(run_dir: Path, path: Path, clips: int) -> dict:
    from edgeasr.converters.sources import load_source, run_test_features

    _, config = load_source(run_dir)
    features, labels = run_test_features(config)
    features, labels = features[:clips], np.asarray(labels[:clips])
    model_bytes = path.read_bytes()
    inputs = quantize(features, tracing_interpreter(model_bytes, kernels="reference").get_input_details()[0])
    interpreter, ops, reference = traced(model_bytes, inputs, "reference")
    _, _, builtin = traced(model_bytes, inputs, "builtin")
    last = ops[-1]["index"]
    xnnpack = LiteRTModel(model_bytes)
    xnnpack_outputs = np.stack([xnnpack.run_raw(example) for example in inputs])
    return {"file": path.name, "clips": int(len(labels)),
            "ops": op_rows(model_bytes, interpreter, ops, reference),
            "chained_builtin": [{"op": f"{op['index']:03d}_{op['op_name']}",
                                 **difference(builtin[op["index"]][1], reference[op["index"]][1])} for op in ops],
            "accuracy": {"reference": accuracy(reference[last][1], labels),
                         "builtin": accuracy(builtin[last][1], labels), "xnnpack": accuracy(xnnpack_outputs, labels)}}


# --- report ------------------------------------------------------------------------------------
def share_text(d) -> str:
    if d is None:
        return "-"
    return "0" if not d["off"] else f"{d['off']:.2%} ({d['signed_mean_lsb']:+.3f}, max {d['max_lsb']})"


def reproduced_text(row, rounding) -> str:
    shares = row["reproduced"][rounding]
    return " / ".join("-" if shares[k] is None else f"{shares[k]:.2%}" for k in ("reference", *OTHER_KERNELS))


def finding_lines(results) -> list:
    """Per kernel set and FULLY_CONNECTED weight storage: the least share each rounding reproduces."""
    lines = []
    for weights in ("INT8", "INT4"):
        rows = [row for result in results for row in result["ops"] if row.get("weights") == weights]
        if not rows:
            continue
        for kernels in ("reference", *OTHER_KERNELS):
            shares = {rounding: [row["reproduced"][rounding][kernels] for row in rows
                                 if row["reproduced"][rounding][kernels] is not None] for rounding in ROUNDINGS}
            shifts = [shift for row in rows for shift in row["right_shifts"]]
            if shares[ROUNDINGS[0]]:
                lines.append(f"- {weights} FULLY_CONNECTED on {KERNEL_TITLES[kernels]} ({len(rows)} ops, right shifts "
                             f"{min(shifts)}-{max(shifts)}): one rounding reproduces at least "
                             f"{min(shares[ROUNDINGS[0]]):.2%} of the outputs, two roundings at least "
                             f"{min(shares[ROUNDINGS[1]]):.2%}.")
    return lines


def markdown(results) -> str:
    lines = ["# How LiteRT's kernel sets round (scripts/kernel_rounding.py)", "",
             "Files of scripts/convert_results.py. Each op alone, on the inputs the reference kernels (BUILTIN_REF) "
             "gave it, against the reference kernels' output: share of outputs off (signed mean LSB, largest). "
             "FULLY_CONNECTED recomputed from the file's integers: share of the reference / builtin / XNNPACK outputs "
             "that one rounding and that two roundings (top 32 bits of the product, then a right shift with ties "
             "up) reproduce; right shift: of the requantization multiplier (the first of two roundings keeps that "
             "many bits below the output LSB). Ops off on no kernel set and not FULLY_CONNECTED are left out.", "",
             *finding_lines(results), "",
             "| file | op | builtin alone | XNNPACK alone | one rounding reproduces | two roundings reproduce | "
             "right shift |", "|---|---|---|---|---|---|---|"]
    for result in results:
        for row in result["ops"]:
            off = any(row[k] and row[k]["off"] for k in OTHER_KERNELS)
            if not off and "reproduced" not in row:
                continue
            fc = "reproduced" in row
            lines.append(f"| {result['file']} | {row['op']} | {share_text(row['builtin'])} | "
                         f"{share_text(row['xnnpack'])} | {reproduced_text(row, ROUNDINGS[0]) if fc else ''} | "
                         f"{reproduced_text(row, ROUNDINGS[1]) if fc else ''} | "
                         f"{'-'.join(map(str, (row['right_shifts'][0], row['right_shifts'][-1]))) if fc else ''} |")
    lines += ["", "Whole model on the builtin kernels against the reference kernels (each op's output, signed mean "
              "LSB, after every op before it ran on its own kernels too), and the accuracy of each kernel set on "
              "the clips:", "", "| file | clips | accuracy reference / builtin / XNNPACK | builtin, op by op |",
              "|---|---:|---|---|"]
    for result in results:
        acc = result["accuracy"]
        chain = ", ".join(f"{c['op'].split('_', 1)[1]} {c['signed_mean_lsb']:+.3f}" for c in result["chained_builtin"]
                          if c["off"])
        lines.append(f"| {result['file']} | {result['clips']} | {acc['reference']:.2%} / {acc['builtin']:.2%} / "
                     f"{acc['xnnpack']:.2%} | {chain or 'identical'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "build" / "qat_runs",
                        help="qat_results.py's runs; a model's float run gives its test clips")
    parser.add_argument("--files", type=Path, default=REPO / "build" / "convert_results",
                        help="Where scripts/convert_results.py wrote MODEL_POLICY_HOW.tflite.")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="Folder kernel_rounding.md and kernel_rounding.json are written to (default: docs).")
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="Models whose files are analysed (default: %(default)s).")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES),
                        help="Policies whose files are analysed (default: %(default)s).")
    parser.add_argument("--how", nargs="+", default=list(HOW), choices=HOW,
                        help="Which files of each policy: qat (QAT run) and/or ptq (post-training quantized float "
                             "run) (default: %(default)s).")
    parser.add_argument("--clips", type=int, default=300, help="Test clips every kernel set runs.")
    args = parser.parse_args(argv)
    results = []
    for model in args.models:
        run = args.runs / model / ("float" + MAIN_RUN)
        for policy in args.policies:
            for how in args.how:
                path = args.files / f"{model}_{policy}_{how}.tflite"
                if not (run / "config.json").is_file() or not path.is_file():
                    print(f"kernel_rounding: {repo_relative(run)} or {repo_relative(path)} missing; run "
                          f"scripts/qat_results.py and scripts/convert_results.py first", file=sys.stderr)
                    continue
                results.append({"model": model, "policy": policy, "how": how, **analyse(run, path, args.clips)})
                print(json.dumps({k: results[-1][k] for k in ("file", "accuracy")}), flush=True)
    if not results:
        raise SystemExit("kernel_rounding: nothing to analyse")
    write_json_atomic(args.docs / "kernel_rounding.json", {"results": results})
    write_bytes_atomic(args.docs / "kernel_rounding.md", markdown(results).encode())


if __name__ == "__main__":
    main()
