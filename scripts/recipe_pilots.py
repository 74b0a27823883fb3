#!/usr/bin/env python3
"""Pilots of a quantized fine-tuning recipe (issue 6): does one change to the QAT recipe of
scripts/qat_results.py close a model's 4-bit stream gap to float?

A pilot fine-tunes --policy from the shared pre-trained float model of qat_results.py for each of
--seeds, with the recipe changed only where asked (--epochs, --lr, --mracos, --frozen-bn-epochs,
--start-from-float, --distill), into build/recipe_pilots/NAME.
Each run is then scored on stream_results' 4 h test stream like docs/stream_errors.md, paired with
the float run of the same seed in build/qat_runs (same shuffling and augmentation; the same start
unless the pilot starts from that float run). --stream validation scores the same runs a second time,
on keyword_thresholds' 10 h stream of the validation voices (voices training never heard either,
though the recipe's settings were chosen on them); --stream both on the two played one after another,
14 h of two sets of voices, where each run's 1 FA/h threshold rests on its 15th-best false accept:
  - at the threshold that gives that float run 1 FA/h: the run's FRR and false accepts per hour;
    both above float's means worse than float at that operating point;
  - at its own 1 FA/h threshold: FRR, the target's measure (noisier: on the test stream each run's
    threshold rests on its 5th-best false accept).
The recipe's own run of --recipe-policy (default w4a8-tanh) and the same seed (build/qat_runs) is
scored beside it where it exists, so a pilot row shows the change against the recipe on the same
seeds. Four seeds resolve about half a point at float's threshold.

Writes docs/recipe_pilots.md and .json, one row per pilot and stream (a rerun replaces its row), and
docs/recipe_pilots.png: each pilot's FRR and FA/h gaps at float's threshold, and its FRR gap at its
own 1 FA/h against the target.
Needs qat_results.py's data and runs; the streams are built (or reused) in --stream-work.

    python scripts/recipe_pilots.py lr3e-4 --lr 3e-4                # 4 seeds, ~6 min train + ~5 min score each
    python scripts/recipe_pilots.py qat12 --epochs 12 --seeds 0 1
    python scripts/recipe_pilots.py linear --policy w4a8 --seeds 0 1 2 3 4
    python scripts/recipe_pilots.py dw8 --policy w4a8-tanh-dw8 --stream both   # 8-bit where the file stores int8
    python scripts/recipe_pilots.py mracos0.1 --mracos 0.1          # pull weights toward the 4-bit grid
    python scripts/recipe_pilots.py frozenbn2 --frozen-bn-epochs 2  # last 2 epochs on the inference graph
    python scripts/recipe_pilots.py fromfloat --start-from-float    # QAT from each seed's trained float run
    python scripts/recipe_pilots.py distilled --start-from-float --distill 0.5  # ... which also teaches it
    python scripts/recipe_pilots.py fromfloat --start-from-float --seeds 0 1 2 3 4 5 6 7 8 9 --stream validation
    python scripts/recipe_pilots.py fromfloat --start-from-float --seeds 0 1 2 3 4 5 6 7 8 9 --stream both
    python scripts/recipe_pilots.py nearwords --data build/qat_data_nw --runs build/qat_runs_nw \\
        --stream-work build/stream_runs_nw --stream both      # data with near-words (qat_results.py --near-words)
    python scripts/recipe_pilots.py nearwords --data build/qat_data_nw --runs build/qat_runs_nw \\
        --stream-data build/qat_data --stream-work build/stream_runs_nwold   # ... on the default data's stream
    python scripts/qat_results.py --work build/qat_runs_pt30 --docs docs/pretrain30 --models ds_cnn_s \\
        --policies float --pretrain-epochs 30 --finetune-seeds 0 1 2 3 --seeded-policies float
    python scripts/recipe_pilots.py pretrain30 --runs build/qat_runs_pt30 --stream-work build/stream_runs_pt30 \\
        --stream both      # float runs and 4-bit runs from a float model pre-trained 30 epochs, not 10
    python scripts/recipe_pilots.py --markdown-only
"""
import edgeasr  # noqa: F401

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import keyword_thresholds as kt
import qat_results as qr
import stream_errors as se
import stream_results as sr
from _repo import REPO, read_summary, repo_relative, standard_error
from edgeasr.eval.stream import counts_text, errors_at, false_accept_sources, tally
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.quant.policy import known_presets
from edgeasr.train.numerics import describe_runs
from edgeasr.train.run_dir import RunDir, TrainConfig

