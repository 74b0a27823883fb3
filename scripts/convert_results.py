#!/usr/bin/env python3
"""Issue 4 results: fully-integer LiteRT files of DS-CNN-S and the stateless FFN per policy.

For every trained run ROOT/MODEL/POLICY (QAT runs as written by scripts/qat_results.py) and, for
each model's float run, post-training quantisation (PTQ) with edgeasr's quantizers under each
policy, `edgeasr convert` is run with its defaults and the table records: file size against the
float TFLite, the smallest file the format allows for that policy (lower bound), share of weight
bytes stored as INT4, LiteRT accuracy against Keras (fake-quant) accuracy on the whole test split,
argmax agreement, and single-thread latency on the three kernel sets (XNNPACK, the builtin
optimized kernels alone, LiteRT's reference kernels; edgeasr.runtime.litert.KERNELS).

Latency: edgeasr.eval.latency.interleaved_latency, every model on every kernel set in interleaved
rounds (each round: --invokes timed invokes of every model), medians over all rounds.
The 8-bit twin is timed twice, through two interpreters, to show the noise of the comparison.

With --seed-spread, the QAT runs of the other fine-tuning seeds (POLICY_seed<i>) are converted
too and their LiteRT accuracy checked against Keras: a conversion moves a clip or two either way
(one clip is 0.10 points of the 968-clip test split), so one run cannot resolve a 0.2-point
target, and the mean over seeds says whether the conversion itself costs accuracy.

Writes docs/convert_results.md and docs/convert_results.json.

    python scripts/convert_results.py                   # the seed-0 runs of scripts/qat_results.py
    python scripts/convert_results.py --models ds_cnn_s  # one model; the other's rows are kept
    python scripts/convert_results.py --seed-spread      # + every other seed's QAT run (~20 s each)
    python scripts/convert_results.py --report-only      # docs again from the JSON
"""
import edgeasr  # noqa: F401

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _repo import (MAIN_RUN, REPO, measured, measures_caveat, read_summary, repo_relative, seed_of, seed_runs,
                   standard_error, with_previous_rows)
from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.convert import convert
from edgeasr.converters.inspect import inspect_model
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.eval.latency import interleaved_latency
from edgeasr.runtime.litert import KERNELS, quantize
from edgeasr.runtime.metadata import read_metadata

POLICIES = ("w8a8", "w4a8-tanh", "mixed")
FOUR_BIT = ("w4a8", "w4a8-tanh")
MODELS = ("ds_cnn_s", "ffn_stateless")
TARGET_SMALLER, TARGET_ACCURACY_POINTS, TARGET_AGREEMENT = 7.0, 0.2, 0.99


def lower_bound(path) -> dict:
    """Fewest bytes any .tflite of this model and policy can have: every 4-bit weight packed two per
    byte, 8-bit weights one per byte, int32 (int64) biases, and the float32 scale per channel of
    per-channel weights with each distinct zero-point vector once; nothing else (no graph, names,
    shapes, bias scales, metadata)."""
    model = fb.load(Path(path).read_bytes())
    four_bit = set(read_metadata(path).get("int4_weights", {}))
    graph, types = model.subgraphs[0], fb.type_names()
    weights = biases = 0
    weight_tensors = []
    for op in graph.operators:
        if fb.op_name(model, op) not in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        weight = graph.tensors[op.inputs[1]]
        count = int(np.prod(weight.shape))
        name = fb.tensor_name(weight)
        weights += (count + 1) // 2 if name.split("/")[0] in four_bit else count
        weight_tensors.append(weight)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = graph.tensors[op.inputs[2]]
            biases += int(np.prod(bias.shape)) * (8 if types[bias.type] == "INT64" else 4)
    parameters = fb.per_channel_parameter_bytes(weight_tensors)
    return {"weights": weights, "biases": biases, "per_channel_parameters": parameters,
            "total": weights + biases + parameters}


# The non-default choices of `edgeasr convert`, measured on the runs they matter for.
OPTIONS = (("ds_cnn_s", "w4a8-tanh", "--conv-storage int4", {"conv_storage": "int4"}),)


