#!/usr/bin/env python3
"""Issue 5 (model half): the Conformer through the converter, measured.

For each size (tiny, xs) and policy (w8a8, w4a8-tanh, conformer-mixed), the float Conformer with a
fixed window (1 s = 100 frames) is quantised after training with edgeasr's quantizers (the
`edgeasr convert` path for a float model: quantize_model + calibrated ranges), converted, checked
fully integer and INT4-packed. Recorded: float ops (named) if any, op counts, ops XNNPACK takes,
INT4 share of weight bytes, file size against the float TFLite, single-thread LiteRT latency of a
1 s and a 5 s window (XNNPACK), and agreement with the Keras models on held-out windows:
frame argmax agreement and logit RMS error of LiteRT against Keras float and Keras fake-quant.

Weights: with --run (a trained `train-asr` run directory, float) its trained weights and its test
manifest's audio; without, the untrained model with randomised biases / norms / BN statistics and
espeak-ng sentences (then agreement figures say little about accuracy, only about the converter).

Also measured: whether tf_keras' own LayerNormalization converts to integer ops with the stock
converter (the reason edgeasr's Conformer uses its own LayerNorm of primitives), and, on the Keras
side, how much each group of int8 activations costs against float (16-bit activations there
instead), to decide where 16-bit activations are worth it.

Writes docs/conformer_conversion.md and docs/conformer_conversion.json.

    python scripts/conformer_conversion.py --run build/asr_runs/xs_float
"""
import edgeasr  # noqa: F401

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _repo import REPO, measured, measures_caveat, read_saved
from edgeasr.audio.frontend import FrontendConfig, numpy_log_mel
from edgeasr.converters import convert as cv
from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.inspect import inspect_model
from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.models import conformer as cf
from edgeasr.quant.policy import LayerPrecision, PrecisionPolicy, PrecisionRule
from edgeasr.runtime.litert import LiteRTModel, quantize

POLICIES = ("w8a8", "w4a8-tanh", "conformer-mixed")
WINDOW_FRAMES = {"1 s": 100, "5 s": 500}
SENTENCES = ("turn the kitchen light off", "seven four two nine", "what is the weather like today",
             "stop the music please", "call my sister at home", "set a timer for ten minutes",
             "open the front door", "play the next song", "one eight three five zero", "how far is the station")


# --- inputs and weights --------------------------------------------------------------------------
def _windows(waves, frontend: FrontendConfig, frames: int) -> np.ndarray:
    """Log-mel windows of `frames` frames: the utterance from its start, zero-padded audio."""
    samples = frontend.window_samples + (frames - 1) * frontend.hop_samples
    out = []
    for wave in waves:
        padded = np.zeros(samples, np.float32)
        wave = np.asarray(wave, np.float32)[:samples]
        padded[:len(wave)] = wave
        out.append(numpy_log_mel(padded, frontend)[:frames])
    return np.stack(out).astype(np.float32)


def _espeak_waves(frontend: FrontendConfig, count: int):
    import soxr

    from edgeasr.data.espeak import Espeak

    engine = Espeak()
    voices = ["en-us", "en-gb-x-rp", "en-us+f3", "en-gb-scotland+m3"]
    waves = []
    for i in range(count):
        voice, _, variant = voices[i % len(voices)].partition("+")
        pcm = engine.synthesize(SENTENCES[i % len(SENTENCES)], voice=voice, variant=variant or None)
        waves.append(soxr.resample(pcm.astype(np.float32) / 32768.0, engine.sample_rate, frontend.sample_rate))
    return waves


def _manifest_waves(manifest, count: int, frontend: FrontendConfig):
    """`count` utterances spread over the manifest (its first lines are one voice)."""
    from edgeasr.audio.io import load_audio
    from edgeasr.data.asr_pipeline import evenly_spaced

    root = Path(manifest).parent
    waves = []
    for line in evenly_spaced(Path(manifest).read_text().splitlines(), count):
        entry = json.loads(line)
        path = Path(entry["audio"])
        waves.append(load_audio(path if path.is_absolute() else root / path, frontend.sample_rate))
    return waves


