#!/usr/bin/env python3
"""How much attention a trained Conformer puts outside its chunk window, and what padding does to it.

ChunkMask sets the scores of keys outside a query's window to MASKED_SCORE (-16, so the int8 scale of
the scores stays fine) instead of minus infinity. A query whose real scores all lie below -16 then
gives its weight to the masked keys: frames ahead of its chunk (which breaks the streaming promise)
and, at the end of a clip, the padding. For --utterances test utterances fed as the transcriber
feeds them (padded with silence to the 4 s window) this script gives, per attention block:
  - the softmax mass on masked keys: mean over query frames, and the largest of any query;
and over the utterances, the largest change of the first output frame's logits between padding to
the clip's own length and to 4 s: zero if nothing after the first chunk reaches it.
docs/asr_gap_parts.md measures the CER cost of the padding.

Writes docs/attention_leak.md and docs/attention_leak.json.

    python scripts/attention_leak.py                 # the float-ft run of scripts/asr_results.py
    python scripts/attention_leak.py --run build/asr_runs/xs_w4a8_tanh --utterances 8 --docs /tmp/leak
"""
import edgeasr  # noqa: F401

import argparse
from pathlib import Path

import numpy as np

from _repo import REPO, read_summary, repo_relative
from edgeasr.audio.frontend import numpy_log_mel
from edgeasr.converters.asr import WINDOW_FRAMES
from edgeasr.data.asr_pipeline import load_asr_split, padded_features
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.models.conformer import MASKED_SCORE, chunk_mask
from edgeasr.train.asr_fit import AsrRunDir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "build" / "asr_runs" / "xs_float_ft",
                        help="A train-asr run (default: build/asr_runs/xs_float_ft).")
    parser.add_argument("--utterances", type=int, default=50, help="Test utterances (default: %(default)s).")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="Folder attention_leak.md and .json are written to (default: docs).")
    parser.add_argument("--report-only", action="store_true", help="Only rewrite attention_leak.md from its JSON.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        write_markdown(read_summary(args.docs, "attention_leak", "--report-only"), args.docs)
        return
    if not (args.run / "model.keras").is_file():
        raise SystemExit(f"{args.run}: no model.keras; train it with scripts/asr_results.py first")
    summary = measure(args)
    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.docs / "attention_leak.json", summary)
    write_markdown(summary, args.docs)


def measure(args) -> dict:
    import tf_keras as keras

    run = AsrRunDir(args.run)
    config = run.read_config()
    frontend = config.frontend
    model = run.load_model()
    softmaxes = [layer.name for layer in model.layers if layer.name.endswith("_softmax")]
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in softmaxes] + list(model.outputs))
    split = load_asr_split(config.test_manifest, None, frontend, args.utterances, spread=True)
    windows = padded_features(split, range(len(split)), frontend, WINDOW_FRAMES)   # as the converter calibrates
    masked_mass = {name: [] for name in softmaxes}
    first_frame_change = []
    for wave, window in zip(split.waves, windows):
        *weights, logits = probe(window[None], training=False)
        outside = 1 - chunk_mask(weights[0].shape[-1], config.model.chunk_frames, config.model.left_chunks)
        for name, weight in zip(softmaxes, weights):
            masked_mass[name].append((outside * weight.numpy()[0]).sum(-1).ravel())   # per head and query
        own = model(numpy_log_mel(wave.astype(np.float32) / 32768.0, frontend)[None], training=False).numpy()[0]
        first_frame_change.append(float(np.abs(own[0] - logits.numpy()[0][0]).max()))
    blocks = [{"block": name.removesuffix("_softmax"), "mean_masked_mass": float(np.concatenate(mass).mean()),
               "max_masked_mass": float(np.concatenate(mass).max()),
               "queries_over_half": float(np.mean(np.concatenate(mass) > 0.5))} for name, mass in masked_mass.items()]
    return {"run": repo_relative(args.run), "utterances": len(split), "masked_score": MASKED_SCORE,
            "chunk_frames": config.model.chunk_frames, "left_chunks": config.model.left_chunks, "blocks": blocks,
            "first_frame_change_max": max(first_frame_change),
            "first_frame_change_median": float(np.median(first_frame_change))}


def write_markdown(summary: dict, docs: Path) -> None:
    lines = ["# Attention outside the chunk window", "",
             f"Produced by `python scripts/attention_leak.py --run {summary['run']}` on {summary['utterances']} test "
             f"utterances padded with silence to the 4 s window; do not edit by hand. Masked keys score "
             f"{summary['masked_score']:g} (chunks of {summary['chunk_frames']} output frames, "
             f"{summary['left_chunks']} chunks of left context).", "",
             "| block | mean softmax mass on masked keys | largest, one query | queries with over half |",
             "|---|---:|---:|---:|"]
    for b in summary["blocks"]:
        lines.append(f"| {b['block']} | {b['mean_masked_mass']:.3f} | {b['max_masked_mass']:.3f} | "
                     f"{b['queries_over_half']:.1%} |")
    lines += ["", f"The first output frame's logits change by up to {summary['first_frame_change_max']:.2f} "
              f"(median {summary['first_frame_change_median']:.2f}) between padding each clip to its own length and "
              "to 4 s: frames after the first chunk reach it through the masked keys."]
    write_bytes_atomic(Path(docs) / "attention_leak.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