CHANGES = (("policy", "policy {}"), ("epochs", "{} epochs"), ("lr", "peak lr {:g}"),
           ("mracos", "MRACos weight {:g}"), ("frozen_bn_epochs", "BN statistics frozen for the last {} epoch(s)"),
           ("start", "starts from {}"), ("distill", "distilled from its start, weight {:g}"),
           ("data", "trained, with its float runs, on {}"),
           ("pretrain_epochs", "its float runs and it start from a float model pre-trained for {} epochs"))
QAT_RESULTS = qr.parse_args([])   # qat_results.py's defaults: its data and runs
DEFAULT_DATA = repo_relative(QAT_RESULTS.data)
PRETRAINED, SEED_FLOAT = "the pre-trained float model", "its seed's float run"
TEST, VALIDATION = ("testing", sr.TEST_HOURS), ("validation", kt.VALIDATION_HOURS)
STREAMS = {"test": (TEST,), "validation": (VALIDATION,), "both": (TEST, VALIDATION)}   # (split, hours) played in turn
MEASURES = (("frr_at_float_threshold", "FRR at float's threshold", 100.0),
            ("fa_per_hour_at_float_threshold", "FA/h there", 1.0),
            ("frr_at_own_threshold", "FRR at own 1 FA/h", 100.0))


def main(argv=None):
    args = parse_args(argv)
    if args.markdown_only:
        return write_reports(read_summary(args.docs, "recipe_pilots"), args.docs)
    if args.name is None:
        raise SystemExit("recipe_pilots: give the pilot a NAME (see --help)")
    started = time.perf_counter()
    trained = train_runs(args)
    seeds = [score_seed(args, seed, trained[seed]) for seed in args.seeds]
    pilot = {"pilot": args.name, "model": args.model, "policy": args.policy, "epochs": args.epochs, "lr": args.lr,
             "mracos": args.mracos, "frozen_bn_epochs": args.frozen_bn_epochs,
             "start": SEED_FLOAT if args.start_from_float else PRETRAINED, "distill": args.distill,
             "data": repo_relative(args.data), "pretrain_epochs": pretrain_epochs(args),
             "recipe_policy": args.recipe_policy, "stream": args.stream,
             "stream_data": repo_relative(args.stream_data),
             "seeds": seeds,
             "minutes": round((time.perf_counter() - started) / 60, 1)}
    path = args.docs / "recipe_pilots.json"
    previous = json.loads(path.read_text())["pilots"] if path.is_file() else []
    summary = {"pilots": [p for p in previous if row_key(p) != row_key(pilot)] + [pilot]}
    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, summary)
    write_reports(summary, args.docs)


def row_key(pilot: dict) -> tuple:
    """What a row stands for: a pilot on a stream (rows before --stream were scored on the test stream)."""
    return pilot["pilot"], stream_name(pilot), stream_data(pilot)


def stream_data(pilot: dict) -> str:
    """The data whose voices the streams were built from (rows before --stream-data: the training data)."""
    return pilot.get("stream_data", training_data(pilot))


def training_data(pilot: dict) -> str:
    """The data the pilot and its float runs trained on (rows before --data was recorded: the default)."""
    return pilot.get("data", DEFAULT_DATA)


def stream_name(pilot: dict) -> str:
    return pilot.get("stream", "test")


