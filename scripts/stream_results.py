#!/usr/bin/env python3
"""Issue 6 results: streaming keyword spotting on a four-hour held-out stream.

For the stateless FFN and DS-CNN-S, each as float (reference), 8-bit (w8a8 QAT), 4-bit
(w4a8-tanh QAT, INT4 weights) and 4-bit mixed (the `mixed` preset: the same, but the first layer and
the logits layer keep 8-bit weights; in DS-CNN-S conv0 and logits, 15% of its weights): false
rejects at 1 false accept per hour, CPU time per second of audio (x86, one thread, XNNPACK,
measured by running scripts/rpi_kws.py on a minute of the stream in blocks of one hop), peak RSS
of that process, and a DET plot; and FRR at 1 FA/h against the smoothing window, to choose the
detector's default.

Why four hours: FRR at 1 FA/h is read at the lowest threshold that lets through at most one false
accept per hour. On a one-hour stream that threshold sits just above the second-best scoring false
accept of the whole stream: two events decide it, at thresholds where FRR climbs steeply (DS-CNN-S
seed 0 on 4 h: 17.2% at 0.975, 24.0% at 0.986). On 1 h its float model scored 9.6% (threshold 0.94)
and its 4-bit one 16.1% (0.975). On four hours the figure rests on the fifth false accept.

The models output int8 logits and the detector applies the softmax (`edgeasr convert --scores
logits`, the default for KWS models); `--scores probabilities` converts with the int8 Softmax in
the model, as before, for comparison. Each model runs over the stream once; its raw posteriors
(no smoothing) are cached, and each smoothing window is the detector's own mean over the last
runs (`smoothed_posteriors`) applied to them.

The models are the runs of scripts/qat_results.py (build/qat_runs, trained on build/qat_data):
the tables use its first fine-tuning seed (`<policy>_seed0`), --seed-spread adds every other
seed it trained; run it first when they are missing. The quantized ones are converted with `edgeasr convert`
(metadata, INT4 packing, parity), the float one with the stock float converter plus the same
metadata. The stream is built from build/qat_data's test split (held-out voices); a second stream
of the validation voices chooses what a device would ship with (the thresholds written into it, the
common threshold for 1 FA/h, and with --seed-spread the fine-tuning seed), and the test stream
scores those choices.

    python scripts/stream_results.py                  # the 4 h pass: ~1 min per FFN model, ~2 per DS-CNN-S, cached
    python scripts/stream_results.py --hours 0.2 --models ffn_stateless --docs /tmp/docs   # quick
    python scripts/stream_results.py --markdown-only   # re-render the table from docs/stream_results.json
    python scripts/stream_results.py --seed-spread --compare-scores   # what docs/ shows: + seeds, + int8 softmax

Running a subset of --models keeps the other models' rows and DET curves in docs/stream_results.json;
running without --seed-spread keeps the seed-spread rows it has.
"""
import edgeasr  # noqa: F401

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _repo import (MAIN_RUN, REPO, repo_relative, rewrite_markdown, seed_of, seed_runs, standard_error,
                   with_previous_rows)
from edgeasr.audio.io import audio_seconds, load_audio, write_wav
from edgeasr.eval.stream import errors_at, evaluate, model_stream, plot_det, read_labels, stream_posteriors
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.runtime.metadata import read_metadata
from edgeasr.runtime.streaming import DetectorConfig, smoothed_posteriors

TEST_HOURS = 4.0   # the test stream; FRR at 1 FA/h rests on its 5th-best false accept
MODELS = ("ffn_stateless", "ds_cnn_s")
VARIANTS = (("float", "float"), ("8-bit", "w8a8"), ("4-bit", "w4a8-tanh"), ("4-bit mixed", "mixed"))
FOUR_BIT_VARIANTS = ("4-bit", "4-bit mixed")   # each held to the target against float
HOP_MS = {"ffn_stateless": 20.0, "ds_cnn_s": 40.0}
CPU_SECONDS = 60.0
SMOOTHING_SWEEP_MS = (40.0, 80.0, 120.0, 200.0, 300.0, 400.0, 600.0)