def one(run_dir, out, policy, mode, option="", **convert_options):
    started = time.perf_counter()
    result = convert(run_dir, out, policy=policy if mode == "PTQ" else None, force=True, parity_examples=None,
                     **convert_options)
    parity, info, bound = result["parity"], inspect_model(out), lower_bound(out)
    row = {
        "model": Path(run_dir).parent.name, "policy": policy, "mode": mode, "option": option, "file": out.name,
        "bytes": result["bytes"], "float_bytes": result["float_bytes"], **measured("float_reference", "int4_share"),
        "smaller_than_float": result["float_bytes"] / result["bytes"],
        "lower_bound_bytes": bound, "best_possible_smaller": result["float_bytes"] / bound["total"],
        "best_possible_smaller_without_scales": result["float_bytes"] / (bound["weights"] + bound["biases"]),
        "int4_weight_share": result["int4_share"] or 0.0, "parameters": result["parameters"],
        "per_channel_parameter_bytes": info["per_channel_parameter_bytes"],
        "keras_accuracy": parity.get("keras_accuracy"), "litert_accuracy": parity.get("litert_accuracy"),
        "litert_reference_accuracy": parity.get("litert_reference_accuracy"),
        "litert_builtin_accuracy": parity.get("litert_builtin_accuracy"),
        "xnnpack_vs_reference_max_lsb": parity.get("xnnpack_vs_reference_max_lsb"),
        "argmax_agreement": parity["argmax_agreement"], "keras_tied_top": parity["keras_tied_top"],
        "examples": parity["examples"], "max_lsb": (parity.get("output_lsb_difference") or {}).get("max"),
        "xnnpack_nodes": f"{info['xnnpack_nodes']}/{len(info['ops'])}",
        "stored": {entry["layer"]: entry["stored_as"] for entry in result["int4"]},
        "convert_seconds": round(time.perf_counter() - started, 1),
        "keras_pool_rounded_accuracy": pool_rounded_keras_accuracy(run_dir, out, policy if mode == "PTQ" else None),
    }
    print(json.dumps(row), flush=True)
    return row


def pool_rounded_keras_accuracy(run_dir, path, ptq_policy):
    """Keras test accuracy with the output of its AveragePooling2D layer rounded onto the file's grid
    for it, as the int8 AVERAGE_POOL_2D rounds (it keeps its input's scale); Keras's fake-quant model
    averages in float. None when the file has no AVERAGE_POOL_2D (DS-CNN's global pool is a MEAN with
    its own finer output scale, converters/pooling.py). The layers after the pool must be a chain."""
    model_bytes = Path(path).read_bytes()
    model = fb.load(model_bytes)
    if "AVERAGE_POOL_2D" not in {fb.op_name(model, op) for op in model.subgraphs[0].operators}:
        return None
    import tf_keras as keras

    from edgeasr.converters.convert import model_to_convert
    from edgeasr.converters.sources import calibration_features, load_source, run_test_features
    from edgeasr.runtime.litert import tracing_interpreter

    keras_model, config = load_source(run_dir)
    if ptq_policy is not None:
        keras_model = model_to_convert(keras_model, config, ptq_policy, calibration_features(config), run_dir)[0]
    pools = [layer for layer in keras_model.layers if isinstance(layer, keras.layers.AveragePooling2D)]
    tensors = {d["name"]: d for d in tracing_interpreter(model_bytes).get_tensor_details()}
    if len(pools) != 1 or pools[0].name not in tensors:
        return None
    features, labels = run_test_features(config)
    pooled = keras.Model(keras_model.inputs, pools[0].output).predict(features, batch_size=128, verbose=0)
    scale, zero_point = tensors[pools[0].name]["quantization"]
    x = ((np.clip(np.round(pooled / scale) + zero_point, -128, 127) - zero_point) * scale).astype(np.float32)
    for layer in keras_model.layers[keras_model.layers.index(pools[0]) + 1:]:
        x = layer(x, training=False)
    return float(np.mean(np.asarray(x).argmax(-1) == labels))


