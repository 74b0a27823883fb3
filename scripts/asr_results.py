#!/usr/bin/env python3
"""Issue 5 results: Conformer-CTC `xs` on the synthetic corpus, test voices held out.

Protocol:
  1. corpus: `edgeasr data synth-asr` (--speakers x --utterances, split 80/10/10 by voice+variant);
  2. float training for --float-epochs (default 40; SpecAugment, batch 24, peak LR 2e-3, warm-up + cosine);
  3. from the float run, the same fine-tuning budget (2 x --qat-epochs epochs, peak LR
     --qat-learning-rate) for: float (the reference the 4-bit gap is measured against) and
     w4a8-tanh QAT in two stages (tanh 4-bit weights only, then 8-bit inputs and activations too,
     BN folded); and one-stage w8a8 QAT for --qat-epochs;
  4. conversion of both QAT runs to fully-integer LiteRT (4 s window, INT4-packed weights for
     w4a8) and of the float model to float TFLite (the size reference);
  5. WER / CER (jiwer, greedy CTC) of the Keras float, Keras QAT and LiteRT models on the first
     --test-utterances test utterances; real-time factor of the LiteRT models on one thread; the
     4-bit gap (Keras float-ft vs LiteRT w4a8-tanh) on the validation voices too, where recipe
     choices are made.
Each step is skipped when its output exists, so an interrupted run continues.

Writes docs/asr_results.md and docs/asr_results.json, and docs/asr_seeds.md: the 4-bit gap of every
fine-tuning seed found there (docs/asr_results.json is seed 0, docs/asr_seedN/ seed N) and its mean.

    python scripts/asr_results.py                   # everything, into build/asr_data and build/asr_runs
    python scripts/asr_results.py --train-only float-ft   # one training run (to run several at once)
    python scripts/asr_results.py --report-only     # rewrite the Markdown from docs/asr_results.json
    python scripts/asr_results.py --finetune-seed 1 # another fine-tuning seed, into docs/asr_seed1
"""
import edgeasr  # noqa: F401

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from _repo import REPO, measured, measures_caveat, read_summary, standard_error
from edgeasr.data.asr_synth import AsrSynthConfig, synthesize_asr_corpus
from edgeasr.eval.asr import cer_difference_standard_error, evaluate_model
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.converters.asr import convert_asr_run
from edgeasr.quant.policy import PrecisionPolicy, PrecisionRule, preset
from edgeasr.train.asr_fit import AsrRunDir, asr_run_config, train_asr, with_policy
from edgeasr.train.numerics import describe_runs

RUNS = ("float", "float-ft", "w4a8-tanh", "w8a8")
CONFORMER_CONVOLUTIONS = ("subsample_conv*", "*_dw")   # every other kernel is a Dense (edgeasr/models/conformer.py)
TARGETS = {"float_cer_max": 0.10, "w4_cer_gap_max_points": 0.5, "w4_size_ratio_min": 7.5, "rtf_max": 0.05}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "build" / "asr_data",
                        help="Synthetic corpus folder, synthesized there if it has no train.jsonl "
                             "(default: build/asr_data).")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "asr_runs",
                        help="Folder of the training runs and converted .tflite models (default: build/asr_runs).")
    parser.add_argument("--docs", type=Path, default=None,
                        help="Folder asr_results.md and asr_results.json are written to (default: docs, or "
                             "docs/asr_seedN for --finetune-seed N other than 0).")
    parser.add_argument("--speakers", type=int, default=300,
                        help="Voice+variant speakers in a newly synthesized corpus (default: %(default)s).")
    parser.add_argument("--utterances", type=int, default=40,
                        help="Utterances per speaker in a newly synthesized corpus (default: %(default)s).")
    parser.add_argument("--size", default="xs", help="Conformer size preset: tiny, xs or s (default: %(default)s).")
    parser.add_argument("--float-epochs", type=int, default=40,
                        help="Epochs of the float training run (default: %(default)s).")
    parser.add_argument("--qat-epochs", type=int, default=3,
                        help="per QAT stage; 3 chosen over 2 on a pilot pair of runs (not kept in docs/): "
                             "the same validation gap, +0.11 points, and a lower 4-bit validation CER, 6.52%% "
                             "against 7.45%%")
    parser.add_argument("--qat-learning-rate", type=float, default=5e-4,
                        help="Peak learning rate of the float-ft, w4a8-tanh and w8a8 fine-tuning runs "
                             "(default: %(default)s).")
    parser.add_argument("--test-utterances", type=int, default=1200,
                        help="Score only the first N test (and validation) utterances (default: %(default)s).")
    parser.add_argument("--finetune-seed", type=int, default=0, metavar="N",
                        help="Seed of the three fine-tuning runs (float-ft, w4a8-tanh, w8a8); they start from the same "
                             "float run whatever the seed. Runs and models of a seed other than 0 are named ..._seedN, "
                             "so a second seed gives a second estimate of the 4-bit gap (default: %(default)s).")
    parser.add_argument("--train-only", choices=RUNS, default=None, help="Train this run and stop.")
    parser.add_argument("--report-only", action="store_true",
                        help="Only rewrite asr_results.md from asr_results.json in --docs.")
    args = parser.parse_args(argv)
    if args.finetune_seed < 0:
        parser.error(f"--finetune-seed: a seed is a whole number >= 0, not {args.finetune_seed}")
    if args.docs is None:
        args.docs = REPO / "docs" / f"asr_seed{args.finetune_seed}" if args.finetune_seed else REPO / "docs"
    return args


