#!/usr/bin/env python3
"""Which settings change a training run's floating-point results (edgeasr.train.numerics).

Fine-tunes DS-CNN-S, seed 0, from scripts/qat_results.py's shared pre-trained float model once per
setting, each in a process of its own whose environment picks TensorFlow's kernels (oneDNN's
instruction-set class, or Eigen) and intra-op threads, with `scripts/qat_results.py` itself; then
compares every weight array of each run's model with the default setting's run of the same policy.
"repeat" is the default setting again: whether one machine is bit-identical run to run.

    python scripts/training_numerics.py                       # about 45 min on 2 cores
    python scripts/training_numerics.py --settings default repeat avx2 --policies w8a8

Runs go to --work/SETTING/ds_cnn_s/POLICY_seed0 and are reused when finished. Writes
docs/training_numerics.md and docs/training_numerics.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "ds_cnn_s"
SETTINGS = {
    "default": {},
    "repeat": {},
    "avx512_core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "eigen_4_threads": {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "4"},
    "onednn_4_threads": {"TF_NUM_INTRAOP_THREADS": "4"},
}
DEFAULT_SETTINGS = {"w8a8": list(SETTINGS), "float": ["default", "avx2"]}


def main(argv=None):
    args = parse_args(argv)
    started, rows = time.perf_counter(), []
    for policy in args.policies:
        settings = args.settings or DEFAULT_SETTINGS.get(policy, ["default", "avx2"])
        if "default" not in settings:
            settings = ["default", *settings]          # what every other setting is compared with
        runs = {setting: finetuned(args, setting, policy) for setting in settings}
        reference = model_weights(runs["default"]["run"])
        for setting, result in runs.items():
            rows.append(row(setting, policy, result, reference))
    from edgeasr.files import write_bytes_atomic, write_json_atomic
    from edgeasr.train.numerics import describe, training_numerics

    summary = {"model": MODEL, "seed": 0, "machine": describe(training_numerics()), "rows": rows,
               "minutes": round((time.perf_counter() - started) / 60, 1)}

    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.docs / "training_numerics.json", summary)
    write_bytes_atomic(args.docs / "training_numerics.md", markdown(summary).encode())
    print(markdown(summary))


def finetuned(args, setting: str, policy: str) -> dict:
    """The setting's fine-tuned run of `policy` (trained by qat_results.py under the setting's
    environment unless finished) and qat_results' result row for it."""
    work = args.work / setting
    pretrained = work / MODEL / "pretrained_float"
    if not pretrained.exists():
        shutil.copytree(args.runs / MODEL / "pretrained_float", pretrained)
    command = [sys.executable, str(REPO / "scripts" / "qat_results.py"), "--data", str(args.data), "--work", str(work),
               "--docs", str(work / "docs"), "--models", MODEL, "--policies", policy, "--finetune-seeds", "0"]
    print(f"{setting} {policy}: {' '.join(f'{k}={v}' for k, v in SETTINGS[setting].items()) or 'default'}",
          flush=True)
    done = subprocess.run(command, env={**os.environ, **SETTINGS[setting]}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{setting} {policy}: qat_results.py failed:\n{done.stderr[-3000:]}")
    result = [r for r in json.loads((work / "docs" / "qat_results.json").read_text())["results"]
              if r["model"] == MODEL and r["policy"] == policy and r["seed"] == 0][-1]
    return {**result, "run": work / MODEL / f"{policy}_seed0"}


def model_weights(run: Path) -> list:
    """The arrays of the run's trained model (Keras's get_weights: kernels, biases, BatchNorm and
    quantizer variables; not the optimizer state model.keras also holds)."""
    from edgeasr.train.run_dir import RunDir

    return RunDir(run).load_model().get_weights()


def row(setting: str, policy: str, result: dict, reference: list) -> dict:
    from edgeasr.train.run_dir import RunDir

    run, arrays = RunDir(result["run"]), model_weights(result["run"])
    return {"setting": setting, "environment": SETTINGS[setting], "policy": policy,
            "numerics": run.read_numerics(), "arrays": len(arrays),
            "arrays_differing": sum(not np.array_equal(a, b) for a, b in zip(arrays, reference, strict=True)),
            "first_epoch_loss": run.read_history()[0]["loss"], "validation_accuracy": result["validation_accuracy"],
            "keras_accuracy": result["keras_accuracy"], "litert_accuracy": result["litert_accuracy"]}


def markdown(summary: dict) -> str:
    lines = ["# Training numerics (scripts/training_numerics.py)", "",
             f"{summary['model']} fine-tuned with seed 0 from one pre-trained float model under each setting, each "
             f"in a process of its own (scripts/qat_results.py; the last invocation took {summary['minutes']} min, "
             "reusing finished runs). Weight arrays that differ from the default setting's run of the same "
             "policy; the first epoch's training loss; accuracies "
             "(validation, Keras test, LiteRT test). The numerics are what the run recorded "
             "(RUN/numerics.json, edgeasr.train.numerics; -: trained before runs recorded them). This machine, "
             f"unrestricted: {summary['machine']}.", "",
             "| policy | setting | environment | numerics recorded | arrays differing | epoch-1 loss "
             "| validation | Keras test | LiteRT test |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        environment = " ".join(f"`{k}={v}`" for k, v in r["environment"].items()) or "-"
        recorded = "; ".join(f"{n['kernels']}, {n['threads']} threads" for n in r["numerics"]) or "-"
        differing = "-" if r["setting"] == "default" else f"{r['arrays_differing']} of {r['arrays']}"
        lines.append(f"| {r['policy']} | {r['setting']} | {environment} | {recorded} | {differing} "
                     f"| {r['first_epoch_loss']:.5f} | {100 * r['validation_accuracy']:.2f}% "
                     f"| {100 * r['keras_accuracy']:.2f}% | {100 * r['litert_accuracy']:.2f}% |")
    lines += ["", *conclusions(summary["rows"]), ""]
    return "\n".join(lines)


def conclusions(rows: list) -> list:
    """One line per policy: which settings trained the default run's weights bit for bit."""
    lines = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        others = [r for r in rows if r["policy"] == policy and r["setting"] != "default"]
        same = [r["setting"] for r in others if r["arrays_differing"] == 0]
        differ = [r["setting"] for r in others if r["arrays_differing"]]
        lines.append(f"- {policy}: bit-identical to the default run: {', '.join(same) or 'none'}; "
                     f"other weights: {', '.join(differ) or 'none'}.")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "build" / "qat_data",
                        help="Keyword data set of scripts/qat_results.py (default: build/qat_data).")
    parser.add_argument("--runs", type=Path, default=REPO / "build" / "qat_runs",
                        help="qat_results.py's runs, whose ds_cnn_s/pretrained_float every setting starts from "
                             "(default: build/qat_runs).")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "training_numerics",
                        help="Folder of the runs, SETTING/ds_cnn_s/POLICY_seed0 (default: build/training_numerics).")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="Folder training_numerics.md and .json are written to (default: docs).")
    parser.add_argument("--policies", nargs="+", default=["w8a8", "float"],
                        help="Policies fine-tuned under each setting (default: w8a8 float).")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        help="Settings to train under (default: all for w8a8, default and avx2 for float); "
                             "default is always included.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
