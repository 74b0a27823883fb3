#!/usr/bin/env python3
"""What LiteRT's int8 LayerNorm costs beyond the rounding the Keras QAT graph simulates.

The converter writes each Conformer LayerNorm as nine int8 ops: MEAN, SUB (centred), MUL (squared),
MEAN (variance), ADD (epsilon), RSQRT, MUL (normalised), MUL (gamma), ADD (beta), each output
requantized onto its own calibrated int8 grid. The QAT graph (edgeasr/quant/conformer_configs.py)
rounds the LayerNorm's output only. For --utterances test windows this script runs the file on the
builtin kernels, keeps every tensor, and for each LayerNorm compares its int8 output with a float
LayerNorm of the same int8 input rounded once onto the output grid:
  - LSB differences, and the relative RMS error of each against the float LayerNorm;
  - which step's grid costs most: the float chain with that step's output rounded onto its tensor's
    grid (and the output's), one step at a time; "every step" rounds all nine, which should land
    near the file's own error (the kernels round their multipliers too).
What it does to CER: the Keras QAT model, fed as the file is fed (edgeasr/eval/asr.py
`windows_of`), scored on --cer-utterances test utterances as it is and with every LayerNorm rounding
each step onto the file's grids, as LiteRT does. The difference is LayerNorm's share of the integer
part of issue 5's 4-bit gap (docs/asr_gap_parts.md).

Writes docs/layernorm_int8.md and docs/layernorm_int8.json.

    python scripts/layernorm_int8.py        # the w4a8-tanh run of scripts/asr_results.py
    python scripts/layernorm_int8.py --run build/asr_runs/xs_w8a8 --utterances 8 --docs /tmp/ln
"""
import edgeasr  # noqa: F401

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from _repo import REPO, add_report_options, read_summary, repo_relative, write_report
from edgeasr.converters.asr import WINDOW_FRAMES
from edgeasr.data.asr_pipeline import load_asr_split, padded_features
from edgeasr.eval.asr import cer_difference_standard_error, evaluate_model
from edgeasr.files import write_bytes_atomic
from edgeasr.models import conformer
from edgeasr.runtime.litert import dequantize, quantize, tracing_interpreter
from edgeasr.train.asr_fit import AsrRunDir

CHAIN = ("MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD")
STEPS = ("mean", "centred", "squared", "variance", "plus epsilon", "rsqrt", "normalised", "times gamma")
RSQRT_AT = CHAIN.index("RSQRT")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "build" / "asr_runs" / "xs_w4a8_tanh",
                        help="ASR run the file was converted from: its test manifest and frontend "
                             "(default: build/asr_runs/xs_w4a8_tanh).")
    parser.add_argument("--model", type=Path, default=None, help="The .tflite file (default: RUN.tflite).")
    parser.add_argument("--utterances", type=int, default=24,
                        help="Test utterances, one 4 s window each (default: %(default)s).")
    parser.add_argument("--cer-utterances", type=int, default=1200,
                        help="Test utterances the CER effect is measured on (default: %(default)s).")
    add_report_options(parser, "layernorm_int8")
    args = parser.parse_args(argv)
    args.model = args.model or args.run.with_name(args.run.name + ".tflite")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        write_markdown(read_summary(args.docs, "layernorm_int8", "--report-only"), args.docs)
        return
    for path in (args.run / "config.json", args.model):
        if not path.is_file():
            raise SystemExit(f"{path}: missing; train and convert with scripts/asr_results.py first")
    summary = measure(args)
    write_report(args.docs, "layernorm_int8", summary, write_markdown)


def layer_norms(interpreter) -> list:
    """For each LayerNorm, its nine ops' tensor details: input, every op's output, epsilon, gamma, beta."""
    ops = interpreter._get_ops_details()   # the interpreter's only list of ops (edgeasr/runtime/litert.py)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    chains = []
    for at in (i for i, op in enumerate(ops) if op["op_name"] == "RSQRT"):
        chain = ops[at - RSQRT_AT: at - RSQRT_AT + len(CHAIN)]
        if tuple(op["op_name"] for op in chain) != CHAIN:
            raise SystemExit(f"op {at}: RSQRT outside the LayerNorm pattern {' '.join(CHAIN)}; "
                             "this file's LayerNorms are laid out otherwise")
        outputs = [op["outputs"][0] for op in chain]

        def other_input(step: int) -> dict:
            return details[next(t for t in chain[step]["inputs"] if t != outputs[step - 1])]

        chains.append({"name": details[outputs[RSQRT_AT]]["name"].split("/")[0],
                       "input": details[chain[0]["inputs"][0]], "outputs": [details[t] for t in outputs],
                       "epsilon": other_input(4), "gamma": other_input(7), "beta": other_input(8)})
    return chains