def dense_per_tensor(name: str) -> PrecisionPolicy:
    """The preset with one scale per Dense kernel, its convolutions (subsampling, depthwise) per
    output channel: the quantizers the runs in docs/asr_results.md were trained with. Per-channel
    Dense kernels add a float32 scale per output unit: 651,296 instead of 621,544 bytes for the
    same w4a8-tanh weights (6.08x instead of 6.37x; the target is 7.5x). Their CER is unmeasured."""
    policy = preset(name)
    per_channel = replace(policy.default)
    rules = [PrecisionRule(pattern, per_channel) for pattern in CONFORMER_CONVOLUTIONS]
    return replace(policy, default=replace(policy.default, granularity="per-tensor"), rules=rules + policy.rules)


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        write_markdown(read_summary(args.docs, "asr_results", "--report-only"), args.docs)
        write_seed_summary(seeds_root(args))
        return
    started = time.perf_counter()
    if not (args.data / "train.jsonl").is_file():
        synthesize_asr_corpus(args.data, AsrSynthConfig(speakers=args.speakers, utterances_per_speaker=args.utterances))
    runs, configs = plan_runs(args)
    if args.train_only:
        train_once(runs[args.train_only], configs[args.train_only])
        return
    timings = {name: train_once(runs[name], configs[name]) for name in RUNS}
    models = {policy: runs[policy].with_name(runs[policy].name + ".tflite") for policy in ("w4a8-tanh", "w8a8")}
    conversions = {policy: convert_once(runs[policy], models[policy]) for policy in models}
    manifest = args.data / "test.jsonl"
    evaluations = [evaluate_model(runs[p], manifest, limit=args.test_utterances)
                   for p in ("float", "float-ft", "w8a8", "w4a8-tanh")]
    evaluations += [evaluate_model(models[p], manifest, limit=args.test_utterances) for p in ("w8a8", "w4a8-tanh")]
    validation = [evaluate_model(path, args.data / "validation.jsonl", limit=args.test_utterances)
                  for path in (runs["float-ft"], models["w4a8-tanh"])]
    results = summarise(args, runs, timings, conversions, evaluations, validation, time.perf_counter() - started)
    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.docs / "asr_results.json", results)
    write_markdown(results, args.docs)
    write_seed_summary(seeds_root(args))


def plan_runs(args) -> tuple[dict, dict]:
    """The run folder and training config of each of RUNS: the float run, and the three fine-tuning runs of
    --finetune-seed that start from it."""
    base = asr_run_config(args.data / "train.jsonl", args.data / "validation.jsonl", args.data / "test.jsonl",
                          size=args.size)
    base = replace(base, train=replace(base.train, epochs=args.float_epochs, batch_size=24, learning_rate=2e-3),
                   asr=replace(base.asr, noise=False))
    runs = {name: args.work / f"{args.size}_{name.replace('-', '_')}{_seed_suffix(args, name)}" for name in RUNS}
    configs = {"float": base}
    for name, policy, stages, epochs in (("float-ft", preset("float"), 1, 2 * args.qat_epochs),
                                         ("w4a8-tanh", dense_per_tensor("w4a8-tanh"), 2, args.qat_epochs),
                                         ("w8a8", dense_per_tensor("w8a8"), 1, args.qat_epochs)):
        tuned = with_policy(base, policy, stages, epochs, runs["float"], args.qat_learning_rate)
        configs[name] = replace(tuned, train=replace(tuned.train, seed=args.finetune_seed))
    return runs, configs


