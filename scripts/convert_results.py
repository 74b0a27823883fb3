#!/usr/bin/env python3
"""Issue 4 results: fully-integer LiteRT files of DS-CNN-S and the stateless FFN per policy.

For every trained run ROOT/MODEL/POLICY (QAT runs as written by scripts/qat_results.py) and, for
each model's float run, post-training quantisation (PTQ) with edgeasr's quantizers under each
policy, `edgeasr convert` is run and the table records: file size against the float TFLite,
share of weight bytes stored as INT4, bytes of per-channel quantisation parameters, LiteRT
accuracy against Keras (fake-quant) accuracy on the test split, argmax agreement, and
single-thread latency (median of --repeats invokes) with XNNPACK and with the reference kernels.

Writes docs/convert_results.md and docs/convert_results.json.

    python scripts/convert_results.py --runs build/qat_runs
"""
import edgeasr  # noqa: F401

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edgeasr.converters.convert import convert
from edgeasr.converters.inspect import inspect_model
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.runtime.litert import LiteRTModel, quantize

POLICIES = ("w8a8", "w4a8-tanh", "mixed")
MODELS = ("ds_cnn_s", "ffn_stateless")
REPO = Path(__file__).resolve().parents[1]


def latency_ms(path, xnnpack: bool, example: np.ndarray, repeats: int) -> float:
    model = LiteRTModel(path, num_threads=1, xnnpack=xnnpack)
    raw = quantize(example, model.input_detail)
    for _ in range(10):
        model.run_raw(raw)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.run_raw(raw)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def one(run_dir, out, policy, mode, repeats):
    started = time.perf_counter()
    result = convert(run_dir, out, policy=policy if mode == "PTQ" else None, force=True)
    parity, info = result["parity"], inspect_model(out)
    from edgeasr.runtime.metadata import read_metadata

    example = np.zeros(read_metadata(out)["input"]["shape"][1:], np.float32)
    row = {
        "model": Path(run_dir).parent.name, "policy": policy, "mode": mode, "file": out.name,
        "bytes": result["bytes"], "float_bytes": result["float_bytes"],
        "smaller_than_float": result["float_bytes"] / result["bytes"],
        "int4_weight_share": result["int4_share"] or 0.0, "parameters": result["parameters"],
        "per_channel_parameter_bytes": info["per_channel_parameter_bytes"],
        "keras_accuracy": parity.get("keras_accuracy"), "litert_accuracy": parity.get("litert_accuracy"),
        "argmax_agreement": parity["argmax_agreement"], "examples": parity["examples"],
        "max_lsb": (parity.get("output_lsb_difference") or {}).get("max"),
        "xnnpack_nodes": f"{info['xnnpack_nodes']}/{len(info['ops'])}",
        "latency_xnnpack_ms": latency_ms(out, True, example, repeats),
        "latency_reference_ms": latency_ms(out, False, example, repeats),
        "convert_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", default=[REPO / "build" / "qat_runs"],
                        help="Roots holding MODEL/POLICY run directories; the first that has one wins.")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "convert_results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-ptq", action="store_true", help="Only the QAT runs.")
    args = parser.parse_args(argv)
    rows = []
    def find(model, name):
        return next((root / model / name for root in args.runs if (root / model / name / "model.keras").is_file()),
                    None)

    for model in args.models:
        for policy in args.policies:
            run = find(model, policy)
            if run is not None:
                rows.append(one(run, args.out / f"{model}_{policy}_qat.tflite", policy, "QAT", args.repeats))
            if not args.no_ptq:
                float_run = find(model, "float") or find(model, "pretrained_float")
                if float_run is not None:
                    rows.append(one(float_run, args.out / f"{model}_{policy}_ptq.tflite", policy, "PTQ", args.repeats))
    summary = {"rows": rows, "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
               "runs": ", ".join(str(r.relative_to(REPO) if r.is_relative_to(REPO) else r) for r in args.runs), "repeats": args.repeats}
    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.docs / "convert_results.json", summary)
    write_bytes_atomic(args.docs / "convert_results.md", markdown(summary).encode())


def _pct(value):
    return "-" if value is None else f"{value:.2%}"


def markdown(summary) -> str:
    lines = ["# Conversion results (scripts/convert_results.py)", "",
             f"Runs from `{summary['runs']}`; latency: one thread, median of {summary['repeats']} invokes "
             f"on {summary['machine']}.", "",
             "| model | policy | how | bytes | float bytes | smaller | INT4 share | per-channel params | "
             "Keras acc | LiteRT acc | agreement | max LSB | XNNPACK nodes | XNNPACK ms | reference ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in summary["rows"]:
        lines.append(f"| {r['model']} | {r['policy']} | {r['mode']} | {r['bytes']:,} | {r['float_bytes']:,} | "
                     f"{r['smaller_than_float']:.1f}x | {r['int4_weight_share']:.0%} | "
                     f"{r['per_channel_parameter_bytes']:,} | {_pct(r['keras_accuracy'])} | "
                     f"{_pct(r['litert_accuracy'])} | {_pct(r['argmax_agreement'])} | {r['max_lsb']} | "
                     f"{r['xnnpack_nodes']} | {r['latency_xnnpack_ms']:.3f} | {r['latency_reference_ms']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