def main(argv=None):
    args = parse_args(argv)
    if args.markdown_only:
        return rewrite_markdown(args.docs, "stream_results", markdown)
    started = time.perf_counter()
    rows, curves = [], {}
    for model_name in args.models:
        models = {variant: tflite_for(args, model_name, policy + MAIN_RUN) for variant, policy in VARIANTS}
        wav, labels = stream_of(args, models["8-bit"], "testing", args.hours)
        excerpt = cpu_excerpt(wav, args.work / "streams")
        for variant, path in models.items():
            config = DetectorConfig(hop_ms=HOP_MS[model_name], smoothing_ms=args.smoothing_ms)
            validation, reports = held_out_reports(args, model_name, path)
            report = reports[args.smoothing_ms]
            cost = cpu_cost(path, excerpt, config)
            emulated = None if args.no_emulation or variant == "float" else emulated_parity(path, excerpt)
            rows.append({**row(model_name, variant, path, report, cost), **held_out_figures(validation, report),
                         "aarch64": emulated, "frr_at_1_fa_per_hour_by_smoothing_ms": frr_by_smoothing(reports)})
            if args.compare_scores:
                other = "probabilities" if args.scores == "logits" else "logits"
                twin = tflite_for(args, model_name, dict(VARIANTS)[variant] + MAIN_RUN, scores=other)
                rows[-1][f"{other}_frr_at_1_fa_per_hour_by_smoothing_ms"] = frr_by_smoothing(
                    smoothing_reports(twin, wav, labels, config, args.work / "posteriors"))
            curves[f"{model_name} {variant}"] = report["det"]
            print(json.dumps(rows[-1]), flush=True)
    spread = seed_spread(args) if args.seed_spread else []
    previous = args.docs / "stream_results.json"
    summary = {"protocol": {"hours": args.hours, "seed": args.seed, "data": repo_relative(args.data),
                            "scores": args.scores, "smoothing_ms": args.smoothing_ms, "hop_ms": HOP_MS, "cpu_audio_s": CPU_SECONDS,
                            "cpu_block": "one hop", "threads": 1, "delegate": "XNNPACK",
                            "validation_layout": "own"},
               "options": " ".join(f"--{name}" for name in ("seed-spread", "compare-scores")
                                   if getattr(args, name.replace("-", "_"))),
               "results": with_previous_rows(previous, "results", rows, args.models, MODELS),
               "seed_spread": with_previous_rows(previous, "seed_spread", spread,
                                                 args.models if args.seed_spread else [], MODELS),
               "det_curves": {**previous_curves(previous, args.models), **curves},
               "minutes": round((time.perf_counter() - started) / 60, 1), "minutes_for": list(args.models)}
    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(previous, summary)
    plot_det(summary["det_curves"], args.docs / "stream_results.png", f"DET on a {args.hours:g} h held-out stream")
    write_bytes_atomic(args.docs / "stream_results.md", markdown(summary).encode())


def previous_curves(previous: Path, ran) -> dict:
    """The DET curves of the models that did not run now, from the previous JSON (where it kept them)."""
    curves = json.loads(previous.read_text()).get("det_curves", {}) if previous.is_file() else {}
    return {name: det for name, det in curves.items() if name.split(" ", 1)[0] not in set(ran)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "build" / "qat_runs",
                        help="qat_results.py's runs, MODEL/<policy>_seed<i> (default: build/qat_runs)")
    parser.add_argument("--data", type=Path, default=REPO / "build" / "qat_data",
                        help="data set whose held-out voices the streams are built from (default: build/qat_data)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "stream_runs",
                        help="folder of the converted models, streams and cached posteriors "
                             "(default: build/stream_runs)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="folder stream_results.md, .json and .png are written to (default: docs)")
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="models to evaluate; the JSON keeps the other models' rows (default: %(default)s)")
    parser.add_argument("--hours", type=float, default=TEST_HOURS,
                        help="stream length; FRR at N FA/h rests on the (N x hours + 1)-th best false accept")
    parser.add_argument("--smoothing-ms", type=float, default=DetectorConfig.smoothing_ms,
                        help="detector's posterior averaging window in ms for the tables (default: %(default)s)")
    parser.add_argument("--scores", choices=("logits", "probabilities"), default="logits",
                        help="what the converted models output (edgeasr convert --scores)")
    parser.add_argument("--no-emulation", action="store_true", help="skip the emulated aarch64 parity check")
    parser.add_argument("--compare-scores", action="store_true",
                        help="also sweep the smoothing for the models converted with the other --scores")
    parser.add_argument("--seed-spread", action="store_true",
                        help="also evaluate the runs of the other fine-tuning seeds (<policy>_seed<i> in --runs)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite stream_results.md from the stream_results.json already in --docs")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed the test and validation streams are built with (default: %(default)s)")
    return parser.parse_args(argv)


def tflite_for(args, model_name: str, policy: str, scores=None) -> Path:
    """The converted model of one run (converted once, then reused), outputting `scores` (default --scores)."""
    scores = scores or args.scores
    run = args.runs / model_name / policy
    if not (run / "config.json").is_file():
        raise SystemExit(f"{run}: missing; train the runs first with `python scripts/qat_results.py`")
    path = args.work / f"{model_name}_{policy}_{scores}.tflite"
    key = conversion_key(run)
    stamp = path.with_suffix(".key")
    if path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return path  # converted from this model file by this converter
    if policy.startswith("float"):
        write_bytes_atomic(path, float_with_metadata(run, scores))
    else:
        subprocess.run([sys.executable, "-m", "edgeasr.cli", "convert", str(run), "-o", str(path),
                        "--min-agreement", "0.95", "--scores", scores, "--force"], check=True)
    write_bytes_atomic(stamp, key.encode())
    return path