def stream_text(pilot: dict) -> str:
    """E.g. "test 4 h"."""
    hours = sum(hours for _, hours in STREAMS[stream_name(pilot)])
    other_data = stream_data(pilot) != training_data(pilot)
    return f"{stream_name(pilot)} {hours:g} h" + (f" of {stream_data(pilot)}" if other_data else "")


def train_runs(args) -> dict:
    """{seed: Keras and LiteRT clip accuracy} of the pilot's runs, trained where not yet finished."""
    from edgeasr.data.pipeline import features_of
    from edgeasr.train.fit import load_training_data

    pretrained = args.runs / args.model / "pretrained_float"
    if not (pretrained / "model.keras").is_file() or not args.data.is_dir():
        raise SystemExit(f"recipe_pilots: {pretrained} or {args.data} missing; run scripts/qat_results.py first")
    recipe = qr.recipe_of(args.model, finetune_epochs=args.epochs)
    base = qr.base_config(args.data.resolve(), args.model, recipe, seed=0)
    base = replace(base, train=replace(base.train, mracos_weight=args.mracos, frozen_bn_epochs=args.frozen_bn_epochs,
                                       distill_weight=args.distill))
    data = load_training_data(base.with_model_shape(), progress=False)
    test_features = features_of(data.test.waves, base.frontend)
    trained = {}
    for seed in args.seeds:
        start = start_of(args, seed, pretrained)
        result = qr.finetune(args.work / args.name, args.lr, base, data, test_features, start.resolve(),
                             args.policy, seed, recipe)
        trained[seed] = {k: result[k] for k in ("keras_accuracy", "litert_accuracy")}
        print(json.dumps({"pilot": args.name, "seed": seed, **trained[seed]}), flush=True)
    return trained


def pretrain_epochs(args) -> int:
    """The epochs of the float pre-training every run of --runs (the float runs and the pilot's) starts from."""
    return RunDir(args.runs / args.model / "pretrained_float").read_config().train.epochs


def start_of(args, seed: int, pretrained: Path) -> Path:
    """The run a seed's fine-tuning starts from (and, when distilling, learns from): the shared
    pre-trained float model, or with --start-from-float the float run of the same seed, the run the
    pilot's run is compared with on the stream."""
    if not args.start_from_float:
        return pretrained
    start = args.runs / args.model / f"float_seed{seed}"
    if not (start / "model.keras").is_file():
        raise SystemExit(f"recipe_pilots: {start} missing; run scripts/qat_results.py --finetune-seeds {seed} first")
    return start


def score_seed(args, seed: int, accuracy: dict) -> dict:
    """The pilot's run and the recipe's run of one seed on --stream, against that seed's float run."""
    reference = stream_args(args, args.runs, args.stream_work)
    config = se.config_of(reference, args.model)
    float_path = sr.tflite_for(reference, args.model, f"float_seed{seed}")
    streams = [se.labelled_stream(reference, float_path, split, hours) for split, hours in STREAMS[args.stream]]

    def operating_points(stream, run, threshold=None) -> dict:
        """At the run's own 1 FA/h threshold and at `threshold` (default: its own), with the keywords
        that fired falsely there, and the numerics the run was trained with."""
        path = sr.tflite_for(stream, args.model, run)
        times, scores, names, hours, occurrences, pieces = joined_scores(stream, config, path, streams)
        own_frr, own_threshold = se.own_operating_point(times, scores, names, occurrences, hours, config)
        threshold = own_threshold if threshold is None else threshold
        at = errors_at(times, scores, names, occurrences, hours, config, threshold)
        sources = false_accept_sources(times, scores, names, occurrences, pieces, threshold,
                                       config.refractory_ms / 1000)
        return {"threshold": own_threshold, "frr_at_own_threshold": own_frr,
                "frr_at_float_threshold": at["frr"], "fa_per_hour_at_float_threshold": at["fa_per_hour"],
                "false_accepts_by_keyword_at_float_threshold": tally(keyword for keyword, _ in sources),
                "numerics": RunDir(stream.runs / args.model / run).read_numerics()}

    float_point = operating_points(reference, f"float_seed{seed}")
    threshold = float_point["threshold"]
    pilot = operating_points(stream_args(args, args.work / args.name, args.work / args.name / "stream_work"),
                             f"{args.policy}_seed{seed}", threshold)
    recipe_run = f"{args.recipe_policy}_seed{seed}"
    recipe = (operating_points(reference, recipe_run, threshold)
              if (args.runs / args.model / recipe_run / "model.keras").is_file() else None)
    row = {"seed": seed, **accuracy, "float": float_point, "pilot": pilot, "recipe": recipe}
    print(json.dumps(row), flush=True)
    return row