def constant(interpreter, detail: dict) -> np.ndarray:
    return dequantize(interpreter.get_tensor(detail["index"]), detail).astype(np.float64)


def on_grid(values: np.ndarray, detail: dict) -> np.ndarray:
    return dequantize(quantize(values, detail), detail).astype(np.float64)


def float_chain(x, epsilon, gamma, beta, grids: dict) -> np.ndarray:
    """The LayerNorm in float64, each step's output put on its int8 grid where `grids` has that step."""
    def step(name, value):
        return on_grid(value, grids[name]) if name in grids else value
    mean = step("mean", x.mean(-1, keepdims=True))
    centred = step("centred", x - mean)
    variance = step("variance", step("squared", centred * centred).mean(-1, keepdims=True))
    rsqrt = step("rsqrt", 1 / np.sqrt(step("plus epsilon", variance + epsilon)))
    return step("output", step("times gamma", step("normalised", centred * rsqrt) * gamma) + beta)


def relative_rms(values: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((values - reference) ** 2) / np.mean(reference ** 2)))


def measure_window(interpreter, norm: dict) -> dict:
    x = constant(interpreter, norm["input"])
    epsilon, gamma, beta = (constant(interpreter, norm[k]) for k in ("epsilon", "gamma", "beta"))
    output = norm["outputs"][-1]
    reference = float_chain(x, epsilon, gamma, beta, {})
    grids = dict(zip(STEPS, norm["outputs"]), output=output)
    lite = interpreter.get_tensor(output["index"]).astype(np.int64)
    lsb = np.abs(quantize(reference, output).astype(np.int64) - lite)
    return {"mean_lsb": float(lsb.mean()), "share_off": float(np.mean(lsb > 0)), "max_lsb": int(lsb.max()),
            "litert": relative_rms(constant(interpreter, output), reference),
            "rounded_once": relative_rms(on_grid(reference, output), reference),
            "every_step": relative_rms(float_chain(x, epsilon, gamma, beta, grids), reference),
            **{f"only {s}": relative_rms(float_chain(x, epsilon, gamma, beta, {s: grids[s], "output": output}),
                                         reference) for s in STEPS}}


def measure(args) -> dict:
    run = AsrRunDir(args.run)
    config = run.read_config()
    split = load_asr_split(config.test_manifest, run.read_tokenizer(), config.frontend, args.utterances, spread=True)
    features = padded_features(split, range(len(split)), config.frontend, WINDOW_FRAMES)
    interpreter = tracing_interpreter(args.model)
    norms = layer_norms(interpreter)
    input_detail = interpreter.get_input_details()[0]
    windows = {norm["name"]: [] for norm in norms}
    for number, window in enumerate(features, 1):
        interpreter.set_tensor(input_detail["index"], quantize(window, input_detail)[None])
        interpreter.invoke()
        for norm in norms:
            windows[norm["name"]].append(measure_window(interpreter, norm))
        print(f"window {number}/{len(features)}", flush=True)
    rows = [{"layer_norm": name, "max_lsb": max(w["max_lsb"] for w in ws),
             **{k: float(np.mean([w[k] for w in ws])) for k in ws[0] if k != "max_lsb"}}
            for name, ws in windows.items()]
    return {"run": repo_relative(args.run), "model": repo_relative(args.model), "windows": len(features),
            "rows": rows, "cer": cer_effect(args, config, norms)}


def cer_effect(args, config, norms: list) -> dict:
    """Test CER (%) of the Keras QAT model fed as the file, with its LayerNorms as trained and rounding
    every step onto the file's grids."""
    manifest, limit = config.test_manifest, args.cer_utterances
    plain = evaluate_model(args.run, manifest, limit=limit, windows_of=args.model)
    with layer_norms_rounding({norm["name"]: dict(zip(STEPS, norm["outputs"])) for norm in norms}):
        rounded = evaluate_model(args.run, manifest, limit=limit, windows_of=args.model)
    error = cer_difference_standard_error(plain["character_edits"], rounded["character_edits"])
    return {"utterances": plain["utterances"], "keras": 100 * plain["cer"], "keras_rounding": 100 * rounded["cer"],
            "standard_error": 100 * error}