def add_latency(rows, out_dir: Path, rounds: int, invokes: int) -> None:
    """Latency of every row's file (and its 8-bit twin's again, see the module docstring)."""
    paths = [str(out_dir / row["file"]) for row in rows]
    twins = [str(out_dir / row["file"]) for row in rows if row["policy"] == "w8a8" and not row["option"]]
    # The same 8-bit file through a second interpreter: the noise floor of a side-by-side comparison.
    copies = []
    for twin in twins:
        copy = Path(twin).with_name(Path(twin).stem + "_again.tflite")
        copy.write_bytes(Path(twin).read_bytes())
        copies.append(str(copy))
    medians = interleaved_latency(paths + copies, rounds, invokes)
    for row, path in zip(rows, paths):
        for kernels in KERNELS:
            row[f"latency_{kernels}_ms"] = medians.get((path, kernels))
    for row in rows:
        if row["policy"] == "w8a8" and "latency_xnnpack_again_ms" not in row:
            again = str(out_dir / (Path(row["file"]).stem + "_again.tflite"))
            row["latency_xnnpack_again_ms"] = medians[(again, "xnnpack")]
            Path(again).unlink()


def targets(rows) -> list:
    """[(target, verdict line)] for the issue's four targets."""
    lines = []
    for row in (r for r in rows if r["policy"] in FOUR_BIT):
        met = row["smaller_than_float"] >= TARGET_SMALLER
        line = f"{row['model']} {row['policy']} {row['mode']}: {row['smaller_than_float']:.2f}x"
        if not met:
            line += (f"; cause: the format's floor for this model is {row['lower_bound_bytes']['total']:,} bytes "
                     f"({row['best_possible_smaller']:.2f}x; packed weights + int32 biases alone are "
                     f"{row['lower_bound_bytes']['weights'] + row['lower_bound_bytes']['biases']:,} bytes, "
                     f"{row['best_possible_smaller_without_scales']:.2f}x)" if row["best_possible_smaller"] < TARGET_SMALLER
                     else "; cause: graph, scales and metadata overhead")
        lines.append(("w4a8 files >= 7x smaller than float TFLite", met, line))
    for row in rows:
        gap = 100 * abs(row["litert_accuracy"] - row["keras_accuracy"])
        met = gap <= TARGET_ACCURACY_POINTS + 1e-9
        line = (f"{row['model']} {row['policy']} {row['mode']}: Keras {row['keras_accuracy']:.2%}, LiteRT "
                f"{row['litert_accuracy']:.2%} ({gap:.2f} points)")
        if not met:
            line += accuracy_gap_cause(row, gap)
        lines.append(("LiteRT accuracy within 0.2 points of Keras", met, line))
    for row in rows:
        met = row["argmax_agreement"] >= TARGET_AGREEMENT
        line = f"{row['model']} {row['policy']} {row['mode']}: {row['argmax_agreement']:.2%} of {row['examples']}"
        if not met:
            line += (f"; cause: {round((1 - row['argmax_agreement']) * row['examples'])} disagreements, "
                     f"{row['keras_tied_top']} clips with a tied Keras top score; see the per-layer analysis")
        lines.append((">= 99% argmax agreement", met, line))
    for row in (r for r in rows if r["policy"] != "w8a8"):
        twin = next((r for r in rows if r["model"] == row["model"] and r["mode"] == row["mode"]
                     and r["policy"] == "w8a8"), None)
        if twin is None:
            continue
        noise = abs(twin["latency_xnnpack_again_ms"] / twin["latency_xnnpack_ms"] - 1)
        ratio = row["latency_xnnpack_ms"] / twin["latency_xnnpack_ms"]
        met = ratio <= 1 + noise
        line = (f"{row['model']} {row['policy']} {row['mode']}: {row['latency_xnnpack_ms']:.4f} ms vs 8-bit "
                f"{twin['latency_xnnpack_ms']:.4f} ms ({ratio:.3f}x; same-file noise {noise:.1%})")
        if not met:
            packed = sorted(layer for layer, stored in row["stored"].items() if stored == "INT4")
            line += (f"; cause: XNNPACK takes the same {row['xnnpack_nodes']} nodes in both files, and the only "
                     f"kernels that differ are the INT4 FULLY_CONNECTED GEMMs of {', '.join(packed)} (int8 in "
                     f"the twin): XNNPACK's 4-bit GEMM is that much slower than its 8-bit one on this CPU")
        lines.append(("4-bit no slower than its 8-bit twin under XNNPACK", met, line))
    return lines