def joined_scores(args, config, model_path, streams: list) -> tuple:
    """(times, smoothed scores, labels, hours, keyword occurrences, pieces) of a model on `streams`
    ([(WAV path, occurrences, pieces)]) played one after another."""
    parts, offset = [], 0.0
    for wav, occurrences, pieces in streams:
        times, scores, names, hours = se.smoothed_scores(args, config, model_path, wav)
        parts.append((times + offset, scores, shifted(occurrences, offset), shifted(pieces, offset)))
        offset += hours * 3600
    times, scores, occurrences, pieces = zip(*parts)
    return (np.concatenate(times), np.concatenate(scores), names, offset / 3600, sum(occurrences, []),
            sum(pieces, []))


def shifted(labels: list, seconds: float) -> list:
    """[(start, end, name)] moved `seconds` later."""
    return [(start + seconds, end + seconds, name) for start, end, name in labels]


def stream_args(args, runs: Path, work: Path):
    """stream_results' arguments for the runs in `runs`, converted models and posteriors in `work`."""
    stream = se.parse_args([])
    stream.runs, stream.work, stream.data = runs, work, args.stream_data
    return stream


def change_text(pilot: dict) -> str:
    """What the pilot changed in the recipe of its model (and its recipe policy), e.g. "peak lr 0.0003"."""
    training = TrainConfig()
    recipe = {"policy": pilot["recipe_policy"], "epochs": qr.recipe_of(pilot["model"])["finetune_epochs"],
              "lr": qr.FINETUNE_LR, "mracos": training.mracos_weight, "frozen_bn_epochs": training.frozen_bn_epochs,
              "start": PRETRAINED, "distill": training.distill_weight, "data": DEFAULT_DATA,
              "pretrain_epochs": qr.recipe_of(pilot["model"])["pretrain_epochs"]}
    changes = [text.format(pilot.get(key, recipe[key])) for key, text in CHANGES
               if pilot.get(key, recipe[key]) != recipe[key]]
    return ", ".join(changes) or "none"


def write_reports(summary: dict, docs: Path) -> None:
    write_bytes_atomic(docs / "recipe_pilots.md", markdown(summary).encode())
    plot(summary, docs / "recipe_pilots.png")


def side_gaps(seeds: list, side: str, measure: tuple) -> list:
    """Per seed, `side`'s ("pilot" or "recipe") gap to float in one of MEASURES, in its unit."""
    key, _, unit = measure
    return [unit * (s[side][key] - s["float"][key]) for s in seeds if s[side] is not None]