def _source(run, size, examples):
    """(float model builder, weights or None, frontend, calibration waves, held-out waves, label)."""
    if run is not None:
        from edgeasr.train.run_dir import RunDir
        from edgeasr.quant.qat import load_model

        config = json.loads((Path(run) / "config.json").read_text())
        model_config = cf.ConformerConfig(**config["model"])
        frontend = FrontendConfig(**config["frontend"])
        trained = load_model(RunDir(run).model_path, compile=False)
        waves = _manifest_waves(config["train_manifest"], examples, frontend)
        held_out = _manifest_waves(config["test_manifest"], examples, frontend)
        vocab = int(trained.output_shape[-1])
        return model_config, vocab, trained.get_weights(), frontend, waves, held_out, f"trained run {Path(run).name}"
    frontend = FrontendConfig()
    waves = _espeak_waves(frontend, 2 * examples)
    return (cf.conformer_config(size), 30, None, frontend, waves[:examples], waves[examples:],
            "untrained, randomised biases / norms / BN statistics")


def _float_model(model_config, vocab, weights, frames):
    model = cf.build_conformer(model_config, vocab, time_frames=frames)
    if weights is None:
        cf.randomize_untrained(model)
    else:
        model.set_weights(weights)
    return model


# --- measurements ----------------------------------------------------------------------------------
def latency_ms(path, example: np.ndarray, repeats: int) -> float:
    model = LiteRTModel(path, num_threads=1)
    raw = quantize(example, model.input_detail)
    for _ in range(3):
        model.run_raw(raw)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.run_raw(raw)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def agreement(reference: np.ndarray, scores: np.ndarray) -> dict:
    """Frame argmax agreement and logit RMS error relative to the reference's logit RMS."""
    rms = float(np.sqrt(np.mean(np.square(reference))))
    return {"frame_agreement": float(np.mean(reference.argmax(-1) == scores.argmax(-1))),
            "relative_rms_error": float(np.sqrt(np.mean(np.square(reference - scores))) / rms)}


def _count(values) -> dict:
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def size_breakdown(path) -> dict:
    """Bytes of the file by what they hold: INT4 / INT8 weights (2-D and up), INT32 biases,
    other constants, and the flatbuffer's structure (ops, tensors, shapes, quantisation)."""
    model = fb.load(Path(path).read_bytes())
    types = fb.type_names()
    parts = {"int4_weights": 0, "int8_weights": 0, "int32_biases": 0, "other_constants": 0}
    for tensor in model.subgraphs[0].tensors:
        data = fb.buffer_data(model, tensor)
        if data is None:
            continue
        kind = types[tensor.type]
        key = {"INT4": "int4_weights", "INT32": "int32_biases"}.get(kind, "other_constants")
        if kind == "INT8" and len(tensor.shape) >= 2 and tensor.shape[-1] > 1 and data.size > 4096:
            key = "int8_weights"
        parts[key] += int(data.size)
    parts["structure"] = Path(path).stat().st_size - sum(parts.values())
    return parts


def not_delegated(report) -> dict:
    counts = {}
    for op in report["ops"]:
        if not op["xnnpack"]:
            key = f"{op['op']}({','.join(sorted(set(op['types'])))})"
            counts[key] = counts.get(key, 0) + 1
    return counts


def convert_one(float_model, policy, calibration, held_out, out_path, float_scores):
    qat_model = cv.post_training_quantize(float_model, policy, calibration)
    try:
        model_bytes, int4_report = cv.convert_keras(qat_model, calibration)
    except EdgeasrError as exc:
        return {"policy": policy, "error": str(exc),
                "float_ops": cv.float_ops(cv.int8_tflite(qat_model, calibration),
                                          [layer.name for layer in float_model.layers])}
    write_bytes_atomic(out_path, model_bytes, force=True)
    info = inspect_model(out_path)
    lite = LiteRTModel(out_path, num_threads=1).predict(held_out)
    keras_qat = qat_model.predict(held_out, verbose=0)
    return {
        "policy": policy, "file": out_path.name, "bytes": len(model_bytes), "float_ops": [],
        "op_counts": info["op_counts"], "ops": len(info["ops"]), "xnnpack_ops": info["xnnpack_nodes"],
        "not_delegated": not_delegated(info), "int4_weight_share": info["int4_weight_share"] or 0.0,
        **measured("int4_share"),
        "fc_weights": sorted({e["stored_as"] for e in int4_report if e["op"] == "FULLY_CONNECTED"}),
        "fc_converter_wrote": _count(e.get("converter_wrote", e["stored_as"]) for e in int4_report
                                     if e["op"] == "FULLY_CONNECTED"),
        "vs_keras_float": agreement(float_scores, lite), "vs_keras_fake_quant": agreement(keras_qat, lite),
        "keras_fake_quant_vs_float": agreement(float_scores, keras_qat),
    }


