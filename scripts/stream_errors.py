#!/usr/bin/env python3
"""Where the keyword spotters' stream errors come from (issue 6): the 4-bit FRR gap of
docs/stream_results.md split into weaker keyword scores and more false accepts.

For every fine-tuning seed run that scripts/stream_results.py --seed-spread scored, on its 4 h test
stream at its smoothing window:
  - FRR at 1 FA/h, the threshold that gives it, and the false accepts that threshold lets through by
    what the stream was playing (keyword, other word, sentence, noise, silence);
  - at the threshold that gives the same seed's float run 1 FA/h, the run's FRR and false accepts per
    hour. Seed i of every policy fine-tunes the same float model with the same shuffling and
    augmentation, so these are paired: a higher FRR there means weaker scores on the keywords, more
    false accepts mean a model that fires more often on everything else, which pushes its own 1 FA/h
    threshold up and its FRR with it. Both higher: the run is worse than float at that operating
    point, however its scores are scaled. One higher and the other lower: its scores may only sit
    lower or higher than float's (e.g. after distillation), a move along its DET curve.

Reads the converted models and raw posteriors stream_results cached in build/stream_runs (a run it
has not scored is converted and scored here, once). Writes docs/stream_errors.md and .json; a run
for some --models keeps the other models' rows.

    python scripts/stream_results.py --seed-spread     # first: the runs' posteriors
    python scripts/stream_errors.py                    # ~10 s per run
    python scripts/stream_errors.py --models ds_cnn_s --docs /tmp/docs
    python scripts/stream_errors.py --markdown-only    # re-render from docs/stream_errors.json

Runs trained elsewhere are scored on the same test stream with --runs and a --work of their own (the
converted files are named by run), e.g. those trained on sentence windows (scripts/qat_results.py's
last example); --data stays the default data, whose held-out voices the stream is built from:

    python scripts/stream_errors.py --runs build/qat_runs_sw --work build/stream_runs_sw \\
        --models ds_cnn_s --docs docs/sentence_windows
"""
import edgeasr  # noqa: F401

import argparse
import sys
import time

import numpy as np

import stream_results as sr
from _repo import repo_relative, rewrite_markdown, standard_error, with_previous_rows
from edgeasr.eval.stream import errors_at, evaluate, false_accepts_by_kind, pieces_path, read_labels
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.runtime.streaming import DetectorConfig, smoothed_posteriors

DEFAULT_RUNS = repo_relative(sr.parse_args([]).runs)
# The fine-tuning seeds build/qat_runs holds both a float and a w4a8-tanh DS-CNN-S run of: the default of
# the scripts that compare the two seed by seed.
PAIRED_SEEDS = [0, 1, 2, 3]


def main(argv=None):
    args = parse_args(argv)
    if args.markdown_only:
        return rewrite_markdown(args.docs, "stream_errors", markdown)
    started = time.perf_counter()
    rows = []
    for model_name in args.models:
        rows += model_rows(args, model_name)
    summary = {"protocol": {"hours": args.hours, "seed": args.seed, "data": repo_relative(args.data),
                            "runs": repo_relative(args.runs),
                            "smoothing_ms": args.smoothing_ms, "target_fa_per_hour": 1.0},
               "runs": with_previous_rows(args.docs / "stream_errors.json", "runs", rows, args.models, sr.MODELS),
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.docs / "stream_errors.json", summary)
    write_bytes_atomic(args.docs / "stream_errors.md", markdown(summary).encode())


