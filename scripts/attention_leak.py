#!/usr/bin/env python3
"""How much attention a trained Conformer puts outside its chunk window, and what padding does to it.

ChunkMask gives keys outside a query's window a finite score (so the int8 scale of the scores stays
fine) instead of minus infinity. Until df280eb that score was a fixed -16, and a query whose real
scores all lay below it gave its weight to the masked keys: frames ahead of its chunk (which broke
the streaming promise) and, at the end of a clip, the padding. One block of the trained xs put 7.4%
of its weight there. Now each query's scores are shifted so its top real score is 0 first, which
holds while that top score lies above ROW_MAX_FILL - MASKED_SCORE (-48). For --utterances test
utterances fed as the transcriber feeds them (padded with silence to the 4 s window) this script
gives, per attention block:
  - the softmax mass on masked keys: mean over query frames, and the largest of any query;
  - the lowest top real score of any query (the margin left above -48);
and over the utterances, the largest change of the first output frame's logits between padding to
the clip's own length and to 4 s: zero if nothing after the first chunk reaches it.
docs/asr_gap_parts.md (old mask) and docs/asr_masked/asr_gap_parts.md measure the CER cost of the
padding.

Writes docs/attention_leak.md and docs/attention_leak.json.

    python scripts/attention_leak.py                 # the float-ft run of scripts/asr_results.py
    python scripts/attention_leak.py --run build/asr_runs/xs_w4a8_tanh --utterances 8 --docs /tmp/leak
"""
import edgeasr  # noqa: F401

import argparse
from pathlib import Path

import numpy as np

from _repo import REPO, add_report_options, read_summary, repo_relative, write_report
from edgeasr.audio.frontend import numpy_log_mel
from edgeasr.converters.asr import WINDOW_FRAMES
from edgeasr.data.asr_pipeline import load_asr_split, padded_features
from edgeasr.files import write_bytes_atomic
from edgeasr.models.conformer import MASKED_SCORE, ROW_MAX_FILL, chunk_mask
from edgeasr.train.asr_fit import AsrRunDir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "build" / "asr_runs" / "xs_float_ft",
                        help="A train-asr run (default: build/asr_runs/xs_float_ft).")
    parser.add_argument("--utterances", type=int, default=50, help="Test utterances (default: %(default)s).")
    add_report_options(parser, "attention_leak")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        write_markdown(read_summary(args.docs, "attention_leak", "--report-only"), args.docs)
        return
    if not (args.run / "model.keras").is_file():
        raise SystemExit(f"{args.run}: no model.keras; train it with scripts/asr_results.py first")
    summary = measure(args)
    write_report(args.docs, "attention_leak", summary, write_markdown)


def measure(args) -> dict:
    import tf_keras as keras

    run = AsrRunDir(args.run)
    config = run.read_config()
    frontend = config.frontend
    model = run.load_model()
    softmaxes = [layer.name for layer in model.layers if layer.name.endswith("_softmax")]
    scores = [model.get_layer(name.removesuffix("_softmax") + "_mask").input for name in softmaxes]
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in softmaxes] + scores
                        + list(model.outputs))
    split = load_asr_split(config.test_manifest, None, frontend, args.utterances, spread=True)
    windows = padded_features(split, range(len(split)), frontend, WINDOW_FRAMES)   # as the converter calibrates
    masked_mass = {name: [] for name in softmaxes}
    top_real_score = {name: [] for name in softmaxes}
    first_frame_change = []
    for wave, window in zip(split.waves, windows):
        *outputs, logits = probe(window[None], training=False)
        weights, raw_scores = outputs[:len(softmaxes)], outputs[len(softmaxes):]
        keep = chunk_mask(weights[0].shape[-1], config.model.chunk_frames, config.model.left_chunks).astype(bool)
        for name, weight, score in zip(softmaxes, weights, raw_scores):
            masked_mass[name].append((~keep * weight.numpy()[0]).sum(-1).ravel())   # per head and query
            top_real_score[name].append(np.where(keep, score.numpy()[0], -np.inf).max(-1).ravel())
        own = model(numpy_log_mel(wave.astype(np.float32) / 32768.0, frontend)[None], training=False).numpy()[0]
        first_frame_change.append(float(np.abs(own[0] - logits.numpy()[0][0]).max()))
    blocks = [{"block": name.removesuffix("_softmax"), "mean_masked_mass": float(np.concatenate(mass).mean()),
               "max_masked_mass": float(np.concatenate(mass).max()),
               "queries_over_half": float(np.mean(np.concatenate(mass) > 0.5)),
               "lowest_top_real_score": float(np.concatenate(top_real_score[name]).min())}
              for name, mass in masked_mass.items()]
    return {"run": repo_relative(args.run), "utterances": len(split), "masked_score": MASKED_SCORE,
            "row_max_fill": ROW_MAX_FILL,
            "chunk_frames": config.model.chunk_frames, "left_chunks": config.model.left_chunks, "blocks": blocks,
            "first_frame_change_max": max(first_frame_change),
            "first_frame_change_median": float(np.median(first_frame_change))}


def write_markdown(summary: dict, docs: Path) -> None:
    lines = ["# Attention outside the chunk window", "",
             f"Produced by `python scripts/attention_leak.py --run {summary['run']}` on {summary['utterances']} test "
             f"utterances padded with silence to the 4 s window; do not edit by hand. Masked keys score "
             f"{summary['masked_score']:g} below each query's top real score (chunks of {summary['chunk_frames']} "
             f"output frames, {summary['left_chunks']} chunks of left context), which holds while that top score "
             f"lies above {summary['row_max_fill'] - summary['masked_score']:g}.", "",
             "| block | mean softmax mass on masked keys | largest, one query | queries with over half | "
             "lowest top real score |",
             "|---|---:|---:|---:|---:|"]
    for b in summary["blocks"]:
        lines.append(f"| {b['block']} | {b['mean_masked_mass']:.2g} | {b['max_masked_mass']:.2g} | "
                     f"{b['queries_over_half']:.1%} | {b['lowest_top_real_score']:.1f} |")
    lines += ["", f"The first output frame's logits change by up to {summary['first_frame_change_max']:.3g} "
              f"(median {summary['first_frame_change_median']:.3g}) between padding each clip to its own length and "
              "to 4 s: zero, up to float rounding, when nothing after the first chunk reaches it."]
    write_bytes_atomic(Path(docs) / "attention_leak.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