def _seed_suffix(args, run: str) -> str:
    """Fine-tuning runs of a seed other than 0 live beside those of seed 0; the float run is shared."""
    return f"_seed{args.finetune_seed}" if run != "float" and args.finetune_seed else ""


def seeds_root(args) -> Path:
    """The folder of seed 0's tables, which holds the other seeds' folders (asr_seedN) and asr_seeds.md."""
    return args.docs.parent if args.finetune_seed and args.docs.name == f"asr_seed{args.finetune_seed}" else args.docs


def train_once(run_dir: Path, config) -> dict:
    """Train unless the run already has its model; the seconds of training from history."""
    if not (run_dir / "model.keras").is_file():
        started = time.perf_counter()
        train_asr(run_dir, config)
        return {"seconds_this_session": round(time.perf_counter() - started, 1)}
    return {"seconds_this_session": 0.0}


def convert_once(run_dir: Path, output: Path) -> dict:
    report_path = output.with_suffix(".convert.json")
    if output.is_file() and report_path.is_file():
        return json.loads(report_path.read_text())
    result = convert_asr_run(run_dir, output, force=True)
    write_json_atomic(report_path, result)
    return result


def _training_record(run_dir: Path) -> dict:
    """Epochs, final losses and the numerics the run was trained with (edgeasr.train.numerics)."""
    run = AsrRunDir(run_dir)
    history = run.read_history()
    return {"epochs": len(history), "final_loss": history[-1].get("loss") if history else None,
            "final_val_loss": history[-1].get("val_loss") if history else None, "numerics": run.read_numerics()}


def cer_gap(reference: dict, quantized: dict) -> dict:
    """CER(quantized) - CER(reference) in points, with its paired-bootstrap standard error."""
    return {"points": 100 * (quantized["cer"] - reference["cer"]),
            "standard_error": 100 * cer_difference_standard_error(reference["character_edits"],
                                                                  quantized["character_edits"])}