def markdown(summary: dict) -> str:
    lines = ["# Recipe pilots (scripts/recipe_pilots.py)", "",
             "Each pilot fine-tunes one policy from qat_results.py's shared pre-trained float model (unless its "
             "change says otherwise) with one change to the recipe, and scores its runs on a stream of voices "
             "training never heard against the float run of the same seed (same shuffling and augmentation; the "
             "same start unless it starts from that run). The stream: test, stream_results.py's 4 h test stream; "
             "validation, keyword_thresholds.py's 10 h stream of the validation voices; both, the two one after "
             "another. Differences to float, mean ± "
             "standard error over the seeds: FRR (points) and false accepts per hour at the threshold that gives "
             "float 1 FA/h (both above zero: worse than float there, however the scores are scaled; the last column "
             "reads the two together, a mean within one standard error of zero counting as level), and FRR "
             "at the run's own 1 FA/h threshold (the target's measure, noisier). Each pilot column is followed by "
             "the same for the recipe's own runs of the policy in the recipe column on the same seeds "
             "(build/qat_runs), where it has them. The same as a picture: recipe_pilots.png.", "",
             "![pilots against float](recipe_pilots.png)", "",
             "| pilot | model | change to the recipe | seeds | stream | Keras clip accuracy | recipe's policy | "
             + " | ".join(f"{label} | recipe's" for _, label, _ in MEASURES) + " | at float's threshold |",
             "|---|---|---|---|---|---:|---|" + "---:|---:|" * len(MEASURES) + "---|"]
    for pilot in summary["pilots"]:
        seeds = pilot["seeds"]
        accuracy = np.mean([s["keras_accuracy"] for s in seeds])
        cells = []
        for measure in MEASURES:
            for side in ("pilot", "recipe"):
                cells.append(gap_text(side_gaps(seeds, side, measure), len(seeds)))
        seed_list = ", ".join(str(s["seed"]) for s in seeds)
        lines.append(f"| {pilot['pilot']} | {pilot['model']} | {change_text(pilot)} | {seed_list} | "
                     f"{stream_text(pilot)} | {accuracy:.2%} | "
                     f"{pilot['recipe_policy']} | " + " | ".join(cells) + f" | {reading(seeds)} |")
    return "\n".join(lines + keyword_lines(summary["pilots"]) + numerics_lines(summary["pilots"])) + "\n"


def keyword_lines(pilots: list) -> list:
    """Per pilot scored with them, the keywords that fired falsely at float's threshold, summed over
    its seeds: extra false accepts spread over the keywords, or a few keywords that fire too easily."""
    key = "false_accepts_by_keyword_at_float_threshold"
    scored = [p for p in pilots if all(key in s["pilot"] for s in p["seeds"])]
    if not scored:
        return []
    lines = ["", "False accepts at float's threshold by the keyword that fired, summed over the pilot's seeds "
             "(recipe and float: the same seeds):", ""]
    for pilot in scored:
        summed = {side: summed_counts([s[side][key] for s in pilot["seeds"] if s[side] is not None])
                  for side in ("pilot", "recipe", "float") if any(s[side] is not None for s in pilot["seeds"])}
        lines.append(f"- {label(pilot)} (seeds {', '.join(str(s['seed']) for s in pilot['seeds'])}): "
                     + "; ".join(f"{side} {counts_text(counts) or 'none'}" for side, counts in summed.items()))
    return lines


def numerics_lines(pilots: list) -> list:
    """Per pilot, the numerics its runs and the float and recipe runs it is compared with were trained
    with (edgeasr.train.numerics): under other numerics the same run trains other weights, so rows
    trained on different machines compare runs that differ like runs of another seed."""
    by_seed = {}   # a pilot's rows on several streams score the same runs: count each run once
    for pilot in pilots:
        for seed in pilot["seeds"]:
            by_seed.setdefault(pilot["pilot"], {})[seed["seed"]] = [
                seed[side].get("numerics") for side in ("pilot", "float", "recipe") if seed[side] is not None]
    runs_of = {name: sum(seeds.values(), []) for name, seeds in by_seed.items()}
    unrecorded = [name for name, runs in runs_of.items() if not any(runs)]
    lines = [f"- {name}: {describe_runs(runs)}" for name, runs in runs_of.items() if any(runs)]
    if unrecorded:
        lines.append(f"- {', '.join(unrecorded)}: trained before runs recorded their numerics")
    return ["", "Numerics that trained each pilot's runs and the float and recipe runs they are compared with "
            "(edgeasr.train.numerics; the same run under other numerics trains other weights, as another seed "
            "would):", ""] + lines