def stock_layer_normalization_check(calibration_frames=20) -> dict:
    """tf_keras LayerNormalization through the stock converter (full-integer PTQ): float ops?"""
    import tf_keras as keras

    inputs = keras.Input((calibration_frames, 16))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.LayerNormalization(name="stock_layer_norm")(x)
    model = keras.Model(inputs, keras.layers.Dense(8)(x))
    data = np.random.default_rng(0).normal(size=(8, calibration_frames, 16)).astype(np.float32)
    own = keras.Model(inputs, keras.layers.Dense(8)(cf.LayerNorm(16, name="own_layer_norm")(
        keras.layers.Dense(16)(inputs))))
    result = {}
    for label, candidate in (("stock", model), ("own", own)):
        model_bytes = cv.int8_tflite(candidate, data)
        flat = fb.load(model_bytes)
        result[f"{label}_float_ops"] = [list(f) for f in cv.float_ops(model_bytes, [x.name for x in candidate.layers])]
        result[f"{label}_ops"] = _count(fb.op_name(flat, op) for op in flat.subgraphs[0].operators)
    return result


def activation_ablation(float_model, calibration, held_out, float_scores) -> list:
    """Keras fake-quant, weights float: int8 activations everywhere, then 16-bit for one group."""
    groups = {"none (all int8)": (), "LayerNorm outputs": ("*_norm",),
              "attention scores + mask (softmax input)": ("*_scores", "*_mask"),
              "residual adds": ("*_residual",), "swish / GLU": ("*_swish", "*_glu")}
    base = LayerPrecision(weight_bits=None, activation_bits=8)
    rows = []
    for label, patterns in groups.items():
        rules = [PrecisionRule(p, replace(base, activation_bits=16)) for p in patterns]
        policy = PrecisionPolicy(f"a8-16:{label}", base, rules)
        model = cv.post_training_quantize(float_model, policy, calibration)
        rows.append({"16-bit": label, **agreement(float_scores, model.predict(held_out, verbose=0))})
    return rows