def summarise(args, runs, timings, conversions, evaluations, validation, seconds) -> dict:
    names = [("keras", "float"), ("keras", "float-ft"), ("keras", "w8a8"), ("keras", "w4a8-tanh"),
             ("litert", "w8a8"), ("litert", "w4a8-tanh")]
    by_name = dict(zip(names, evaluations))
    float_cer = by_name[("keras", "float-ft")]["cer"]   # the same fine-tuning budget as the QAT runs
    w4 = by_name[("litert", "w4a8-tanh")]
    w4_conversion = conversions["w4a8-tanh"]
    ratio = w4_conversion["float_bytes"] / w4_conversion["bytes"]
    rtf = max(by_name[("litert", p)]["rtf"] for p in ("w8a8", "w4a8-tanh"))
    gap = cer_gap(by_name[("keras", "float-ft")], w4)
    targets = {
        "float_cer": {"value": float_cer, "target": f"<= {TARGETS['float_cer_max']:.0%}",
                      "met": float_cer <= TARGETS["float_cer_max"]},
        "w4a8_cer_gap_points": {"value": gap["points"], "standard_error": gap["standard_error"],
                                "target": f"<= {TARGETS['w4_cer_gap_max_points']} points",
                                "met": gap["points"] <= TARGETS["w4_cer_gap_max_points"]},
        "w4a8_size_ratio": {"value": ratio, "target": f">= {TARGETS['w4_size_ratio_min']}x",
                            "met": ratio >= TARGETS["w4_size_ratio_min"]},
        "rtf_single_thread": {"value": rtf, "target": f"<= {TARGETS['rtf_max']}", "met": rtf <= TARGETS["rtf_max"]},
    }
    return {
        "size": args.size, "test_utterances": args.test_utterances, "seconds": round(seconds, 1),
        "test_total": len((args.data / "test.jsonl").read_text().splitlines()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "corpus": json.loads((args.data / "synth_asr_config.json").read_text())["config"],
        "recipe": {"float_epochs": args.float_epochs, "qat_epochs_per_stage": args.qat_epochs,
                   "qat_learning_rate": args.qat_learning_rate, "finetune_seed": args.finetune_seed},
        "training": {name: {**_training_record(path), **timings.get(name, {})} for name, path in runs.items()},
        "conversions": {p: {**{k: c[k] for k in ("bytes", "float_bytes", "parameters", "int4_share", "parity")},
                            **measured("float_reference", "int4_share")} for p, c in conversions.items()},
        "evaluations": [{"model": f"{kind} {policy}",
                         **{k: v for k, v in e.items() if k not in ("model", "character_edits", "transcripts")},
                         "examples": [{k: t[k] for k in ("reference", "hypothesis")} for t in e["transcripts"][:5]]}
                        for (kind, policy), e in by_name.items()],
        "targets": targets,
        "validation": {"float_ft_cer": validation[0]["cer"], "w4a8_cer": validation[1]["cer"],
                       "utterances": validation[0]["utterances"], **cer_gap(*validation)},
    }


def write_markdown(results: dict, docs: Path) -> None:
    lines = [
        f"# Conformer-CTC `{results['size']}` on the synthetic corpus (held-out voices)",
        "",
        "Produced by `python scripts/asr_results.py`; do not edit by hand.",
        "",
        f"Corpus: {results['corpus']['speakers']} espeak-ng voice+variant speakers x "
        f"{results['corpus']['utterances_per_speaker']} utterances (digit strings, commands, short sentences, "
        f"<= {results['corpus']['max_seconds']} s), split 80/10/10 by speaker with no timbre shared. "
        f"Test: {min(results['test_utterances'], results['test_total'])} of the {results['test_total']} test "
        f"utterances. Greedy CTC decoding, "
        f"character tokens. `float-ft` is the float run trained on for the same epochs and learning rate as the "
        f"w4a8-tanh QAT run: the reference of the 4-bit gap. The QAT runs quantize Dense kernels per tensor "
        f"and convolution kernels per output channel (`dense_per_tensor` in the script says why). "
        f"Fine-tuning seed {results['recipe'].get('finetune_seed', 0)} (`--finetune-seed`).",
        "",
        "| model | WER | CER | sentences right | RTF (1 thread) | file bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in results["evaluations"]:
        rtf = f"{e['rtf']:.4f}" if e.get("rtf") is not None else "-"
        size = f"{e['bytes']:,}" if e.get("bytes") is not None else "-"
        lines.append(f"| {e['model']} | {e['wer']:.2%} | {e['cer']:.2%} | {e['sentence_accuracy']:.1%} | {rtf} | {size} |")
    lines += ["", "| conversion | bytes | float TFLite bytes | ratio | INT4 share | Keras-LiteRT frame agreement |",
              "|---|---:|---:|---:|---:|---:|"]
    for policy, c in results["conversions"].items():
        lines.append(f"| {policy} | {c['bytes']:,} | {c['float_bytes']:,} | {c['float_bytes'] / c['bytes']:.2f}x | "
                     f"{(c['int4_share'] or 0):.0%} | {c['parity']['frame_argmax_agreement']:.2%} |")
    lines += ["", *measures_caveat(results["conversions"].values(), "float_reference", "int4_share")]
    lines += ["## Targets", "", "| target | value | required | |", "|---|---:|---|---|"]
    formats = {"float_cer": "{:.2%}", "w4a8_cer_gap_points": "{:+.2f} points", "w4a8_size_ratio": "{:.2f}x",
               "rtf_single_thread": "{:.4f}"}
    for name, t in results["targets"].items():
        error = f" ± {t['standard_error']:.2f}" if "standard_error" in t else ""
        lines.append(f"| {name} | {formats[name].format(t['value'])}{error} | {t['target']} | "
                     f"{'met' if t['met'] else 'MISSED'} |")
    cer = {e["model"]: e["cer"] for e in results["evaluations"]}
    lines += ["", "±: the standard error of the gap, by a paired bootstrap over the test utterances "
              "(2,000 resamples, both models scored on each resample)."]
    if "validation" in results:
        v = results["validation"]
        lines += ["", f"On the {v['utterances']} validation utterances (other held-out voices; recipe choices "
                  f"are made there): float-ft CER {v['float_ft_cer']:.2%}, LiteRT w4a8-tanh {v['w4a8_cer']:.2%}, "
                  f"gap {v['points']:+.2f} ± {v['standard_error']:.2f} points."]
    lines += ["", f"The 4-bit gap in CER points: QAT in Keras "
              f"{100 * (cer['keras w4a8-tanh'] - cer['keras float-ft']):+.2f}, conversion to LiteRT "
              f"{100 * (cer['litert w4a8-tanh'] - cer['keras w4a8-tanh']):+.2f} (w8a8: "
              f"{100 * (cer['litert w8a8'] - cer['keras w8a8']):+.2f})."]
    lines += ["", "## Training", "", "| run | epochs (all stages) | final loss | final validation loss |",
              "|---|---:|---:|---:|"]
    for name, t in results["training"].items():
        loss = f"{t['final_loss']:.3f}" if t["final_loss"] is not None else "-"
        val = f"{t['final_val_loss']:.3f}" if t["final_val_loss"] is not None else "-"
        lines.append(f"| {name} | {t['epochs']} | {loss} | {val} |")
    lines += ["", "Numerics the runs were trained with (a run reproduces bit for bit only under the same ones, "
              "docs/toolchain_facts.md): " + describe_runs([t.get("numerics") for t in results["training"].values()])
              + "."]
    lines += ["", "## Examples (LiteRT w4a8-tanh)", ""]
    w4 = next(e for e in results["evaluations"] if e["model"] == "litert w4a8-tanh")
    for example in w4.get("examples", []):
        lines.append(f"- ref: `{example['reference']}`  \n  hyp: `{example['hypothesis']}`")
    write_bytes_atomic(docs / "asr_results.md", ("\n".join(lines) + "\n").encode())


def seed_results(root: Path) -> list:
    """The asr_results.json of every fine-tuning seed under `root`, in seed order."""
    paths = [Path(root) / "asr_results.json", *Path(root).glob("asr_seed*/asr_results.json")]
    results = [json.loads(path.read_text()) for path in paths if path.is_file()]
    return sorted(results, key=lambda r: r["recipe"].get("finetune_seed", 0))


def seed_gaps(results: dict) -> dict:
    """One seed's 4-bit CER gap in points: on test (whole, its QAT and conversion parts) and on validation."""
    cer = {e["model"]: 100 * e["cer"] for e in results["evaluations"]}
    gap = results["targets"]["w4a8_cer_gap_points"]
    return {"seed": results["recipe"].get("finetune_seed", 0), "float_ft_cer": cer["keras float-ft"],
            "w4a8_cer": cer["litert w4a8-tanh"], "test": gap["value"], "test_error": gap["standard_error"],
            "qat": cer["keras w4a8-tanh"] - cer["keras float-ft"],
            "conversion": cer["litert w4a8-tanh"] - cer["keras w4a8-tanh"],
            "validation": results["validation"]["points"], "validation_error": results["validation"]["standard_error"]}


def write_seed_summary(root: Path) -> None:
    """asr_seeds.md under `root`: each seed's 4-bit gap and the mean over seeds, judged against the target."""
    rows = [seed_gaps(results) for results in seed_results(root)]
    if not rows:
        return
    lines = ["# Conformer-CTC 4-bit CER gap over fine-tuning seeds", "",
             "Produced by `python scripts/asr_results.py` (`--finetune-seed N` adds seed N); do not edit by hand.", "",
             "Every seed fine-tunes float-ft, w4a8-tanh and w8a8 from the same float run, so the spread below is "
             "the fine-tuning's alone. Gap: LiteRT w4a8-tanh CER minus Keras float-ft CER, in points; ± of a seed: "
             "paired bootstrap over utterances; ± of the mean: standard error over seeds. The conversion part also "
             "holds the change of feeding Keras in batches to feeding the file's 4 s windows, which the float model "
             "pays too: docs/asr_gap_parts.md (`scripts/asr_gap_parts.py`) splits it off.", "",
             "| seed | float-ft CER | LiteRT w4a8 CER | test gap | QAT part | conversion part | validation gap |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['float_ft_cer']:.2f}% | {r['w4a8_cer']:.2f}% | "
                     f"{r['test']:+.2f} ± {r['test_error']:.2f} | {r['qat']:+.2f} | {r['conversion']:+.2f} | "
                     f"{r['validation']:+.2f} ± {r['validation_error']:.2f} |")
    lines += ["", *(mean_gap_line(f"Mean {split} gap", [r[split] for r in rows]) for split in ("test", "validation"))]
    write_bytes_atomic(Path(root) / "asr_seeds.md", ("\n".join(lines) + "\n").encode())


def mean_gap_line(label: str, values: list) -> str:
    """A Markdown bullet: the mean of per-seed gaps (points), its standard error and the target's
    verdict, which is not settled while the target lies within two standard errors of the mean."""
    limit = TARGETS["w4_cer_gap_max_points"]
    mean, error = sum(values) / len(values), standard_error(values)
    unsettled = error is None or abs(mean - limit) < 2 * error
    return (f"- {label} over {len(values)} seed{'s' if len(values) != 1 else ''}: {mean:+.2f}"
            f"{f' ± {error:.2f}' if error is not None else ''} points; target <= {limit}: "
            f"{'met' if mean <= limit else 'MISSED'}"
            f"{' (within two standard errors of the target: more seeds would settle it)' if unsettled else ''}.")


if __name__ == "__main__":
    main()