def plot(summary: dict, path: Path) -> None:
    """Left: FRR gap against FA/h gap at float's threshold, each pilot joined to the recipe's runs on
    the same seeds; right: FRR gap at each run's own 1 FA/h against the 1-point target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pilots = summary["pilots"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(pilots) + 3.5))
    left.axhline(0, color="#888888", lw=0.8)
    left.axvline(0, color="#888888", lw=0.8)
    for index, pilot in enumerate(pilots):
        color = plt.cm.tab20(index % 20)   # tab10 repeats after ten pilots
        (frr, frr_se), (fa, fa_se) = (mean_and_error(side_gaps(pilot["seeds"], "pilot", m)) for m in MEASURES[:2])
        left.errorbar(fa, frr, xerr=fa_se, yerr=frr_se, fmt="o", color=color, capsize=3, label=label(pilot))
        recipe_frr, recipe_fa = (mean_and_error(side_gaps(pilot["seeds"], "recipe", m))[0] for m in MEASURES[:2])
        left.plot([recipe_fa, fa], [recipe_frr, frr], color=color, lw=0.8, ls=":")
        left.plot(recipe_fa, recipe_frr, "o", mfc="none", color=color)
    left.text(0.98, 0.98, "worse than float on both", transform=left.transAxes, ha="right", va="top", fontsize=8)
    left.set_xlabel("false accepts per hour - float's")
    left.set_ylabel("FRR - float's (points)")
    left.set_title("at float's 1 FA/h threshold (hollow: recipe, the pilot's seeds it has)", fontsize=9)
    left.legend(fontsize=8)
    rows = np.arange(len(pilots))
    for offset, side, color in ((-0.2, "pilot", "#3b75af"), (0.2, "recipe", "#aaaaaa")):
        gaps = [side_gaps(p["seeds"], side, MEASURES[2]) for p in pilots]
        values = [mean_and_error(g) for g in gaps]
        right.barh(rows + offset, [v for v, _ in values], xerr=[e or 0.0 for _, e in values], height=0.38,
                   color=color, capsize=3, label=side if side == "pilot" else "recipe, the pilot's seeds it has")
        for row, seed_gaps in zip(rows, gaps):
            right.plot(seed_gaps, [row + offset] * len(seed_gaps), "o", ms=3, mfc="white", mec="black", mew=0.6)
    right.axvline(1.0, color="#c44e52", ls="--", lw=1, label="target: within 1 point")
    right.axvline(0, color="#888888", lw=0.8)
    right.set_yticks(rows, [label(p) for p in pilots])
    right.invert_yaxis()
    right.set_xlabel("FRR at the run's own 1 FA/h - float's (points)")
    right.set_title("the target's measure (mean ± standard error; dots: seeds)", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label(pilot: dict) -> str:
    """The pilot's name, and its stream where that is not the test stream."""
    text = stream_text(pilot)
    return pilot["pilot"] if text == stream_text({"stream": "test"}) else f"{pilot['pilot']} ({text})"


def summed_counts(counts: list) -> dict:
    """{name: total} of several {name: count}."""
    total = {}
    for each in counts:
        for name, count in each.items():
            total[name] = total.get(name, 0) + count
    return dict(sorted(total.items()))


def mean_and_error(gaps: list) -> tuple:
    """(mean, standard error or None) of per-seed gaps; (nan, None) when there are none."""
    return (float(np.mean(gaps)), standard_error(gaps)) if gaps else (np.nan, None)


def reading(seeds: list) -> str:
    """What the pilot's mean FRR and FA/h gaps at float's threshold say together; a mean within one
    standard error of zero counts as level with float."""
    frr, fa = (direction(side_gaps(seeds, "pilot", measure)) for measure in MEASURES[:2])
    if frr > 0 and fa > 0:
        return "worse than float on both"
    if frr <= 0 and fa <= 0:
        return "no worse than float on either"
    words = {-1: "fewer", 0: "as many", 1: "more"}
    return f"{words[frr]} misses, {words[fa]} false accepts"


