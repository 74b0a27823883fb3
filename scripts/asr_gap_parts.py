#!/usr/bin/env python3
"""Where issue 5's 4-bit CER gap comes from, seed by seed: QAT, the way the audio is fed, and the
integer arithmetic of the LiteRT file.

scripts/asr_results.py scores Keras models in batches padded to their longest utterance with the
TensorFlow frontend, and the LiteRT file as the transcriber runs it: 4 s windows padded with
silence, NumPy frontend. Its gap (LiteRT w4a8-tanh minus Keras float-ft) therefore also holds the
change of feeding, which the float model pays as well once deployed. Here both Keras models
(float-ft and w4a8-tanh fake-quant) are also fed exactly as the file is (`evaluate_model(...,
windows_of=FILE)` in edgeasr/eval/asr.py), on the same utterances, which splits the gap into
  feeding   Keras float-ft fed as the file minus Keras float-ft in batches,
  QAT       Keras w4a8-tanh minus Keras float-ft, both fed as the file,
  integer   LiteRT w4a8-tanh minus Keras w4a8-tanh fed as the file,
and gives the like-for-like gap: LiteRT w4a8-tanh minus float-ft fed the same way (QAT + integer).

Every fine-tuning seed with tables from scripts/asr_results.py (docs/asr_results.json, seed 0, and
docs/asr_seedN/) is scored, on test and on validation. Writes docs/asr_gap_parts.md and .json.

    python scripts/asr_gap_parts.py                 # every seed asr_results.py has run
    python scripts/asr_gap_parts.py --seeds 0 --docs /tmp/parts
    python scripts/asr_gap_parts.py --report-only   # rewrite the Markdown from the JSON
"""
import edgeasr  # noqa: F401

import argparse
from pathlib import Path

import numpy as np

import asr_results
from _repo import REPO, add_report_options, read_summary, repo_relative, write_report
from edgeasr.eval.asr import evaluate_model
from edgeasr.files import write_bytes_atomic

SPLITS = ("test", "validation")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REPO / "docs",
                        help="Folder of asr_results.py's seed-0 tables and its asr_seedN folders (default: docs).")
    parser.add_argument("--data", type=Path, default=REPO / "build" / "asr_data",
                        help="The corpus the runs were trained on (default: build/asr_data).")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "asr_runs",
                        help="Folder of the runs and .tflite files (default: build/asr_runs).")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="Fine-tuning seeds to score (default: every seed with tables in --results).")
    add_report_options(parser, "asr_gap_parts")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        write_markdown(read_summary(args.docs, "asr_gap_parts", "--report-only"), args.docs)
        return
    saved = {r["recipe"].get("finetune_seed", 0): r for r in asr_results.seed_results(args.results)}
    seeds = args.seeds if args.seeds is not None else sorted(saved)
    missing = [seed for seed in seeds if seed not in saved]
    if missing:
        raise SystemExit(f"seed {missing[0]}: no asr_results.json in {args.results}; run "
                         f"`python scripts/asr_results.py --finetune-seed {missing[0]}` first")
    rows = [seed_parts(args, seed, saved[seed]) for seed in seeds]
    summary = {"results": repo_relative(args.results), "work": repo_relative(args.work), "rows": rows}
    write_report(args.docs, "asr_gap_parts", summary, write_markdown)