def run_size(size, args, work, run):
    model_config, vocab, weights, frontend, waves, held_out_waves, label = _source(run, size, args.examples)
    frames = WINDOW_FRAMES["1 s"]
    calibration = _windows(waves, frontend, frames)
    held_out = _windows(held_out_waves, frontend, frames)
    float_model = _float_model(model_config, vocab, weights, frames)
    float_scores = float_model.predict(held_out, verbose=0)
    float_bytes = cv.float_tflite_bytes(float_model)
    result = {"size": size, "weights": label, "parameters": int(float_model.count_params()),
              "config": vars(model_config), "vocab": vocab, "float_bytes": float_bytes, "policies": []}
    for policy in args.policies:
        print(f"{size} {policy} ...", flush=True)
        row = convert_one(float_model, policy, calibration, held_out, work / f"{size}_{policy}.tflite", float_scores)
        if "bytes" in row:
            row["smaller_than_float"] = float_bytes / row["bytes"]
            row["latency_ms"] = {"1 s": latency_ms(work / row["file"], held_out[0], args.repeats)}
            row["size_breakdown"] = size_breakdown(work / row["file"])
        result["policies"].append(row)
    # 5 s windows: the w4a8-tanh model and the float model rebuilt at 500 frames.
    long_frames = WINDOW_FRAMES["5 s"]
    long_model = _float_model(model_config, vocab, float_model.get_weights(), long_frames)
    long_calibration = np.concatenate([calibration] * (long_frames // frames), axis=1)
    for row in result["policies"]:
        if row["policy"] == args.latency_policy and "bytes" in row:
            qat_long = cv.post_training_quantize(long_model, row["policy"], long_calibration[:8])
            long_bytes, _ = cv.convert_keras(qat_long, long_calibration[:8])
            path = work / f"{size}_{row['policy']}_5s.tflite"
            write_bytes_atomic(path, long_bytes, force=True)
            row["latency_ms"]["5 s"] = latency_ms(path, long_calibration[0], max(3, args.repeats // 5))
    float_path = work / f"{size}_float.tflite"
    write_bytes_atomic(float_path, cv.float_tflite(float_model), force=True)
    result["float_latency_ms"] = {"1 s": latency_ms(float_path, held_out[0], args.repeats)}
    if size == args.ablation_size:
        result["activation_ablation"] = activation_ablation(float_model, calibration, held_out, float_scores)
        result["ablation_frames"] = int(float_scores.shape[0] * float_scores.shape[1])
    return result


# --- report ------------------------------------------------------------------------------------------
def _ops(counts) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _pct(value):
    return f"{100 * value:.1f}%"


TARGET_SMALLER = 7.5     # issue 5: xs w4a8 file at least 7.5x smaller than the float TFLite


def _row(result, policy):
    return next((row for row in result["policies"] if row["policy"] == policy and "bytes" in row), None)


def findings(results) -> list:
    """The measured answers to the issue's questions, from the rows below."""
    lines = ["## Findings", ""]
    for result in results:
        converted = [row for row in result["policies"] if "bytes" in row]
        failed = [f"{row['policy']}: {row['error']}" for row in result["policies"] if "error" in row]
        lines.append(f"- {result['size']}: {len(converted)} of {len(result['policies'])} policies convert fully "
                     f"integer" + (f"; failed: {'; '.join(failed)}" if failed else " (no float op left)") + ".")
        w4 = _row(result, "w4a8-tanh")
        if w4 is not None:
            verdict = ("met" if w4["smaller_than_float"] >= TARGET_SMALLER else "MISSED") \
                if result["size"] == "xs" else "the target is for xs"
            wrote = ", ".join(f"{count} {kind}" for kind, count in sorted(w4.get("fc_converter_wrote", {}).items()))
            lines.append(f"  w4a8-tanh: {w4['smaller_than_float']:.2f}x smaller than float (target "
                         f">= {TARGET_SMALLER}x: {verdict}), {_pct(w4['int4_weight_share'])} of weight "
                         f"bytes INT4; the converter wrote the FULLY_CONNECTED weights as {wrote} (batch-1 "
                         f"conversion: no Dense went down the Tensordot path); XNNPACK takes {w4['xnnpack_ops']} "
                         f"of {w4['ops']} ops; single-thread latency {w4['latency_ms']['1 s']:.2f} ms per 1 s "
                         f"window (RTF {w4['latency_ms']['1 s'] / 1000:.4f})"
                         + (f", {w4['latency_ms']['5 s']:.2f} ms per 5 s window (RTF "
                            f"{w4['latency_ms']['5 s'] / 5000:.4f})" if "5 s" in w4["latency_ms"] else "") + ".")
        if w4 is not None and "size_breakdown" in w4:
            parts = w4["size_breakdown"]
            lines.append("  Where the w4a8-tanh bytes are: " + ", ".join(
                f"{name.replace('_', ' ')} {value:,}" for name, value in parts.items()) + f" (weights alone: "
                f"{result['parameters'] * 4 / (parts['int4_weights'] + parts['int8_weights']):.2f}x smaller than "
                f"their float32).")
        ablation = result.get("activation_ablation")
        if ablation:
            base = ablation[0]
            best = max(ablation[1:], key=lambda row: row["frame_agreement"])
            lines.append(f"  int8 activations everywhere (float weights): {_pct(base['frame_agreement'])} frame "
                         f"agreement with float, rel. RMS error {base['relative_rms_error']:.3f}; the largest "
                         f"gain from 16-bit activations is for {best['16-bit']}: "
                         f"{_pct(best['frame_agreement'])}, {best['relative_rms_error']:.3f}.")
            frames = result.get("ablation_frames")
            gain = best["frame_agreement"] - base["frame_agreement"]
            resolution = f" (one frame is {_pct(1 / frames)})" if frames else ""
            lines.append(f"  So 16-bit activations gain at most {100 * gain:.1f} points of frame agreement"
                         f"{resolution}: " + ("too little to pay for int16 kernels that XNNPACK does not run; "
                                              "conformer-mixed keeps 8-bit activations everywhere."
                                              if gain < 0.01 else "worth a 16-bit rule for that group."))
        if converted:
            left = sorted({key.split("(")[0] for row in converted for key in row["not_delegated"]})
            lines.append(f"  XNNPACK (LiteRT {result.get('litert', '2.3')}) left {', '.join(left)} to the builtin "
                         f"kernels: per LayerNorm its RSQRT and the ADD of epsilon to the (T, 1) variance, per "
                         f"attention module its two BATCH_MATMUL and its SOFTMAX.")
    return lines + [""]


def markdown(results, meta) -> str:
    lines = ["# Conformer-CTC: fully-integer LiteRT conversion", "",
             f"Produced by `python scripts/conformer_conversion.py {meta['args']}` on {meta['machine']} "
             f"({meta['date']}). Every model is the float Conformer at a fixed 1 s window (100 frames of "
             f"10 ms, batch 1) quantised with edgeasr's quantizers under the policy, ranges calibrated on "
             f"{meta['examples']} windows, converted with `edgeasr.converters.convert.convert_keras` "
             f"(fully-integer check, INT4 pass). Latency: single thread, XNNPACK, median of "
             f"{meta['repeats']} invokes. Agreement: LiteRT against the Keras model on {meta['examples']} "
             f"held-out windows, per output frame (argmax), and the logit RMS error relative to the "
             f"reference's logit RMS."]
    lines += [f"Sizes added from `python scripts/conformer_conversion.py {args}` (same method, its own "
              f"--examples)." for args in meta.get("merged", [])] + [""]
    lines += measures_caveat([row for result in results for row in result["policies"] if "bytes" in row],
                             "int4_share")
    lines += findings(results)
    for result in results:
        lines += [f"## {result['size']}: {result['parameters']:,} parameters ({result['weights']})", "",
                  f"Float TFLite: {result['float_bytes']:,} bytes, {result['float_latency_ms']['1 s']:.2f} ms "
                  f"per 1 s window.", "",
                  "| policy | fully integer | bytes | smaller than float | INT4 share of weight bytes | "
                  "FC weights | XNNPACK ops | 1 s latency ms | 5 s latency ms | frame agreement vs Keras "
                  "float / fake-quant | rel. RMS error vs float |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in result["policies"]:
            if "error" in row:
                lines.append(f"| {row['policy']} | NO: {row['error'][:200]} | | | | | | | | | |")
                continue
            latency = row["latency_ms"]
            five = f"{latency['5 s']:.2f}" if "5 s" in latency else "-"
            lines.append(
                f"| {row['policy']} | yes | {row['bytes']:,} | {row['smaller_than_float']:.2f}x | "
                f"{_pct(row['int4_weight_share'])} | {'/'.join(row['fc_weights']) or 'INT8'} | "
                f"{row['xnnpack_ops']} of {row['ops']} | {latency['1 s']:.2f} | {five} | "
                f"{_pct(row['vs_keras_float']['frame_agreement'])} / "
                f"{_pct(row['vs_keras_fake_quant']['frame_agreement'])} | "
                f"{row['vs_keras_float']['relative_rms_error']:.3f} |")
        lines += ["", "Ops XNNPACK does not take (op(input types): count):", ""]
        for row in result["policies"]:
            if "not_delegated" in row:
                described = ", ".join(f"{k}: {v}" for k, v in sorted(row["not_delegated"].items())) or "none"
                lines.append(f"- {row['policy']}: {described}")
        if "activation_ablation" in result:
            lines += ["", "Where int8 activations lose (Keras fake-quant, float weights, against the float "
                      "model; one group at a time gets 16-bit activations):", "",
                      "| 16-bit activations for | frame agreement | rel. RMS error |", "|---|---|---|"]
            for row in result["activation_ablation"]:
                lines.append(f"| {row['16-bit']} | {_pct(row['frame_agreement'])} | "
                             f"{row['relative_rms_error']:.3f} |")
        lines.append("")
    check = meta["layer_norm_check"]
    lines += ["## LayerNorm", "",
              "tf_keras `LayerNormalization` through the stock converter (full-integer PTQ, TF "
              f"{meta['tensorflow']}): {len(check['stock_float_ops'])} op(s) left in float or outside the "
              "builtins" + (": " + "; ".join(f"{op} ({reason})" for op, _, reason in check['stock_float_ops'][:6])
                            if check['stock_float_ops'] else "") + ".",
              f"edgeasr's `LayerNorm` (MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, ADD of the same maths): "
              f"{len(check['own_float_ops'])} float op(s).",
              f"Ops of Dense-norm-Dense with the stock layer: {_ops(check['stock_ops'])}; with edgeasr's: "
              f"{_ops(check['own_ops'])}.", ""]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained float train-asr run directory, used for its size")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "xs"],
                        help="Conformer sizes to convert; a size other than --run's is untrained (default: tiny xs)")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES),
                        help="precision policies each size is quantised and converted with (default: %(default)s)")
    parser.add_argument("--latency-policy", default="w4a8-tanh", help="policy also converted at 5 s")
    parser.add_argument("--ablation-size", default="xs",
                        help="size whose 16-bit activation ablation is measured in Keras (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=24,
                        help="windows for range calibration, and as many held out for agreement "
                             "(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=50,
                        help="timed invokes per 1 s latency (median), a fifth of them (at least 3) at 5 s "
                             "(default: %(default)s)")
    parser.add_argument("--work", default=str(REPO / "build" / "conformer_conversion"),
                        help="folder of the converted .tflite files (default: build/conformer_conversion)")
    parser.add_argument("--out", default=str(REPO / "docs" / "conformer_conversion"),
                        help="path of the reports without suffix, OUT.md and OUT.json "
                             "(default: docs/conformer_conversion)")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="with --render: add the sizes of these JSON files (runs with another --out)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render:
        saved = read_saved(out.with_suffix(".json"), "--render")
        for extra in map(lambda path: json.loads(Path(path).read_text()), args.merge):
            sizes = {result["size"] for result in extra["results"]}
            saved["results"] = [r for r in saved["results"] if r["size"] not in sizes] + extra["results"]
            saved["meta"].setdefault("merged", []).append(extra["meta"]["args"])
        for result in saved["results"]:
            for row in result["policies"]:
                if "file" in row and "size_breakdown" not in row and (Path(args.work) / row["file"]).is_file():
                    row["size_breakdown"] = size_breakdown(Path(args.work) / row["file"])
            if "activation_ablation" in result and "ablation_frames" not in result:
                result["ablation_frames"] = saved["meta"]["examples"] * cf.output_frames(WINDOW_FRAMES["1 s"])
        write_json_atomic(out.with_suffix(".json"), saved)
        write_bytes_atomic(out.with_suffix(".md"), markdown(saved["results"], saved["meta"]).encode(), force=True)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    run_size_name = json.loads((Path(args.run) / "config.json").read_text()).get("model_size") if args.run else None
    results = [run_size(size, args, work, args.run if size == run_size_name else None) for size in args.sizes]
    argv = " ".join(f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                    for k, v in vars(args).items() if v is not None and k in ("run", "sizes", "examples"))
    meta = {"args": argv, "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
            "date": time.strftime("%Y-%m-%d"), "examples": args.examples, "repeats": args.repeats,
            "tensorflow": tf.__version__, "layer_norm_check": stock_layer_normalization_check()}
    write_json_atomic(out.with_suffix(".json"), {"meta": meta, "results": results})
    write_bytes_atomic(out.with_suffix(".md"), markdown(results, meta).encode(), force=True)
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