@contextmanager
def layer_norms_rounding(grids: dict):
    """Within the block, each conformer.LayerNorm named in `grids` rounds its steps' outputs onto
    those int8 grids (the Keras graph only; training code never enters it)."""
    import tensorflow as tf

    def on_tf_grid(values, detail):
        scale, zero_point = detail["quantization"]
        return (tf.clip_by_value(tf.round(values / scale) + zero_point, -128.0, 127.0) - zero_point) * scale

    def call(layer, inputs):
        grid = grids[layer.name]
        mean = on_tf_grid(tf.reduce_mean(inputs, axis=-1, keepdims=True), grid["mean"])
        centred = on_tf_grid(inputs - mean, grid["centred"])
        squared = on_tf_grid(centred * centred, grid["squared"])
        variance = on_tf_grid(tf.reduce_mean(squared, axis=-1, keepdims=True), grid["variance"])
        rsqrt = on_tf_grid(tf.math.rsqrt(on_tf_grid(variance + layer.epsilon, grid["plus epsilon"])), grid["rsqrt"])
        normalised = on_tf_grid(centred * rsqrt, grid["normalised"])
        return on_tf_grid(normalised * layer.gamma, grid["times gamma"]) + layer.beta   # QAT rounds the output

    trained = conformer.LayerNorm.call
    conformer.LayerNorm.call = call
    try:
        yield
    finally:
        conformer.LayerNorm.call = trained


def write_markdown(summary: dict, docs: Path) -> None:
    rows = summary["rows"]
    ratio = np.median([r["litert"] / r["rounded_once"] for r in rows])
    steps = {s: np.median([r[f"only {s}"] for r in rows]) for s in STEPS}
    worst = max(steps, key=steps.get)
    lines = ["# LiteRT's int8 LayerNorm against the rounding QAT simulates", "",
             f"Produced by `python scripts/layernorm_int8.py --run {summary['run']}` on {summary['windows']} test "
             f"windows of 4 s ({summary['model']}, builtin kernels); do not edit by hand.", "",
             "Each LayerNorm's int8 output against a float LayerNorm of the same int8 input: in LSBs of the output "
             "grid (the float one rounded onto it), and as relative RMS error; `rounded once` is the float "
             "LayerNorm rounded onto the output grid, all that the QAT graph simulates.", "",
             f"- Median over the {len(rows)} LayerNorms: LiteRT's error is {ratio:.1f}x that of one rounding.",
             "- Rounding one step onto its grid (and the output), the float chain's median relative RMS error: "
             + ", ".join(f"{s} {v:.3f}" for s, v in steps.items()) + f" (output alone: "
             f"{np.median([r['rounded_once'] for r in rows]):.3f}). The costliest step: {worst}.",
             f"- Every step rounded: median {np.median([r['every_step'] for r in rows]):.3f}, against LiteRT's "
             f"{np.median([r['litert'] for r in rows]):.3f}.",
             f"- Test CER of the Keras QAT model fed as the file, on {summary['cer']['utterances']} utterances: "
             f"{summary['cer']['keras']:.2f}% as trained, {summary['cer']['keras_rounding']:.2f}% with every "
             f"LayerNorm rounding as LiteRT's does ({summary['cer']['keras_rounding'] - summary['cer']['keras']:+.2f} "
             f"± {summary['cer']['standard_error']:.2f} points, paired bootstrap).", "",
             "| LayerNorm | mean LSB | share off | max LSB | rel. RMS LiteRT | rounded once | every step | "
             + " | ".join(f"only {s}" for s in STEPS) + " |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(STEPS)]
    for r in rows:
        lines.append(f"| {r['layer_norm']} | {r['mean_lsb']:.2f} | {r['share_off']:.0%} | {r['max_lsb']} | "
                     f"{r['litert']:.3f} | {r['rounded_once']:.3f} | {r['every_step']:.3f} | "
                     + " | ".join(f"{r[f'only {s}']:.3f}" for s in STEPS) + " |")
    write_bytes_atomic(Path(docs) / "layernorm_int8.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