def accuracy_gap_cause(row, gap: float) -> str:
    """Why LiteRT (XNNPACK) and Keras decide clips differently: the kernels' rounding (against the
    reference kernels' exact integer arithmetic), or what Keras's fake-quant model does not simulate."""
    cause = (f"; cause: {round((1 - row['argmax_agreement']) * row['examples'])} of {row['examples']} clips decided "
             f"differently, LiteRT {'above' if row['litert_accuracy'] > row['keras_accuracy'] else 'below'} Keras by "
             f"{round(gap * row['examples'] / 100)} clips (one clip is {100 / row['examples']:.2f} points)")
    reference = row.get("litert_reference_accuracy")
    if reference is not None:
        exact = row.get("xnnpack_vs_reference_max_lsb") == 0
        cause += (f"; the reference kernels give {reference:.2%}, "
                  + ("and XNNPACK equals them bit for bit, so the whole gap is Keras's simulation" if exact else
                     f"{100 * abs(reference - row['keras_accuracy']):.2f} points from Keras; XNNPACK differs from "
                     f"them by up to {row.get('xnnpack_vs_reference_max_lsb')} LSB"))
    rounded = row.get("keras_pool_rounded_accuracy")
    if rounded is not None:
        cause += (f"; Keras with its AveragePooling2D output rounded onto the input grid, as AVERAGE_POOL_2D rounds "
                  f"it, gives {rounded:.2%} ({100 * abs(row['litert_accuracy'] - rounded):.2f} points from LiteRT): "
                  f"the fake-quant model averages in float")
    return cause