def conversion_key(run: Path) -> str:
    """sha256 of the run's model file and of the converter's sources: a converted model is reused
    until either changes (a file's mtime missed converter changes, and the posteriors cached per
    model file would have been scored on a model the converter no longer writes)."""
    import hashlib

    digest = hashlib.sha256((run / "model.keras").read_bytes())
    for source in sorted((REPO / "converters").glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def float_with_metadata(run: Path, scores: str) -> bytes:
    """The float run as a float .tflite carrying the same metadata keys a converted model has."""
    from dataclasses import asdict

    from edgeasr.converters.convert import float_tflite, with_scores
    from edgeasr.converters.metadata import embed_metadata
    from edgeasr.train.run_dir import RunDir

    config = RunDir(run).read_config()
    model = RunDir(run).load_model()
    values = {"labels": list(config.data.labels), "frontend": asdict(config.frontend),
              "window_ms": config.frontend.window_ms, "hop_ms": config.frontend.hop_ms,
              "input_frames": int(model.input_shape[1]), "policy": {"name": "float"}, "io": "float",
              "scores": scores}
    return embed_metadata(float_tflite(with_scores(model, scores)), values)


def frr_by_smoothing(reports: dict) -> dict:
    return {f"{ms:g}": report["frr_at_fa_per_hour"]["1.0"]["frr"] for ms, report in reports.items()}


def smoothing_reports(model: Path, wav: Path, label_path: Path, config: DetectorConfig, folder: Path,
                      thresholds=None, common_threshold=None, sweep: bool = True) -> dict:
    """{smoothing_ms: evaluation report} for the sweep (unless sweep=False) and config.smoothing_ms, from
    one pass over the stream; the config.smoothing_ms report scores the per-keyword `thresholds` and,
    as "at_common_threshold", one `common_threshold` for all keywords, when given.

    The raw posteriors come from `cached_posteriors`.
    """
    from dataclasses import replace

    times, raw, names, hours = cached_posteriors(model, wav, config, folder)
    occurrences = read_labels(label_path)
    reports = {}
    for smoothing_ms in sorted(set(SMOOTHING_SWEEP_MS if sweep else ()) | {config.smoothing_ms}):
        smoothed = replace(config, smoothing_ms=smoothing_ms)
        operating = smoothing_ms == config.smoothing_ms
        scores = smoothed_posteriors(raw, smoothing_runs(smoothed))
        reports[smoothing_ms] = evaluate(times, scores, names, occurrences, hours, smoothed,
                                         thresholds=thresholds if operating else None)
        if operating and common_threshold is not None:
            reports[smoothing_ms]["at_common_threshold"] = errors_at(times, scores, names, occurrences, hours,
                                                                     smoothed, common_threshold)
    return reports


def smoothing_runs(config: DetectorConfig) -> int:
    """How many runs, one per hop, the detector's smoothing window averages."""
    return max(1, int(round(config.smoothing_ms / config.hop_ms)))


def cached_posteriors(model: Path, wav: Path, config: DetectorConfig, folder: Path):
    """(times, raw posteriors, labels, hours of audio) of one model over one stream: one run per hop, no
    smoothing, cached in `folder` per model file (by content: a retrained model gets new ones) and stream."""
    import hashlib
    from dataclasses import replace

    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    cache = folder / f"{model.stem}.{digest}.{wav.stem}.hop{config.hop_ms:g}.npz"
    if not cache.is_file():
        audio = load_audio(wav, read_metadata(model)["frontend"]["sample_rate"])
        times, raw, names = stream_posteriors(model, audio, replace(config, smoothing_ms=config.hop_ms))
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(cache, times=times, raw=raw, labels=np.array(names))
    stored = np.load(cache)
    return stored["times"], stored["raw"], [str(n) for n in stored["labels"]], audio_seconds(wav) / 3600


def stream_of(args, model_path, split: str, hours: float) -> tuple:
    """(WAV path, label path) of the split's stream of `hours`, built (or reused) in --work/streams
    for the keywords of the model at model_path (every run of a model has the same)."""
    return model_stream(args.data, read_metadata(model_path), args.work / "streams", hours=hours, seed=args.seed,
                        split=split)


def held_out_reports(args, model_name: str, path: Path, sweep: bool = True):
    """(validation report, {smoothing_ms: test report}) of one model: the stream of the validation
    voices chooses the thresholds written into the model and the common 1 FA/h threshold, the stream
    of the test voices scores them (and sweeps the smoothing window unless sweep=False). When no
    threshold reaches 1 FA/h on validation, the common threshold is 1.0: a detector that never
    fires, scored as 100% FRR on test."""
    config = DetectorConfig(hop_ms=HOP_MS[model_name], smoothing_ms=args.smoothing_ms)
    streams = {split: stream_of(args, path, split, args.hours) for split in ("validation", "testing")}
    validation = smoothing_reports(path, *streams["validation"], config, args.work / "posteriors",
                                   sweep=False)[args.smoothing_ms]
    common = validation["frr_at_fa_per_hour"]["1.0"]["threshold"]
    test = smoothing_reports(path, *streams["testing"], config, args.work / "posteriors",
                             thresholds=validation["thresholds"], common_threshold=1.0 if common is None else common,
                             sweep=sweep)
    return validation, test


def held_out_figures(validation: dict, test: dict) -> dict:
    """What the validation stream chose (the common threshold for 1 FA/h), and what it gives on the test stream."""
    return {"validation_frr_at_1_fa_per_hour": validation["frr_at_fa_per_hour"]["1.0"]["frr"],
            "at_validation_threshold": test["at_common_threshold"], "written_rule": validation["thresholds_rule"],
            "validation_layout": "own"}


def own_validation_layout(summary: dict, row: dict, spread: bool) -> bool:
    """Whether a row's validation figures come from a validation stream of its own layout. Rows written
    before rows carried "validation_layout": those the last invocation wrote (its models; seed-spread
    rows only with --seed-spread) under a protocol with the own layout."""
    if "validation_layout" in row:
        return row["validation_layout"] == "own"
    written_now = row["model"] in (summary.get("minutes_for") or MODELS) and (
        not spread or "--seed-spread" in (summary.get("options") or ""))
    return written_now and summary["protocol"].get("validation_layout") == "own"


def old_validation_caveat(summary: dict) -> str:
    """The caveat on validation figures from a stream that repeated the test stream's layout, naming which."""
    rows, spread = summary["results"], summary.get("seed_spread") or []
    old_rows = not all(own_validation_layout(summary, r, spread=False) for r in rows)
    old_spread = not all(own_validation_layout(summary, r, spread=True) for r in spread)
    if not (old_rows or old_spread):
        return ""
    which = ("These validation figures" if old_rows and old_spread else "The table's validation figures" if old_rows
             else "The validation figures of the seed lines below (means over seeds, the seeds chosen on the "
                  "validation stream, written thresholds)")
    return (f"**{which} predate streams of their own layout per split**: their validation stream "
            "repeated the test stream's keyword order, silences and noise (the noise bed sample for sample), "
            "so thresholds chosen on it had seen the test's noise, and the test FA/h at them may be low; a "
            f"rerun of this script{'' if old_rows else ' with --seed-spread'} builds independent validation "
            "streams. ")


def require_seed_runs(args, model_name: str) -> None:
    """Stop before anything is written when a model has no seed run: its docs rows would be emptied."""
    if not any(seed_runs(args.runs / model_name, policy) for _, policy in VARIANTS):
        raise SystemExit(f"{args.runs / model_name}: no finished <policy>_seed<i> run; train them first with "
                         f"`python scripts/qat_results.py --models {model_name} --finetune-seeds 0 1 2`")


def seed_spread(args) -> list:
    """FRR at 1 FA/h of every `<policy>_seed<i>` run there is: how much one fine-tuning seed moves it."""
    rows = []
    for model_name in args.models:
        require_seed_runs(args, model_name)
        for variant, policy in VARIANTS:
            for run in seed_runs(args.runs / model_name, policy):
                path = tflite_for(args, model_name, run)
                validation, reports = held_out_reports(args, model_name, path, sweep=False)
                report = reports[args.smoothing_ms]
                rows.append({"model": model_name, "variant": variant, "run": run,
                             "frr_at_fa_per_hour": {k: v["frr"] for k, v in report["frr_at_fa_per_hour"].items()},
                             "per_keyword_frr": report["at_thresholds"]["frr"],
                             "per_keyword_fa_per_hour": report["at_thresholds"]["fa_per_hour"],
                             **held_out_figures(validation, report)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def cpu_excerpt(wav: Path, folder: Path) -> Path:
    """The first CPU_SECONDS of the stream as its own WAV, for the CPU measurement."""
    path = folder / f"{wav.stem}.first{int(CPU_SECONDS)}s.wav"
    if not path.is_file():
        audio = load_audio(wav, 16000)
        write_wav(path, audio[: int(CPU_SECONDS * 16000)], 16000)
    return path


def cpu_cost(model: Path, wav: Path, config: DetectorConfig) -> dict:
    """scripts/rpi_kws.py on the excerpt, one thread, audio in blocks of one hop: CPU per audio second, peak RSS.

    The least of three runs: the machine is shared, and other processes only ever add to it.
    """
    runs = []
    for _ in range(3):
        output = subprocess.run([sys.executable, str(REPO / "scripts" / "rpi_kws.py"), str(model), "--wav", str(wav),
                                 "--json", "--threads", "1", "--chunk-ms", str(config.hop_ms),
                                 "--hop-ms", str(config.hop_ms), "--smoothing-ms", str(config.smoothing_ms)],
                                capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1])["summary"])
    return min(runs, key=lambda s: s["cpu_per_audio_s"])


def emulated_parity(model: Path, wav: Path) -> dict:
    """scripts/emulate_aarch64.sh (arm64 rootfs under qemu) on ten seconds of the stream; None without root."""
    short = wav.with_name(wav.stem + ".first10s.wav")
    if not short.is_file():
        write_wav(short, load_audio(wav, 16000)[:160000], 16000)
    result = subprocess.run([str(REPO / "scripts" / "emulate_aarch64.sh"), str(model), str(short)], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode == 77 or not result.stdout.strip():
        return None
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {k: report.get(k) for k in ("max_lsb", "builtin_max_lsb", "reference_max_lsb", "same_detections",
                                       "passed", "first_layer_off", "ops_alone_max_diff")}


def row(model_name, variant, path, report, cost) -> dict:
    at_one = report["frr_at_fa_per_hour"]["1.0"]
    return {"model": model_name, "variant": variant, "tflite_bytes": path.stat().st_size,
            "hop_ms": report["detector"]["hop_ms"], "keywords": report["keyword_occurrences"],
            "hours": round(report["hours"], 3),
            "frr_at_1_fa_per_hour": at_one["frr"], "threshold_at_1_fa_per_hour": at_one["threshold"],
            "frr_at_fa_per_hour": {k: v["frr"] for k, v in report["frr_at_fa_per_hour"].items()},
            "per_keyword_thresholds": report["at_thresholds"], "latency_s": report["at_thresholds"]["latency_s"],
            "cpu_per_audio_s": cost["cpu_per_audio_s"], "peak_rss_kib": cost["peak_rss_kib"]}


def minutes_for(summary: dict) -> str:
    """What the last invocation did not rerun: ' for MODEL only, ...' when it ran some of the models,
    and a note when it kept the seed-spread rows of an earlier run."""
    ran = summary.get("minutes_for") or MODELS
    text = "" if set(ran) >= set(MODELS) else f" for {', '.join(ran)} only, the other rows are from an earlier run"
    if summary.get("seed_spread") and "--seed-spread" not in (summary.get("options") or ""):
        text += "; the seed-spread rows are from an earlier run with --seed-spread"
    return text


def markdown(summary: dict) -> str:
    protocol, rows = summary["protocol"], summary["results"]
    lines = [
        "# Streaming keyword spotting on a held-out stream (issue 6)", "",
        "Produced by `" + " ".join(["python scripts/stream_results.py"] + [summary.get("options") or ""]).strip() + "`"
        f" ({summary['minutes']} min on this machine{minutes_for(summary)}; the converted models and "
        "each model's raw posteriors are cached in build/stream_runs, and a rerun reuses them). "
        f"Stream: {protocol['hours']:g} h built by `edgeasr eval-stream`'s builder from the test split of "
        f"{Path(protocol['data']).name} (held-out voices: keyword and other-word clips, espeak sentences without "
        f"keywords, noise bursts, silence, a quiet noise bed), seed {protocol['seed']}. Detector: posteriors "
        f"averaged over {protocol['smoothing_ms']:g} ms, refractory 1 s; FFN run every "
        f"{protocol['hop_ms']['ffn_stateless']:g} ms, DS-CNN-S every {protocol['hop_ms']['ds_cnn_s']:g} ms. "
        "A detection hits a keyword when it falls between the keyword's start and 1 s after its end. "
        + SCORES_TEXT[protocol.get("scores", "probabilities")], "",
        "Variants: runs of scripts/qat_results.py, each fine-tuned from the same float model: float, 8-bit "
        "(w8a8 QAT), 4-bit (w4a8-tanh QAT, every layer's weights 4-bit) and 4-bit mixed (the `mixed` preset: "
        "4-bit tanh weights except the first layer and the logits layer, 8-bit).", "",
        "FRR at N FA/h: one threshold for all keywords, the lowest with at most N false accepts per hour. "
        f"CPU: scripts/rpi_kws.py on the first {protocol['cpu_audio_s']:g} s of the stream fed in blocks of "
        f"one hop, x86, {protocol['threads']} thread, {protocol['delegate']} "
        "(process CPU time of frontend + model + detector per second of audio, least of 3 runs on a shared "
        "machine). Memory: peak RSS (VmHWM) of that whole Python process. aarch64: scripts/emulate_aarch64.sh "
        "on the first 10 s (arm64 Debian under qemu-user): largest difference of the raw int8 outputs from "
        "x86 on 64 windows with XNNPACK / with the builtin kernels, and whether the detections are identical.", "",
        "| model | variant | .tflite bytes | FRR @ 0.5 FA/h | FRR @ 1 FA/h | FRR @ 2 FA/h | FRR @ 5 FA/h | "
        "validation: FRR @ 1 FA/h | FRR (FA/h) at that threshold | FRR, written thresholds (FA/h) "
        "| latency median / p90 | CPU per s of audio | peak RSS | aarch64 vs x86 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frr = r["frr_at_fa_per_hour"]
        latency = r["latency_s"]
        latency_text = ("n/a" if latency["median"] is None else
                        f"{latency['median'] * 1000:.0f} / {latency['p90'] * 1000:.0f} ms")
        lines.append(f"| {r['model']} | {r['variant']} | {r['tflite_bytes']:,} | {frr['0.5']:.2%} | {frr['1.0']:.2%} | "
                     f"{frr['2.0']:.2%} | {frr['5.0']:.2%} | {held_out_text(r)} | "
                     f"{per_keyword_text(r['per_keyword_thresholds'])} | "
                     f"{latency_text} | {r['cpu_per_audio_s']:.2%} | "
                     f"{r['peak_rss_kib'] / 1024:.0f} MiB | {emulation_text(r['aarch64'])} |")
    lines += ["", "Validation: a second stream of the same length, builder and seed, from the validation "
              "voices (`eval-stream --split validation`; no voice of it is in training or in the test stream). "
              + old_validation_caveat(summary) +
              "The common threshold that gives 1 FA/h there, applied to the test stream, is what a device "
              "shipped with a threshold chosen beforehand would see. Written thresholds: what "
              "`eval-stream --split validation --write-thresholds` writes into the model for 1 FA/h and the "
              "device then runs, scored on the test stream (`eval-stream --model-thresholds`): the common threshold "
              "of the column before unless asked for one per keyword (`--per-keyword`), which needs a validation "
              "stream allowing every keyword one false accept (hours at least the number of keywords; here: "
              f"{written_rules(rows)}). Per-keyword thresholds chosen with no false accept allowed on 4 h of "
              "validation voices gave 4-10 FA/h on the test voices, with one allowed on 10 h 2.75-6.5 FA/h "
              "([keyword_thresholds.md](keyword_thresholds.md)). "
              "Latency: detection time minus the keyword's end, at those thresholds. The targets below are "
              "judged on the single-threshold FRR @ 1 FA/h of the test stream.", "", "Targets:", ""]
    lines += target_lines(rows)
    lines += seed_mean_lines(rows, summary.get("seed_spread") or [])
    lines += selected_seed_lines(summary.get("seed_spread") or [])
    lines += per_keyword_mean_lines(summary.get("seed_spread") or [])
    if summary.get("seed_spread"):
        lines.append("- Where the gaps come from (each run at the threshold that gives the same seed's float run "
                     "1 FA/h: its FRR there, and how often it fires on everything else): "
                     "[stream_errors.md](stream_errors.md), from `scripts/stream_errors.py`")
    lines += smoothing_lines(rows, protocol.get("scores", "probabilities"))
    lines += seed_lines(summary.get("seed_spread") or [])
    lines += ["", "![DET curves](stream_results.png)", ""]
    return "\n".join(lines)


SCORES_TEXT = {
    "logits": "Scores: the models output int8 logits (`edgeasr convert --scores logits`) and the detector "
              "applies the softmax in float32, so posteriors are not capped at the 255/256 of an int8 softmax.",
    "probabilities": "Scores: the models output int8 softmax probabilities (`edgeasr convert --scores "
                     "probabilities`), at most 255/256.",
}


def smoothing_lines(rows, scores: str) -> list:
    """FRR at 1 FA/h against the smoothing window, for the models as run and their other-scores twins."""
    sweeps = [(r, scores, r["frr_at_1_fa_per_hour_by_smoothing_ms"]) for r in rows]
    sweeps += [(r, key.split("_frr_")[0], r[key]) for r in rows for key in r
               if key.endswith("_frr_at_1_fa_per_hour_by_smoothing_ms") and key != "frr_at_1_fa_per_hour_by_smoothing_ms"]
    if not sweeps:
        return []
    windows = sorted(sweeps[0][2], key=float)
    lines = ["", "FRR at 1 FA/h against the smoothing window (the detector's mean over the last runs, applied to "
             "the raw posteriors of the same pass over the stream):", "",
             "| model | variant | output | " + " | ".join(f"{w} ms" for w in windows) + " |",
             "|---|---|---|" + "---|" * len(windows)]
    for r, kind, sweep in sorted(sweeps, key=lambda s: (s[0]["model"], s[1], [v for v, _ in VARIANTS].index(s[0]["variant"]))):
        precision = "float" if r["variant"] == "float" else "int8"
        lines.append(f"| {r['model']} | {r['variant']} | {precision} {kind} | " +
                     " | ".join(f"{sweep[w]:.2%}" for w in windows) + " |")
    return lines


def seed_values(spread, model: str, value_of, quantized: str) -> dict:
    """{"float": [...], quantized: [...]}: value_of(row) of the model's seed runs that have it."""
    values = {}
    for variant in ("float", quantized):
        rows = [r for r in spread if r["model"] == model and r["variant"] == variant]
        values[variant] = [v for v in map(value_of, rows) if v is not None]
    return values


def test_frr(row):
    return row["frr_at_fa_per_hour"]["1.0"]


def validation_frr(row):
    return row.get("validation_frr_at_1_fa_per_hour")


def written_frr(row):
    return row.get("per_keyword_frr")


def paired_gaps(spread, model: str, quantized: str, value_of=test_frr) -> list:
    """`quantized` minus float value_of(row) (default: test FRR at 1 FA/h) in points, seed by seed, over
    the seeds both have a value for.
    Seed i of every policy fine-tunes the same float model with the same shuffling and augmentation
    (scripts/qat_results.py), so the per-seed differences are the paired measurement."""
    by_seed = {}
    for r in spread:
        if r["model"] == model and r["variant"] in ("float", quantized):
            by_seed.setdefault(seed_of(r["run"]), {})[r["variant"]] = value_of(r)
    return [100 * (v[quantized] - v["float"]) for v in by_seed.values() if len(v) == 2 and None not in v.values()]


def mean_gap(values: dict, gaps: list) -> tuple:
    """(quantized minus float mean in points, whether both have the same seeds), from seed_values and
    paired_gaps of one measure: the difference of the means when the seeds are the same, else the
    mean per-seed difference over the seeds both have."""
    quantized = next(k for k in values if k != "float")
    if all(len(v) == len(gaps) for v in values.values()):
        return 100 * float(np.mean(values[quantized]) - np.mean(values["float"])), True
    return float(np.mean(gaps)), False


def gap_words(gap: float, same_seeds: bool) -> str:
    return f"{gap:+.2f} points" + ("" if same_seeds else " over the seeds both have")


def models_and_variants(models, variants=FOUR_BIT_VARIANTS):
    """(model, variant) for every model in order and each of `variants` (default: those held to the target)."""
    return [(model, variant) for model in dict.fromkeys(models) for variant in variants]


def seed_mean_lines(rows, spread) -> list:
    """The 4-bit target on the mean over the fine-tuning seed runs (the runs above may repeat seed 0);
    the 8-bit variant's gap beside it, where it has seeds, shows what 4-bit weights add."""
    lines = []
    for model, quantized in models_and_variants((r["model"] for r in rows), ("8-bit",) + FOUR_BIT_VARIANTS):
        values = seed_values(spread, model, test_frr, quantized)
        if min(len(v) for v in values.values()) < 2:
            continue
        mean = {k: float(np.mean(v)) for k, v in values.items()}
        spread_text = {k: f"{mean[k]:.2%} ± {100 * float(np.std(v, ddof=1)):.2f} over {len(v)} seeds"
                       for k, v in values.items()}
        gaps = paired_gaps(spread, model, quantized)
        gap, same_seeds = mean_gap(values, gaps)
        paired_error = standard_error(gaps)
        if same_seeds:
            error = 100 * float(np.sqrt(sum(np.var(v, ddof=1) / len(v) for v in values.values())))
            paired = "" if paired_error is None else f", paired by seed {paired_error:.2f}"
            gap_text = f" ({gap:+.2f} points, standard error {error:.2f}{paired}; "
        else:
            gap_text = f"; {gap_words(gap, same_seeds)} (standard error paired by seed {paired_error:.2f}; "
        held_out, validation_text = seed_values(spread, model, validation_frr, quantized), ""
        if min(len(v) for v in held_out.values()) >= 2:
            held_out_gap = mean_gap(held_out, paired_gaps(spread, model, quantized, validation_frr))
            validation_text = (f"; on the validation stream {np.mean(held_out[quantized]):.2%} vs "
                               f"{np.mean(held_out['float']):.2%} ({gap_words(*held_out_gap)})")
        verdict = f"target within 1 point: {'met' if gap <= 1.0 else 'MISSED'}" if quantized in FOUR_BIT_VARIANTS else "not a target"
        lines.append(f"- {model}, mean over fine-tuning seeds: {quantized} FRR at 1 FA/h {spread_text[quantized]} vs float "
                     f"{spread_text['float']}{gap_text}{verdict}){validation_text}")
    return lines


def selected_seed_lines(spread) -> list:
    """The 4-bit target on the fine-tuning seed a user would ship: the one with the lowest FRR at 1 FA/h on
    the validation stream, for float and 4-bit alike, each chosen among the seeds both have (a variant
    with more seeds would otherwise have more chances of a lucky one)."""
    lines = []
    for model, four in models_and_variants(r["model"] for r in spread):
        scored = [r for r in spread if r["model"] == model and r.get("validation_frr_at_1_fa_per_hour") is not None]
        shared = set.intersection(*({seed_of(r["run"]) for r in scored if r["variant"] == v} for v in ("float", four)))
        chosen = {}
        for variant in ("float", four):
            runs = [r for r in scored if r["variant"] == variant and seed_of(r["run"]) in shared]
            if len(runs) >= 2:
                chosen[variant] = min(runs, key=lambda r: r["validation_frr_at_1_fa_per_hour"])
        if len(chosen) < 2:
            continue
        test = {k: r["frr_at_fa_per_hour"]["1.0"] for k, r in chosen.items()}
        validation = {k: r["validation_frr_at_1_fa_per_hour"] for k, r in chosen.items()}
        gap = 100 * (test[four] - test["float"])
        lines.append(f"- {model}, the seed chosen on the validation stream (lowest FRR at 1 FA/h there): {four} "
                     f"{chosen[four]['run']} {test[four]:.2%} vs float {chosen['float']['run']} "
                     f"{test['float']:.2%} on the test stream ({gap:+.2f} points; target within 1 point: "
                     f"{'met' if gap <= 1.0 else 'MISSED'}); on the validation stream that chose them "
                     f"{validation[four]:.2%} vs {validation['float']:.2%} "
                     f"({100 * (validation[four] - validation['float']):+.2f} points)")
    return lines


def held_out_text(r: dict) -> str:
    """Validation FRR at 1 FA/h | test FRR (FA/h) at the threshold that gave it (results before the
    validation stream: dashes)."""
    if r.get("validation_frr_at_1_fa_per_hour") is None:
        return "- | -"
    at = r["at_validation_threshold"]
    return f"{r['validation_frr_at_1_fa_per_hour']:.2%} | {at['frr']:.2%} ({at['fa_per_hour']:.2f})"


def written_rules(rows) -> str:
    """Which rule eval-stream chose the written thresholds by, as it reported it for each model."""
    rules = {"per keyword": "one per keyword", "common": "the common threshold"}
    return ", ".join(f"{model} {rules[rule]}" for model, rule in
                     dict.fromkeys((r["model"], r["written_rule"]) for r in rows if "written_rule" in r)) or "-"


def per_keyword_text(operating: dict) -> str:
    return f"{operating['frr']:.2%} ({operating['fa_per_hour']:.1f})"


def per_keyword_mean_lines(spread) -> list:
    """Not a target: the 4-bit gap at the thresholds written into the model, mean over seeds."""
    lines = []
    for model, four in models_and_variants(r["model"] for r in spread):
        values = seed_values(spread, model, written_frr, four)
        if min(len(v) for v in values.values()) < 2:
            continue
        mean = {k: float(np.mean(v)) for k, v in values.items()}
        gap = mean_gap(values, paired_gaps(spread, model, four, written_frr))
        lines.append(f"- {model}, written thresholds (not the target's measure), mean over seeds: {four} FRR "
                     f"{mean[four]:.2%} vs float {mean['float']:.2%} ({gap_words(*gap)})")
    return lines


def seed_lines(spread) -> list:
    """FRR of the runs of the other fine-tuning seeds: how far one seed moves the figure."""
    if not spread:
        return []
    lines = ["", "Other fine-tuning seeds (runs `<policy>_seed<i>` of scripts/qat_results.py, same streams and "
             "detector):", "", "| model | variant | run | FRR @ 0.5 FA/h | FRR @ 1 FA/h | FRR @ 2 FA/h | FRR @ 5 FA/h | "
             "validation: FRR @ 1 FA/h | FRR (FA/h) at that threshold | FRR, written thresholds (FA/h) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in spread:
        frr = r["frr_at_fa_per_hour"]
        per_keyword = per_keyword_text({"frr": r["per_keyword_frr"], "fa_per_hour": r["per_keyword_fa_per_hour"]})
        lines.append(f"| {r['model']} | {r['variant']} | {r['run']} | {frr['0.5']:.2%} | {frr['1.0']:.2%} | "
                     f"{frr['2.0']:.2%} | {frr['5.0']:.2%} | {held_out_text(r)} | {per_keyword} |")
    return lines


def emulation_text(result) -> str:
    if result is None:
        return "n/a"
    detections = "same detections" if result["same_detections"] else "detections differ"
    return f"{result['max_lsb']} / {result['builtin_max_lsb']} LSB, {detections}"


def kernel_text(result: dict) -> str:
    """Where the difference comes from (device-check's layer-by-layer and op-alone comparisons)."""
    if result.get("ops_alone_max_diff") is None:
        return ""
    first = result.get("first_layer_off")
    start = "every layer identical on the builtin kernels" if first is None else \
        f"the builtin kernels first differ at op {first['op']} ({first['share_off']:.2%} of values)"
    reference = "" if result.get("reference_max_lsb") is None else \
        f"; on the reference kernels (BUILTIN_REF) within {result['reference_max_lsb']} LSB"
    return f"; {start}; each op alone on the same inputs within {result['ops_alone_max_diff']:g} LSB" + reference


def target_lines(rows) -> list:
    lines = []
    by_key = {(r["model"], r["variant"]): r for r in rows}
    for model, variant in models_and_variants(r["model"] for r in rows):
        reference, four = by_key.get((model, "float")), by_key.get((model, variant))
        if reference and four:
            gap = 100 * (four["frr_at_1_fa_per_hour"] - reference["frr_at_1_fa_per_hour"])
            verdict = "met" if gap <= 1.0 else "MISSED"
            lines.append(f"- {model}: {variant} FRR at 1 FA/h is {four['frr_at_1_fa_per_hour']:.2%} vs float "
                         f"{reference['frr_at_1_fa_per_hour']:.2%} ({gap:+.2f} points; target within 1 point: {verdict})")
    for r in rows:
        if r.get("aarch64"):
            worst = max(r["aarch64"]["max_lsb"], r["aarch64"]["builtin_max_lsb"])
            lines.append(f"- {r['model']} {r['variant']} on emulated aarch64: int8 outputs within {worst} LSB of x86 "
                         f"(XNNPACK {r['aarch64']['max_lsb']}, builtin kernels {r['aarch64']['builtin_max_lsb']}; "
                         f"target equal or within 1 LSB: {'met' if worst <= 1 else 'MISSED'})"
                         + kernel_text(r["aarch64"]))
    for r in rows:
        if r["model"] == "ffn_stateless" and r["variant"] != "float":
            verdict = "met" if r["cpu_per_audio_s"] <= 0.01 else "MISSED"
            lines.append(f"- ffn_stateless {r['variant']}: CPU {r['cpu_per_audio_s']:.2%} of one core per second "
                         f"of audio (target ≤ 1%: {verdict})")
    return lines


if __name__ == "__main__":
    main()