def model_rows(args, model_name: str) -> list:
    """One row per seed run of the model, float runs first (the others are scored at their thresholds)."""
    sr.require_seed_runs(args, model_name)
    config, float_thresholds, rows, stream = config_of(args, model_name), {}, [], None
    for variant, policy in sr.VARIANTS:
        for run in sr.seed_runs(args.runs / model_name, policy):
            path = sr.tflite_for(args, model_name, run)
            stream = stream or labelled_stream(args, path, "testing", args.hours)
            wav, occurrences, pieces = stream
            times, scores, names, hours = smoothed_scores(args, config, path, wav)
            frr, threshold = own_operating_point(times, scores, names, occurrences, hours, config)
            seed = sr.seed_of(run)
            if variant == "float":
                float_thresholds[seed] = threshold
            row = {"model": model_name, "variant": variant, "run": run, "seed": seed,
                   "frr_at_1_fa_per_hour": frr, "threshold": threshold,
                   "false_accepts_by_kind": false_accepts_by_kind(times, scores, names, occurrences, pieces,
                                                                  threshold, config.refractory_ms / 1000)}
            if seed in float_thresholds:
                at_float = errors_at(times, scores, names, occurrences, hours, config, float_thresholds[seed])
                row["at_float_threshold"] = {"frr": at_float["frr"], "fa_per_hour": at_float["fa_per_hour"]}
            rows.append(row)
            print(f"{model_name} {run}: FRR {row['frr_at_1_fa_per_hour']:.2%} at {threshold:.4f}", flush=True)
    return rows


def own_operating_point(times, scores, names, occurrences, hours, config: DetectorConfig) -> tuple:
    """(FRR, threshold) of a run at its own 1 FA/h; the threshold is 1.0, the detector that never
    fires, when nothing reaches 1 FA/h."""
    point = evaluate(times, scores, names, occurrences, hours, config)["frr_at_fa_per_hour"]["1.0"]
    return point["frr"], 1.0 if point["threshold"] is None else point["threshold"]


def config_of(args, model_name: str) -> DetectorConfig:
    return DetectorConfig(hop_ms=sr.HOP_MS[model_name], smoothing_ms=args.smoothing_ms)


def labelled_stream(args, model_path, split: str, hours: float) -> tuple:
    """(WAV path, keyword occurrences, pieces) of the split's stream of `hours` (see stream_results.stream_of)."""
    wav, label_path = sr.stream_of(args, model_path, split, hours)
    return wav, read_labels(label_path), read_labels(pieces_path(label_path))


def smoothed_scores(args, config: DetectorConfig, model_path, wav) -> tuple:
    """(times, smoothed scores, labels, hours) of the model at model_path on the stream `wav`."""
    times, raw, names, hours = sr.cached_posteriors(model_path, wav, config, args.work / "posteriors")
    return times, smoothed_posteriors(raw, sr.smoothing_runs(config)), names, hours