def layer_differences(run_dir, path) -> dict:
    """Where a DS-CNN's Keras (fake-quant) and LiteRT (reference kernels) outputs part, layer by layer:
    each Keras activation put on its LiteRT tensor's int8 grid against the LiteRT tensor, in LSBs;
    then the agreement Keras would have if its pooled features were rounded onto the pooled map's
    int8 grid, as AVERAGE_POOL_2D rounds them (Keras averages in float and does not round; convert
    now writes a MEAN with a finer output scale instead, converters/pooling.py)."""
    import tf_keras as keras

    from edgeasr.converters.sources import load_source, run_test_features
    from edgeasr.runtime.litert import tracing_interpreter

    model, config = load_source(run_dir)
    features, labels = run_test_features(config)
    keras_names = [layer.name for layer in model.layers
                   if layer.name.startswith("quant_relu") or layer.name in ("avg_pool", "quant_logits")]
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in keras_names])
    keras_values = probe.predict(features, batch_size=64, verbose=0)
    interpreter = tracing_interpreter(path, kernels="reference")
    details = {d["name"]: d for d in interpreter.get_tensor_details()}
    input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    lite_names = [name[len("quant_"):] if name.startswith("quant_") else name for name in keras_names[:-1]]
    lite_values = {name: [] for name in lite_names + ["logits"]}   # the logits are the file's output
    for example in features:
        interpreter.set_tensor(input_detail["index"], quantize(example, input_detail)[None])
        interpreter.invoke()
        for name in lite_names:
            lite_values[name].append(interpreter.get_tensor(details[name]["index"])[0].astype(np.int64))
        lite_values["logits"].append(interpreter.get_tensor(output_detail["index"])[0].astype(np.int64))
    layers = []
    for name, keras_value in zip(lite_names + ["logits"], keras_values):
        lite = np.stack(lite_values[name])
        detail = details[name] if name != "logits" else output_detail
        difference = np.abs(quantize(keras_value.reshape(lite.shape), detail).astype(np.int64) - lite)
        layers.append({"tensor": name, "max_lsb": int(difference.max()), "mean_lsb": float(difference.mean()),
                       "share_off": float(np.mean(difference > 0))})
    pooled = keras_values[keras_names.index("avg_pool")]
    scale, zero_point = details[lite_names[lite_names.index("avg_pool") - 1]]["quantization"]   # the pooled map's
    rounded = (np.clip(np.round(pooled / scale) + zero_point, -128, 127) - zero_point) * scale
    head_input = keras.Input(pooled.shape[1:])
    head = keras.Model(head_input, model.get_layer("quant_logits")(model.get_layer("flatten")(head_input)))
    rounded_scores = head.predict(rounded.astype(np.float32), batch_size=64, verbose=0)
    lite_top = np.stack(lite_values["logits"]).argmax(-1)
    return {"run": Path(run_dir).name, "examples": int(len(features)), "layers": layers,
            "agreement": float(np.mean(keras_values[-1].argmax(-1) == lite_top)),
            "agreement_pool_rounded": float(np.mean(rounded_scores.argmax(-1) == lite_top)),
            "keras_accuracy": float(np.mean(keras_values[-1].argmax(-1) == labels)),
            "keras_accuracy_pool_rounded": float(np.mean(rounded_scores.argmax(-1) == labels))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", default=[REPO / "build" / "qat_runs"],
                        help="Roots holding MODEL/POLICY run directories; the first that has one wins.")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "convert_results",
                        help="Folder the converted .tflite files are written to (default: build/convert_results).")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="Folder convert_results.md and convert_results.json are written to (default: docs).")
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="Models to convert; the JSON's rows of other models are kept (default: %(default)s).")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES),
                        help="Policies converted as QAT runs and as PTQ of the float run (default: %(default)s).")
    parser.add_argument("--rounds", type=int, default=40,
                        help="Interleaved latency rounds whose medians are reported (default: %(default)s).")
    parser.add_argument("--invokes", type=int, default=50, help="Timed invokes per model and round.")
    parser.add_argument("--no-ptq", action="store_true", help="Only the QAT runs.")
    parser.add_argument("--seed-spread", action="store_true",
                        help="Also convert the QAT runs of the other fine-tuning seeds (POLICY_seed<i>, i >= 1) and "
                             "check their accuracy against Keras; without it, the JSON's seed rows are kept.")
    parser.add_argument("--report-only", action="store_true",
                        help="Rewrite the docs from DOCS/convert_results.json (targets recomputed).")
    args = parser.parse_args(argv)
    if args.report_only:
        summary = read_summary(args.docs, "convert_results", "--report-only")
        summary["targets"] = [{"target": t, "met": m, "detail": d} for t, m, d in targets(summary["rows"])]
        return write_docs(summary, args.docs)
    rows = []

    @functools.cache
    def find(model, *names):
        """MODEL/NAME_seed0 as qat_results.py writes it (or MODEL/NAME) in the first root that has it, for
        the first of `names` there is; None, said once on stderr, when there is none."""
        candidates = [root / model / run for name in names for root in args.runs for run in (name + MAIN_RUN, name)]
        found = next((run for run in candidates if (run / "model.keras").is_file()), None)
        if found is None:
            tried = ", ".join(f"{model}/{name}{suffix}" for name in names for suffix in (MAIN_RUN, ""))
            print(f"convert_results: no trained run ({tried}) under {', '.join(map(str, args.runs))}; its rows "
                  f"are left out (train it with scripts/qat_results.py)", file=sys.stderr)
        return found

    for model in args.models:
        for policy in args.policies:
            run = find(model, policy)
            if run is not None:
                rows.append(one(run, args.out / f"{model}_{policy}_qat.tflite", policy, "QAT"))
            float_run = None if args.no_ptq else find(model, "float", "pretrained_float")
            if float_run is not None:
                rows.append(one(float_run, args.out / f"{model}_{policy}_ptq.tflite", policy, "PTQ"))
    options = []
    for model, policy, option, convert_options in OPTIONS:
        run = find(model, policy) if model in args.models and policy in args.policies else None
        if run is not None:
            out = args.out / f"{model}_{policy}_qat_{option.split()[-1].replace('-', '_')}.tflite"
            options.append(one(run, out, policy, "QAT", option, **convert_options))
    if not rows:
        raise SystemExit(f"convert_results: no trained run under {', '.join(map(str, args.runs))}; "
                         f"{args.docs} left as it is")
    add_latency(rows + options, args.out, args.rounds, args.invokes)
    previous = args.docs / "convert_results.json"
    rows = with_previous_rows(previous, "rows", rows, args.models, MODELS)
    options = with_previous_rows(previous, "options", options, args.models, MODELS)
    seeds = with_previous_rows(previous, "seed_rows", other_seeds(args) if args.seed_spread else [],
                               args.models if args.seed_spread else [], MODELS)
    summary = {"rows": rows, "options": options, "seed_rows": seeds,
               "targets": [{"target": t, "met": m, "detail": d} for t, m, d in targets(rows)],
               "layer_differences": analysed_layers(args, find, previous),
               "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
               "runs": ", ".join(repo_relative(r) for r in args.runs),
               "rounds": args.rounds, "invokes": args.invokes}
    write_docs(summary, args.docs)