def seed_parts(args, seed: int, saved: dict) -> dict:
    """One seed's CERs (in points) and the gap's parts on test and validation."""
    runs, _ = asr_results.plan_runs(asr_results.parse_args(["--work", str(args.work), "--data", str(args.data),
                                                            "--finetune-seed", str(seed)]))
    model = runs["w4a8-tanh"].with_name(runs["w4a8-tanh"].name + ".tflite")
    batched = {e["model"]: e["cer"] for e in saved["evaluations"]}
    row = {"seed": seed, "model": repo_relative(model)}
    for split in SPLITS:
        manifest = args.data / f"{split}.jsonl"
        print(f"seed {seed}, {split}: scoring", flush=True)
        float_fed = evaluate_model(runs["float-ft"], manifest, limit=saved["test_utterances"], windows_of=model)
        litert = evaluate_model(model, manifest, limit=saved["test_utterances"])
        gap = asr_results.cer_gap(float_fed, litert)
        row[split] = {"utterances": litert["utterances"], "float_ft_fed": 100 * float_fed["cer"],
                      "litert_w4a8": 100 * litert["cer"], "gap": gap["points"], "gap_error": gap["standard_error"]}
        if split == "test":   # the split asr_results.py scores every Keras model on
            w4_fed = evaluate_model(runs["w4a8-tanh"], manifest, limit=saved["test_utterances"], windows_of=model)
            row[split].update(float_ft=100 * batched["keras float-ft"], w4a8_fed=100 * w4_fed["cer"],
                              published_gap=saved["targets"]["w4a8_cer_gap_points"]["value"])
        else:
            row[split].update(float_ft=100 * saved["validation"]["float_ft_cer"],
                              published_gap=saved["validation"]["points"])
    return row


def write_markdown(summary: dict, docs: Path) -> None:
    rows = summary["rows"]
    lines = ["# Conformer-CTC: where the 4-bit CER gap comes from", "",
             "Produced by `python scripts/asr_gap_parts.py` (the script's docstring gives the method); do not edit "
             "by hand. CER in %, parts in points. *fed as the file*: the Keras model run on the LiteRT file's 4 s "
             "windows with silence padding and the NumPy frontend; *batched*: as scripts/asr_results.py scores Keras "
             "models. ± of a seed: paired bootstrap over utterances; ± of a mean: standard error over seeds.", "",
             "## Test", "",
             "| seed | float-ft batched | float-ft fed as the file | w4a8 fed as the file | LiteRT w4a8 | feeding | "
             "QAT | integer | gap, like for like | gap, asr_results |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r["test"]
        lines.append(f"| {r['seed']} | {t['float_ft']:.2f} | {t['float_ft_fed']:.2f} | {t['w4a8_fed']:.2f} | "
                     f"{t['litert_w4a8']:.2f} | {t['float_ft_fed'] - t['float_ft']:+.2f} | "
                     f"{t['w4a8_fed'] - t['float_ft_fed']:+.2f} | {t['litert_w4a8'] - t['w4a8_fed']:+.2f} | "
                     f"{t['gap']:+.2f} ± {t['gap_error']:.2f} | {t['published_gap']:+.2f} |")
    lines += ["", "## Validation", "", "| seed | float-ft batched | float-ft fed as the file | LiteRT w4a8 | feeding | "
              "gap, like for like | gap, asr_results |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r["validation"]
        lines.append(f"| {r['seed']} | {v['float_ft']:.2f} | {v['float_ft_fed']:.2f} | {v['litert_w4a8']:.2f} | "
                     f"{v['float_ft_fed'] - v['float_ft']:+.2f} | {v['gap']:+.2f} ± {v['gap_error']:.2f} | "
                     f"{v['published_gap']:+.2f} |")
    lines += ["", "## Over seeds", ""]
    for split in SPLITS:
        lines.append(asr_results.mean_gap_line(f"Like-for-like {split} gap", [r[split]["gap"] for r in rows]))
        lines.append(asr_results.mean_gap_line(f"{split.capitalize()} gap as asr_results.py measures it",
                                               [r[split]["published_gap"] for r in rows]))
    feeding = [r["test"]["float_ft_fed"] - r["test"]["float_ft"] for r in rows]
    lines += ["", f"Feeding the float model as the file is fed changes its test CER by {np.mean(feeding):+.2f} "
              f"points on average: that much of asr_results.py's gap is not quantization."]
    write_bytes_atomic(Path(docs) / "asr_gap_parts.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