def markdown(summary: dict) -> str:
    p = summary["protocol"]
    lines = ["# Where the stream errors come from (scripts/stream_errors.py)", "",
             f"Produced by `python scripts/stream_errors.py` ({summary['minutes']:g} min) from {runs_text(p)}: "
             f"the {p['hours']:g} h test stream (held-out voices, seed {p['seed']}), smoothing "
             f"{p['smoothing_ms']:g} ms, one threshold for all keywords. "
             "At float's threshold: the threshold that gives the same seed's float run 1 FA/h; the runs of seed i "
             "all fine-tune the same float model with the same shuffling and augmentation. FRR and false accepts "
             "both above float's there: worse than float at that operating point, however the scores are scaled; "
             "one above and one below: the scores may only sit elsewhere, a move along the DET curve.", "",
             *summary_lines(summary["runs"]), "",
             "| model | variant | run | FRR @ 1 FA/h | threshold | false accepts there by piece | "
             "at float's threshold: FRR | FA/h |", "|---|---|---|---:|---:|---|---:|---:|"]
    for r in summary["runs"]:
        at = r.get("at_float_threshold") or {}
        kinds = ", ".join(f"{kind} {n}" for kind, n in r["false_accepts_by_kind"].items()) or "-"
        lines.append(f"| {r['model']} | {r['variant']} | {r['run']} | {r['frr_at_1_fa_per_hour']:.2%} | "
                     f"{r['threshold']:.4f} | {kinds} | {at.get('frr', float('nan')):.2%} | "
                     f"{at.get('fa_per_hour', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def runs_text(protocol: dict) -> str:
    """Where the scored runs came from: stream_results' seed runs unless --runs named others."""
    runs = protocol.get("runs", DEFAULT_RUNS)
    if runs == DEFAULT_RUNS:
        return "the models and raw posteriors of `scripts/stream_results.py --seed-spread`"
    return f"the runs in {runs} (`--runs`), converted and scored here"


def summary_lines(runs: list) -> list:
    """Per quantized variant, means over the seeds it shares with float: FRR at its own 1 FA/h (the target's
    measure), FRR and FA/h at float's threshold against float's own, and the share of all false accepts (at
    each run's 1 FA/h) during sentences."""
    lines = []
    for model, variant in dict.fromkeys((r["model"], r["variant"]) for r in runs):
        if variant == "float":
            continue
        floats = {r["seed"]: r for r in runs if r["model"] == model and r["variant"] == "float"}
        paired = [(floats[r["seed"]], r) for r in runs
                  if r["model"] == model and r["variant"] == variant and r["seed"] in floats]
        if not paired:
            continue
        own = np.array([[100 * run["frr_at_1_fa_per_hour"] for run in pair] for pair in paired])
        frr = np.array([[100 * run["at_float_threshold"]["frr"] for run in pair] for pair in paired])
        fa = np.array([[run["at_float_threshold"]["fa_per_hour"] for run in pair] for pair in paired])
        seeds = f"{len(paired)} seed" + ("s" if len(paired) > 1 else "")
        lines.append(f"- {model} {variant}, {seeds}: FRR at its own 1 FA/h {own[:, 1].mean():.2f}% vs float "
                     f"{own[:, 0].mean():.2f}% ({mean_and_error(own[:, 1] - own[:, 0])} points); "
                     f"at float's threshold: FRR {frr[:, 1].mean():.2f}% "
                     f"vs float {frr[:, 0].mean():.2f}% ({mean_and_error(frr[:, 1] - frr[:, 0])} points), "
                     f"{fa[:, 1].mean():.2f} vs {fa[:, 0].mean():.2f} false accepts per hour "
                     f"({mean_and_error(fa[:, 1] - fa[:, 0])}); false accepts during sentences: "
                     f"{sentence_share([q for _, q in paired]):.0%} (float {sentence_share([f for f, _ in paired]):.0%})")
    return lines


def mean_and_error(differences: np.ndarray) -> str:
    """'+m ± se' of paired differences (the standard error once there are two)."""
    error = standard_error(differences)
    return f"{differences.mean():+.2f}" + ("" if error is None else f" ± {error:.2f}")


def sentence_share(runs: list) -> float:
    counts = [r["false_accepts_by_kind"] for r in runs]
    total = sum(sum(c.values()) for c in counts)
    return sum(c.get("sentence", 0) for c in counts) / total if total else 0.0


def parse_args(argv):
    return runs_parser(__doc__, "stream_errors").parse_args(argv)


def runs_parser(description: str, report: str) -> argparse.ArgumentParser:
    """The options of a script that scores stream_results' seed runs on its test stream and writes
    docs/REPORT.md and .json."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = sr.parse_args([])
    folders = {"runs": "folder of the MODEL/<policy>_seed<i> runs to score",
               "data": "data set whose held-out voices the streams are built from",
               "work": "folder of the converted models, streams and cached posteriors",
               "docs": f"folder {report}.md and {report}.json are written to"}
    for name, text in folders.items():
        default = getattr(defaults, name)
        parser.add_argument(f"--{name}", type=type(default), default=default,
                            help=f"{text} (default: {repo_relative(default)})")
    parser.add_argument("--models", nargs="+", default=defaults.models,
                        help="models whose seed runs are scored (default: %(default)s)")
    parser.add_argument("--hours", type=float, default=defaults.hours,
                        help="length of the test stream in hours (default: %(default)s)")
    parser.add_argument("--smoothing-ms", type=float, default=defaults.smoothing_ms,
                        help="detector's posterior averaging window in ms (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed the streams are built with (default: %(default)s)")
    parser.add_argument("--markdown-only", action="store_true",
                        help=f"rewrite {report}.md from the {report}.json already in --docs")
    parser.add_argument("--scores", default=defaults.scores, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