def other_seeds(args) -> list:
    """Keras and LiteRT test accuracy of the QAT run of every fine-tuning seed but 0 (the tables' run),
    for each model and policy, from the first root that has that seed."""
    rows = []
    for model in args.models:
        for policy in args.policies:
            runs = {}
            for root in reversed(args.runs):
                runs.update({seed_of(name): root / model / name for name in seed_runs(root / model, policy)})
            for seed, run in sorted((s, r) for s, r in runs.items() if s != 0):
                parity = convert(run, args.out / f"{model}_{policy}_qat_seed{seed}.tflite", force=True,
                                 parity_examples=None)["parity"]
                rows.append({"model": model, "policy": policy, "seed": seed, "run": repo_relative(run),
                             **{key: parity[key] for key in ("keras_accuracy", "litert_accuracy", "argmax_agreement",
                                                             "examples")}})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def seed_spread_lines(summary) -> list:
    """Per model and policy, LiteRT minus Keras test accuracy over the fine-tuning seeds (seed 0: the
    table's QAT row), in clips per seed and as a mean in points."""
    lines = []
    for (model, policy), rows in seed_groups(summary).items():
        clips = [round((r["litert_accuracy"] - r["keras_accuracy"]) * r["examples"]) for r in rows]
        points = [100 * (r["litert_accuracy"] - r["keras_accuracy"]) for r in rows]
        error = standard_error(points)
        within = sum(abs(p) <= TARGET_ACCURACY_POINTS + 1e-9 for p in points)
        lines.append(f"| {model} | {policy} | {len(rows)} | {', '.join(f'{c:+d}' for c in clips)} | "
                     f"{np.mean(points):+.3f}{f' ± {error:.3f}' if error is not None else ''} | "
                     f"{np.mean(np.abs(points)):.3f} | {within} of {len(rows)} | "
                     f"{min(r['argmax_agreement'] for r in rows):.2%} |")
    if not lines:
        return []
    return ["", "## Over fine-tuning seeds (QAT runs, `--seed-spread`)", "",
            "The same conversion of every fine-tuning seed's QAT run of scripts/qat_results.py (seed 0 is the QAT "
            "row above): LiteRT minus Keras (fake-quant) test accuracy. A conversion decides a clip or two "
            "otherwise either way, so a single run cannot resolve 0.2 points; the mean over seeds is what the "
            "conversion itself does to accuracy. ±: standard error of the mean.", "",
            "| model | policy | seeds | LiteRT - Keras, clips per seed | mean, points | mean abs, points | "
            "seeds within 0.2 points | lowest agreement |", "|---|---|---:|---|---:|---:|---:|---:|", *lines]


def seed_groups(summary) -> dict:
    """{(model, policy): [seed 0's QAT row, then the other seeds' rows in seed order]} for every policy
    with seed rows."""
    groups = {}
    for row in summary.get("seed_rows") or []:
        groups.setdefault((row["model"], row["policy"]), []).append(row)
    main = {(r["model"], r["policy"]): r for r in summary["rows"] if r["mode"] == "QAT" and not r.get("option")}
    return {key: [main[key]] + sorted(rows, key=lambda r: r["seed"]) if key in main else rows
            for key, rows in groups.items()}


def analysed_layers(args, find, previous: Path):
    """Per-layer Keras-LiteRT differences of DS-CNN-S w4a8-tanh; the previous ones when it did not run now."""
    analysed = find("ds_cnn_s", "w4a8-tanh") if "ds_cnn_s" in args.models else None
    if analysed is not None:
        return layer_differences(analysed, args.out / "ds_cnn_s_w4a8-tanh_qat.tflite")
    return json.loads(previous.read_text()).get("layer_differences") if previous.is_file() else None


