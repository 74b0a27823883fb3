#!/usr/bin/env python3
"""How many outputs of each FULLY_CONNECTED the int32 bias rounding moves, which Keras does not simulate.

A TFLite FULLY_CONNECTED adds its bias as an int32 in steps of input scale x weight scale; the
fake-quant Keras model (TFMOT) adds the float bias. With 4-bit weights the weight scale is about 18x
coarser than with 8 bits, and so is the bias step. For every FULLY_CONNECTED of a converted file, on
the inputs it gets on --clips test clips (LiteRT's reference kernels, every tensor kept), the op is
recomputed from the file's integers twice, with its int32 bias and with the Keras layer's float
bias, each requantized exactly, and compared with LiteRT's output. The first recomputation is the
control: it must match LiteRT. Convolutions and depthwise convolutions are not recomputed.

Writes docs/bias_rounding.md and docs/bias_rounding.json.

    python scripts/bias_rounding.py                       # seed-0 QAT runs, files of convert_results.py
    python scripts/bias_rounding.py --models ffn_stateless --policies mixed
"""
import edgeasr  # noqa: F401

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _repo import MAIN_RUN, REPO, repo_relative
from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.int4 import keras_layer_names
from edgeasr.files import write_bytes_atomic, write_json_atomic
from kernel_rounding import fully_connected_operands, traced

MODELS = ("ffn_stateless", "ds_cnn_s")
POLICIES = ("w8a8", "w4a8-tanh", "mixed")


def float_bias(model, layer_name: str) -> np.ndarray:
    """The bias the Keras model adds in float: a Dense's own, or a folded conv+BN's folded one."""
    from edgeasr.quant.qat import FoldedConvBN

    names = {layer.name for layer in model.layers}
    layer = model.get_layer("quant_" + layer_name if "quant_" + layer_name in names else layer_name)
    inner = getattr(layer, "layer", layer)
    bias = inner.folded_bias() if isinstance(inner, FoldedConvBN) else inner.bias
    return np.asarray(bias, np.float64)


def traced_fully_connected(path, features: np.ndarray):
    """(interpreter, [(op, {"input": int64, "output": int64})]) of every FULLY_CONNECTED, one row of
    each per clip, on the reference kernels."""
    interpreter, ops, seen = traced(path, features, "reference", op_names=("FULLY_CONNECTED",), quantize_inputs=True)
    return interpreter, [(op, dict(zip(("input", "output"), seen[op["index"]]))) for op in ops]


def requantized(accumulator, bias, input_scale, weight_scale, output, relu: bool):
    """Exact requantization of an FC's int32 accumulator plus a (float) bias onto its int8 output."""
    scale, zero_point = output["quantization"]
    values = (accumulator * (input_scale * weight_scale) + bias) / scale
    return np.clip(np.round(values) + zero_point, zero_point if relu else -128, 127)


def analyse(run_dir, path, clips: int) -> dict:
    from edgeasr.converters.sources import load_source, run_test_features

    model, config = load_source(run_dir)
    features, _ = run_test_features(config)
    interpreter, ops = traced_fully_connected(path, features[:clips])
    names = keras_layer_names(model)
    operators = fb.load(Path(path).read_bytes()).subgraphs[0].operators
    layers = []
    for op, seen in ops:
        fc = fully_connected_operands(interpreter, op["inputs"], op["outputs"])
        layer = fb.layer_of(fc["weight_name"], names)
        weight, weight_scale, y_detail = fc["weight"], fc["weight_scale"], fc["output"]
        input_scale, input_zero_point = fc["input"]
        x = np.concatenate([v.reshape(-1, weight.shape[1]) for v in seen["input"]])
        lite = np.concatenate([v.reshape(-1, weight.shape[0]) for v in seen["output"]])
        accumulator = (x - input_zero_point) @ weight.T
        relu = operators[op["index"]].builtinOptions.fusedActivationFunction == 1     # RELU
        int_bias = fc["bias"].astype(np.float64) * input_scale * weight_scale
        step = input_scale * weight_scale / y_detail["quantization"][0]
        off = {label: float(np.mean(requantized(accumulator, bias, input_scale, weight_scale, y_detail, relu) != lite))
               for label, bias in (("int32", int_bias), ("float", float_bias(model, layer)))}
        layers.append({"layer": layer, "weight_levels": int(np.abs(weight).max()), "outputs": int(lite.size),
                       "bias_step_lsb_max": float(step.max()), "off_with_int32_bias": off["int32"],
                       "off_with_float_bias": off["float"]})
    return {"model": Path(run_dir).parent.name, "run": Path(run_dir).name, "file": Path(path).name,
            "clips": int(min(clips, len(features))), "layers": layers}


def markdown(results) -> str:
    lines = ["# Bias rounding: the int32 bias step Keras does not simulate (scripts/bias_rounding.py)", "",
             "Each FULLY_CONNECTED recomputed from the file's integers on the inputs it gets on the reference "
             "kernels, requantized exactly, against LiteRT's output: with the file's int32 bias (the control, "
             "must be 0) and with the Keras layer's float bias (what fake-quant adds). bias step: input scale x "
             "weight scale in output LSBs, largest channel; the rounding moves a bias by up to half of it.", "",
             "| model | run | layer | weight levels | outputs | bias step (LSB) | off, int32 bias | off, float bias |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for layer in result["layers"]:
            lines.append(f"| {result['model']} | {result['run']} | {layer['layer']} | ±{layer['weight_levels']} | "
                         f"{layer['outputs']:,} | {layer['bias_step_lsb_max']:.4f} | "
                         f"{layer['off_with_int32_bias']:.3%} | {layer['off_with_float_bias']:.3%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "build" / "qat_runs",
                        help="Where scripts/qat_results.py wrote MODEL/POLICY_seed0 (default: build/qat_runs).")
    parser.add_argument("--files", type=Path, default=REPO / "build" / "convert_results",
                        help="Where scripts/convert_results.py wrote MODEL_POLICY_qat.tflite.")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="Folder bias_rounding.md and bias_rounding.json are written to (default: docs).")
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="Models to analyse (default: %(default)s).")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES),
                        help="QAT policies whose runs and files are analysed (default: %(default)s).")
    parser.add_argument("--clips", type=int, default=300, help="Test clips whose layer inputs are used.")
    args = parser.parse_args(argv)
    results = []
    for model in args.models:
        for policy in args.policies:
            run, path = args.runs / model / (policy + MAIN_RUN), args.files / f"{model}_{policy}_qat.tflite"
            if not (run / "model.keras").is_file() or not path.is_file():
                print(f"bias_rounding: {repo_relative(run)} or {repo_relative(path)} missing; run "
                      f"scripts/qat_results.py and scripts/convert_results.py first", file=sys.stderr)
                continue
            results.append(analyse(run, path, args.clips))
            print(json.dumps(results[-1]), flush=True)
    if not results:
        raise SystemExit("bias_rounding: nothing to analyse")
    write_json_atomic(args.docs / "bias_rounding.json", {"results": results})
    write_bytes_atomic(args.docs / "bias_rounding.md", markdown(results).encode())


if __name__ == "__main__":
    main()