def direction(gaps: list) -> int:
    """+1 or -1: the sign of the mean gap; 0 when it lies within one standard error of zero."""
    mean, error = mean_and_error(gaps)
    return 0 if error is not None and abs(mean) <= error else int(np.sign(mean))


def gap_text(gaps: list, seeds: int) -> str:
    """'+m ± se' of per-seed gaps, noting when fewer seeds than the pilot's had one."""
    if not gaps:
        return "-"
    error = standard_error(gaps)
    text = f"{np.mean(gaps):+.2f}" + ("" if error is None else f" ± {error:.2f}")
    return text if len(gaps) == seeds else f"{text} ({len(gaps)} seeds)"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="the pilot's name: its runs go to --work/NAME, its row is NAME")
    parser.add_argument("--model", choices=qr.MODELS, default="ds_cnn_s",
                        help="the model the pilot fine-tunes (default: %(default)s)")
    parser.add_argument("--policy", choices=[p for p in known_presets() if p not in ("float", "conformer-mixed")],
                        default="w4a8-tanh",
                        help="the precision policy the pilot fine-tunes with (default: %(default)s)")
    parser.add_argument("--recipe-policy", choices=[p for p in qr.POLICIES if p != "float"], default="w4a8-tanh",
                        help="the recipe's runs the pilot is shown beside")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the model's recipe)")
    parser.add_argument("--lr", type=float, default=qr.FINETUNE_LR,
                        help="peak fine-tuning learning rate (default: the recipe's)")
    parser.add_argument("--mracos", type=float, default=TrainConfig().mracos_weight,
                        help="MRACos weight (edgeasr.quant.mracos: pulls weights toward their grid; "
                             "0: off, the recipe's)")
    parser.add_argument("--frozen-bn-epochs", type=int, default=TrainConfig().frozen_bn_epochs,
                        help="last epochs trained on the BatchNorm moving statistics (0: none, the recipe's)")
    parser.add_argument("--start-from-float", action="store_true",
                        help="start each seed from its float run in --runs (float_seed<i>, trained for the recipe's "
                             "pre-training and fine-tuning epochs) instead of the pre-trained float model")
    parser.add_argument("--distill", type=float, default=TrainConfig().distill_weight,
                        help="knowledge distillation weight: the run learns the softened posteriors of the model "
                             "it starts from (edgeasr.train.distill; 0: off, the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=se.PAIRED_SEEDS,
                        help="fine-tuning seeds, each paired with the float run of that seed (default: %(default)s)")
    parser.add_argument("--stream", choices=list(STREAMS), default="test",
                        help="score on stream_results' 4 h test stream, on keyword_thresholds' 10 h stream of the "
                             "validation voices, or on both one after another (14 h; runs already trained are "
                             "only scored)")
    parser.add_argument("--runs", type=Path, default=QAT_RESULTS.work,
                        help="qat_results.py's runs: the pre-trained float model, the float and recipe runs")
    parser.add_argument("--data", type=Path, default=QAT_RESULTS.data,
                        help="qat_results.py's data; another one needs its own --runs and --stream-work")
    parser.add_argument("--stream-data", type=Path, default=None,
                        help="data whose voices build the streams (default: --data); e.g. score runs trained on "
                             "other data on build/qat_data's streams, with a --stream-work of its own")
    parser.add_argument("--stream-work", type=Path, default=sr.parse_args([]).work,
                        help="stream_results.py's --work: the test stream, the float and recipe runs' posteriors")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "recipe_pilots",
                        help="folder of the pilots' runs, one NAME folder each (default: build/recipe_pilots)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="folder recipe_pilots.md, .json and .png are written to (default: docs)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite recipe_pilots.md from the recipe_pilots.json already in --docs")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or qr.recipe_of(args.model)["finetune_epochs"]
    args.stream_data = args.stream_data or args.data
    return args


if __name__ == "__main__":
    sys.exit(main())