def write_docs(summary, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(docs / "convert_results.json", summary)
    write_bytes_atomic(docs / "convert_results.md", markdown(summary).encode())
    print(markdown(summary))


def _pct(value):
    return "-" if value is None else f"{value:.2%}"


def _ms(value):
    return "-" if value is None else f"{value:.4f}"


def markdown(summary) -> str:
    lines = ["# Conversion results (scripts/convert_results.py)", "",
             f"Runs from `{summary['runs']}`, converted with `edgeasr convert` defaults (pointwise convs as "
             f"FULLY_CONNECTED, 4-bit depthwise / first-conv levels x 16 in INT8 containers, one scale for per-tensor "
             f"INT4 FULLY_CONNECTED, global average pool as MEAN, trimmed). Accuracy and agreement on the whole test split. Latency: one "
             f"thread, median of {summary['rounds']} interleaved rounds x {summary['invokes']} invokes on "
             f"{summary['machine']}.", "",
             *measures_caveat(summary["rows"] + summary.get("options", []), "float_reference"),
             "| model | policy | how | bytes | float bytes | smaller | floor (smaller) | INT4 share | Keras acc | "
             "LiteRT acc | reference acc | agreement | tied | max LSB | XNNPACK nodes | XNNPACK ms | builtin ms | "
             "reference ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in summary["rows"] + summary.get("options", []):
        lines.append(f"| {r['model']} | {r['policy']} | {r['mode']}{' ' + r['option'] if r.get('option') else ''} | {r['bytes']:,} | {r['float_bytes']:,} | "
                     f"{r['smaller_than_float']:.2f}x | {r['lower_bound_bytes']['total']:,} "
                     f"({r['best_possible_smaller']:.2f}x) | {r['int4_weight_share']:.0%} | "
                     f"{_pct(r['keras_accuracy'])} | {_pct(r['litert_accuracy'])} | "
                     f"{_pct(r.get('litert_reference_accuracy'))} | {_pct(r['argmax_agreement'])} | "
                     f"{r['keras_tied_top']} | {r['max_lsb']} | {r['xnnpack_nodes']} | "
                     + " | ".join(_ms(r.get(f"latency_{kernels}_ms")) for kernels in KERNELS) + " |")
    lines += ["", "floor: the lower bound of `lower_bound()` — packed weights, int32 biases and the float32 scale "
              "per channel of per-channel weights with each distinct int64 zero-point vector once, nothing else. tied: test clips whose Keras "
              "(fake-quant) top score is an exact tie between classes. reference acc: LiteRT accuracy on the reference "
              "kernels (BUILTIN_REF: TFLite's plain C++ integer arithmetic, the same on every CPU); builtin ms: the optimized "
              "builtin kernels without XNNPACK; -: the runtime's reference kernels have no INT4 convolution.", "", "## Targets", ""]
    for target in dict.fromkeys(t["target"] for t in summary["targets"]):
        entries = [t for t in summary["targets"] if t["target"] == target]
        verdict = "met" if all(t["met"] for t in entries) else "MISSED"
        lines.append(f"- **{target}: {verdict}**")
        lines += [f"  - {'met' if t['met'] else 'MISSED'}: {t['detail']}" for t in entries]
    lines += seed_spread_lines(summary)
    analysis = summary.get("layer_differences")
    if analysis:
        lines += ["", f"## Where Keras and LiteRT differ: ds_cnn_s {analysis['run']} QAT, {analysis['examples']} "
                  "test clips, reference kernels", "",
                  "Each Keras (fake-quant) activation on its LiteRT tensor's int8 grid against the LiteRT tensor "
                  "(avg_pool: in steps of the MEAN's own output scale, about 10x finer than the pooled map's).", "",
                  "| tensor | max LSB | mean LSB | share of values off |", "|---|---:|---:|---:|"]
        lines += [f"| {layer['tensor']} | {layer['max_lsb']} | {layer['mean_lsb']:.3f} | {layer['share_off']:.2%} |"
                  for layer in analysis["layers"]]
        lines += ["", f"Argmax agreement on the reference kernels {analysis['agreement']:.2%} (Keras accuracy "
                  f"{analysis['keras_accuracy']:.2%}); Keras with its pooled features rounded onto the pooled map's "
                  f"int8 grid, as an AVERAGE_POOL_2D rounds them: {analysis['agreement_pool_rounded']:.2%} (Keras "
                  f"accuracy {analysis['keras_accuracy_pool_rounded']:.2%}). "
                  + ("Equal figures: pooling no longer separates Keras and LiteRT (convert writes a MEAN with its "
                     "own, finer output scale, converters/pooling.py); what remains is the integer kernels' "
                     "rounding, layer by layer (table), and clips whose Keras top score is tied."
                     if analysis["agreement"] == analysis["agreement_pool_rounded"] else
                     "The difference is what rounding the pooled features costs.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
