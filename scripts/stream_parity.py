#!/usr/bin/env python3
"""Does conversion change what a keyword spotter does on a long stream? (issues 4 and 6)

docs/convert_results.md checks LiteRT against Keras on test clips. This checks them where the
targets of issue 6 are measured: on stream_results' 4 h test stream, window by window. For each run,
its Keras model (float, or fake-quant for a QAT run, with its logits softmaxed in float32 like the
detector does) and its converted LiteRT model are run on the same windows of the same frames:
  - how often the two pick the same class, and the largest difference of a posterior;
  - FRR at each one's own 1 FA/h threshold, and the LiteRT model's FRR minus the Keras model's;
  - at the LiteRT model's threshold, the Keras model's FRR and false accepts per hour.
If conversion cost the 4-bit models their stream FRR, the LiteRT FRR would sit above Keras' seed after
seed; differences of either sign that average out say the gap to float is already in the Keras model.

Reads the converted models and raw posteriors stream_results caches in build/stream_runs and adds the
Keras posteriors there (by model file content); the stream's frames are cached beside the stream.

    python scripts/stream_parity.py                       # float_seed0 and w4a8-tanh seeds 0-3, ~4 min each
    python scripts/stream_parity.py --run-names w4a8-tanh_seed4 --docs /tmp/docs
    python scripts/stream_parity.py --markdown-only
"""
import edgeasr  # noqa: F401

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

import stream_errors as se
import stream_results as sr
from _repo import repo_relative, rewrite_markdown, with_previous_rows
from edgeasr.audio.frontend import FrontendConfig
from edgeasr.audio.io import load_audio
from edgeasr.eval.stream import errors_at, read_labels
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.runtime.metadata import read_metadata
from edgeasr.runtime.streaming import StreamingFrontend, run_ends, smoothed_posteriors, softmax

DEFAULT_RUNS = ["float_seed0"] + [f"w4a8-tanh_seed{seed}" for seed in se.PAIRED_SEEDS]
BATCH = 4096


def main(argv=None):
    args = parse_args(argv)
    if args.markdown_only:
        return rewrite_markdown(args.docs, "stream_parity", markdown)
    started = time.perf_counter()
    rows = [run_row(args, model_name, run) for model_name in args.models for run in args.run_names]
    summary = {"protocol": {"hours": args.hours, "seed": args.seed, "smoothing_ms": args.smoothing_ms,
                            "runs": repo_relative(args.runs)},
               "rows": with_previous_rows(args.docs / "stream_parity.json", "rows", rows, args.models, sr.MODELS),
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    write_json_atomic(args.docs / "stream_parity.json", summary)
    write_bytes_atomic(args.docs / "stream_parity.md", markdown(summary).encode())


def run_row(args, model_name: str, run: str) -> dict:
    config = se.config_of(args, model_name)
    path = sr.tflite_for(args, model_name, run)
    wav, labels = sr.stream_of(args, path, "testing", args.hours)
    times, litert_raw, names, hours = sr.cached_posteriors(path, wav, config, args.work / "posteriors")
    keras_raw = cached_keras_posteriors(args, model_name, run, path, wav, config, times)
    occurrences = read_labels(labels)
    smoothed = {side: smoothed_posteriors(raw, sr.smoothing_runs(config))
                for side, raw in (("litert", litert_raw), ("keras", keras_raw))}
    points = {side: dict(zip(("frr_at_own_threshold", "threshold"),
                             se.own_operating_point(times, scores, names, occurrences, hours, config)))
              for side, scores in smoothed.items()}
    at = errors_at(times, smoothed["keras"], names, occurrences, hours, config, points["litert"]["threshold"])
    row = {"model": model_name, "run": run, "windows": len(times),
           "argmax_agreement": float(np.mean(np.argmax(litert_raw, 1) == np.argmax(keras_raw, 1))),
           "max_posterior_difference": float(np.abs(litert_raw - keras_raw).max()),
           **points, "keras_at_litert_threshold": {"frr": at["frr"], "fa_per_hour": at["fa_per_hour"]}}
    print(f"{model_name} {run}: agreement {row['argmax_agreement']:.2%}, FRR at own 1 FA/h LiteRT "
          f"{points['litert']['frr_at_own_threshold']:.2%}, Keras {points['keras']['frr_at_own_threshold']:.2%}",
          flush=True)
    return row


def cached_keras_posteriors(args, model_name: str, run: str, tflite: Path, wav: Path, config, times) -> np.ndarray:
    """Softmax of the Keras model's logits on the windows the LiteRT model ran on (ending at `times`),
    cached in --work/posteriors by the content of the Keras model file."""
    from edgeasr.train.run_dir import RunDir

    run_dir = RunDir(args.runs / model_name / run)
    model_file = args.runs / model_name / run / "model.keras"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:12]
    cache = args.work / "posteriors" / f"{model_name}_{run}_keras.{digest}.{wav.stem}.hop{config.hop_ms:g}.npy"
    if not cache.is_file():
        frontend = FrontendConfig(**read_metadata(tflite)["frontend"])
        raw = keras_posteriors(run_dir.load_model(), stream_frames(wav, frontend, args.work / "streams"),
                               frontend, config, times)
        np.save(cache, raw)
    return np.load(cache)


def keras_posteriors(model, frames: np.ndarray, frontend: FrontendConfig, config, times) -> np.ndarray:
    """The model on the windows of `frames` the runtime's PosteriorStream runs it on (`run_ends`: the
    first window full, then every hop); their end times are checked against the LiteRT `times`."""
    from edgeasr.converters.convert import with_scores

    logits_model = with_scores(model, "logits")
    window = int(model.input_shape[1])
    ends = np.asarray(run_ends(window, config.hop_frames(frontend), 0, len(frames)))
    end_times = frontend.frames_end_seconds(ends)
    if len(end_times) != len(times) or not np.allclose(end_times, times):
        raise SystemExit(f"stream_parity: {len(end_times)} Keras windows do not line up with the "
                         f"{len(times)} LiteRT runs")
    shape = tuple(model.input_shape[1:])
    outputs = [logits_model.predict_on_batch(frames[ends[i:i + BATCH, None] - window + np.arange(window)]
                                             .reshape((-1,) + shape))
               for i in range(0, len(ends), BATCH)]
    return softmax(np.concatenate(outputs))


def stream_frames(wav: Path, frontend: FrontendConfig, folder: Path) -> np.ndarray:
    """Log-mel frames of the whole stream, computed by the runtime's streaming frontend in 10 s chunks
    (as the LiteRT model got them, before input quantization) and cached beside the stream."""
    cache = folder / f"{wav.stem}.frames.npy"
    if not cache.is_file():
        audio = load_audio(wav, frontend.sample_rate)
        streaming, chunk = StreamingFrontend(frontend), 10 * frontend.sample_rate
        np.save(cache, np.concatenate([streaming.push(audio[i:i + chunk]) for i in range(0, len(audio), chunk)]))
    return np.load(cache)


def markdown(summary: dict) -> str:
    p, rows = summary["protocol"], summary["rows"]
    lines = ["# Keras against LiteRT on the test stream (scripts/stream_parity.py)", "",
             f"Produced by `python scripts/stream_parity.py` ({summary['minutes']:g} min). Each run's Keras model "
             "(fake-quant for QAT runs) and its converted LiteRT model on the same windows of stream_results' "
             f"{p['hours']:g} h test stream (seed {p['seed']}), smoothing {p['smoothing_ms']:g} ms, logits "
             "softmaxed in float32. Agreement: windows where both pick the same class. FRR at each one's own "
             "1 FA/h threshold (on 4 h it rests on the 5th-best false accept); the Keras model also at the LiteRT "
             "model's threshold.", "",
             "| model | run | windows | argmax agreement | largest posterior difference | FRR @ own 1 FA/h: LiteRT "
             "| Keras | LiteRT - Keras (points) | Keras at LiteRT's threshold: FRR | FA/h |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        litert, keras = r["litert"]["frr_at_own_threshold"], r["keras"]["frr_at_own_threshold"]
        there = r["keras_at_litert_threshold"]
        lines.append(f"| {r['model']} | {r['run']} | {r['windows']:,} | {r['argmax_agreement']:.2%} | "
                     f"{r['max_posterior_difference']:.3f} | {litert:.2%} | {keras:.2%} | "
                     f"{100 * (litert - keras):+.2f} | {there['frr']:.2%} | {there['fa_per_hour']:.2f} |")
    lines += ["", *summary_lines(rows)]
    return "\n".join(lines) + "\n"


def summary_lines(rows: list) -> list:
    """Per model and policy with two or more seeds: the mean LiteRT - Keras FRR difference."""
    lines = []
    for model, policy in dict.fromkeys((r["model"], r["run"].rsplit("_seed", 1)[0]) for r in rows):
        mine = [r for r in rows if r["model"] == model and r["run"].rsplit("_seed", 1)[0] == policy]
        differences = np.array([100 * (r["litert"]["frr_at_own_threshold"] - r["keras"]["frr_at_own_threshold"])
                                for r in mine])
        lines.append(f"- {model} {policy}, {len(mine)} seed(s): FRR at own 1 FA/h, LiteRT - Keras "
                     f"{se.mean_and_error(differences)} points (per seed "
                     + " ".join(f"{d:+.2f}" for d in differences) + ")")
    return lines


def parse_args(argv):
    parser = se.runs_parser(__doc__, "stream_parity")
    parser.add_argument("--run-names", nargs="+", default=DEFAULT_RUNS,
                        help="runs of --runs/MODEL to compare (default: float seed 0 and the 4-bit seeds 0-3)")
    parser.set_defaults(models=["ds_cnn_s"])
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
