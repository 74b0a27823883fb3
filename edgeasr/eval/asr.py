"""Speech-recognition evaluation: WER and CER (jiwer), real-time factor, model size.

    error_rates(references, hypotheses)       corpus WER / CER over normalised text
    character_edits(references, hypotheses)   per-utterance character edits, for paired comparisons
    cer_difference_standard_error(a, b)       bootstrap standard error of the CER gap of two models
    keras_transcripts(model, split, ...)      greedy CTC transcripts of a Keras model (batched)
    litert_transcripts(path, split, ...)      transcripts + real-time factor of a .tflite (one thread)

RTF = (frontend + model + decoding time) / audio duration, measured on a single LiteRT thread,
one utterance at a time, as a device would run it.
"""
from pathlib import Path
from typing import List, Optional, Sequence

import jiwer
import numpy as np

from edgeasr.audio.frontend import FrontendConfig
from edgeasr.data.asr_pipeline import AsrSplit, length_batches, pad_batch
from edgeasr.data.tokenizer import Tokenizer
from edgeasr.errors import EdgeasrError
from edgeasr.runtime.ctc import decode


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Corpus-level WER and CER (errors over all reference words / characters)."""
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need as many hypotheses as references (>0), got {len(hypotheses)} and {len(references)}")
    # jiwer refuses empty references; every reference here has text (load_asr_split checks it).
    return {
        "utterances": len(references),
        "wer": float(jiwer.wer(references, hypotheses)),
        "cer": float(jiwer.cer(references, hypotheses)),
        "sentence_accuracy": float(np.mean([r == h for r, h in zip(references, hypotheses)])),
    }


def character_edits(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """(utterances, 2) ints: each pair's character edits (substitutions + deletions + insertions) and
    reference characters. Their column sums give the corpus CER of `error_rates`."""
    counts = []
    for reference, hypothesis in zip(references, hypotheses):
        measured = jiwer.process_characters(reference, hypothesis)
        counts.append((measured.substitutions + measured.deletions + measured.insertions,
                       measured.substitutions + measured.deletions + measured.hits))
    return np.asarray(counts, dtype=np.int64).reshape(-1, 2)


def cer_difference_standard_error(edits_a, edits_b, resamples: int = 2000, seed: int = 0) -> float:
    """Standard error of CER(b) - CER(a) on the same utterances, by a paired bootstrap: each resample
    draws utterances with replacement and scores both models on the same draw, so what the two
    models share (hard utterances) cancels out of the gap's error."""
    a, b = np.asarray(edits_a), np.asarray(edits_b)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2 or not len(a):
        raise ValueError(f"need two (utterances, 2) arrays of the same utterances, got {a.shape} and {b.shape}")
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    gaps = b[draws, 0].sum(1) / b[draws, 1].sum(1) - a[draws, 0].sum(1) / a[draws, 1].sum(1)
    return float(np.std(gaps, ddof=1))


def keras_transcripts(model, split: AsrSplit, frontend: FrontendConfig, tokenizer: Tokenizer,
                      batch_size: int = 32, beam_width: int = 0) -> List[str]:
    """Transcripts in the split's order; utterances batched by length and padded with silence."""
    import tensorflow as tf

    from edgeasr.audio.frontend import tf_log_mel
    from edgeasr.models.conformer import output_frames

    transcripts = [""] * len(split)
    for batch in length_batches([len(w) for w in split.waves], batch_size):
        waves, targets = pad_batch(split, batch, frontend, output_frames)
        features = tf_log_mel(tf.constant(waves, tf.float32) / 32768.0, frontend)
        logits = model(features, training=False).numpy()
        for row, index in enumerate(batch):
            ids = decode(logits[row, :targets[row, 0]], beam_width)
            transcripts[index] = tokenizer.decode(ids)
    return transcripts


def litert_transcripts(model_path, split: AsrSplit, beam_width: int = 0, num_threads: int = 1) -> dict:
    """{"transcripts", "rtf", "audio_seconds", "compute_seconds"} of a converted model."""
    from edgeasr.runtime.asr import Transcriber

    transcriber = Transcriber(model_path, num_threads=num_threads, beam_width=beam_width)
    rate = transcriber.frontend.sample_rate
    transcriber.transcribe(split.waves[0].astype(np.float32) / 32768.0)   # warm-up (XNNPACK packs weights)
    transcripts, compute, audio_seconds = [], 0.0, 0.0
    for wave in split.waves:
        text, seconds = transcriber.transcribe_timed(wave.astype(np.float32) / 32768.0)
        transcripts.append(text)
        compute += seconds
        audio_seconds += len(wave) / rate
    return {"transcripts": transcripts, "rtf": compute / audio_seconds, "audio_seconds": audio_seconds,
            "compute_seconds": compute}


def _transcriber(model_path, beam_width: int):
    """The runtime's Transcriber; a file that is no edgeasr speech-recognition model (a keyword
    model, say) is a user error."""
    from edgeasr.runtime.asr import Transcriber, TranscriberError

    try:
        return Transcriber(model_path, beam_width=beam_width)
    except TranscriberError as exc:
        raise EdgeasrError(str(exc)) from exc


def file_size(path) -> int:
    return Path(path).stat().st_size


def windowed_keras_scores(model, transcriber, waves, batch_size: int = 32) -> list:
    """Each int16 wave's logits from a Keras model of the file's window length, the wave fed as the
    converted file behind `transcriber` is fed: its windows, silence padding, NumPy frontend."""
    windows = [transcriber.windows(wave.astype(np.float32) / 32768.0) for wave in waves]
    features = [window for each in windows for window, _ in each]
    logits = iter(model.predict(np.stack(features), batch_size=batch_size, verbose=0) if features else [])
    return [transcriber.joined([next(logits) for _ in each], each) for each in windows]


def evaluate_model(model, manifest, limit: Optional[int] = None, beam_width: int = 0, warn: bool = True,
                   windows_of=None) -> dict:
    """WER / CER of a train-asr run directory (Keras) or a converted .tflite (LiteRT, with RTF and size)
    on the first `limit` utterances of the manifest (all of them for None); `warn`: load_asr_split's.
    `windows_of`: a converted .tflite; the run's Keras model is then fed as that file is
    (`windowed_keras_scores`: its windows and frontend) instead of in batches padded to their
    longest utterance. Fed as its own converted file, a run differs from it by the integer
    arithmetic alone; a float run fed as its QAT twin's file gives the like-for-like reference."""
    from edgeasr.data.asr_pipeline import load_asr_split

    if limit is not None and limit < 1:
        raise EdgeasrError(f"limit {limit}: need 1 or more utterances (or no limit)")
    if beam_width < 0:
        raise EdgeasrError(f"beam width {beam_width}: need 0 or 1 (greedy) or more")
    model = Path(model)
    if model.is_dir():
        from edgeasr.train.asr_fit import AsrRunDir

        run = AsrRunDir(model)
        config, tokenizer = run.read_config(), run.read_tokenizer()
        if windows_of is None:
            split = load_asr_split(manifest, None, config.frontend, limit, warn=warn)
            hypotheses = keras_transcripts(run.load_model(), split, config.frontend, tokenizer, beam_width=beam_width)
            kind = f"keras {config.policy.name}"
        else:
            from edgeasr.converters.asr import fixed_window_model

            transcriber = _transcriber(windows_of, beam_width)
            split = load_asr_split(manifest, None, transcriber.frontend, limit, warn=warn)
            float_model, quantized = fixed_window_model(run, transcriber.window_frames)
            keras_model = quantized if quantized is not None else float_model
            scores = windowed_keras_scores(keras_model, transcriber, split.waves)
            hypotheses = [transcriber.text(each) for each in scores]
            kind = f"keras {config.policy.name} ({Path(windows_of).name}'s windows)"
        report = {"model": str(model), "kind": kind, **error_rates(split.texts, hypotheses),
                  "rtf": None, "audio_seconds": None, "compute_seconds": None, "bytes": None}   # LiteRT's keys
    else:
        frontend = _transcriber(model, beam_width).frontend
        split = load_asr_split(manifest, None, frontend, limit, warn=warn)
        measured = litert_transcripts(model, split, beam_width=beam_width)
        hypotheses = measured.pop("transcripts")
        report = {"model": str(model), "kind": "litert", **error_rates(split.texts, hypotheses), **measured,
                  "bytes": file_size(model)}
    edits = character_edits(split.texts, hypotheses)
    report["character_edits"] = edits.tolist()   # [edits, characters] each
    report["transcripts"] = [{"audio": audio, "reference": reference, "hypothesis": hypothesis, "edits": int(count)}
                             for audio, reference, hypothesis, count in zip(split.audio, split.texts, hypotheses,
                                                                           edits[:, 0])]
    return report


WORST_SHOWN = 5   # utterances per model in the Markdown report, most character edits first


def markdown_reports(reports: List[dict], manifest) -> str:
    """The reports as Markdown: one table of all models, then each model's worst utterances."""
    lines = [f"# Speech recognition on {manifest}", "",
             "| model | kind | utterances | WER | CER | sentences right | RTF | bytes |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        rtf, size = _rtf_and_size(r)
        lines.append(f"| {r['model']} | {r['kind']} | {r['utterances']} | {r['wer']:.2%} | {r['cer']:.2%} | "
                     f"{r['sentence_accuracy']:.1%} | {rtf} | {size} |")
    for r in reports:
        worst = sorted((t for t in r["transcripts"] if t["edits"]), key=lambda t: -t["edits"])[:WORST_SHOWN]
        lines += ["", f"## {r['model']}: " + (f"the {len(worst)} utterance(s) with the most character edits"
                                                if worst else "every utterance right"), ""]
        lines += [f"- {t['audio']} ({t['edits']} edits)  \n  ref: `{t['reference']}`  \n  hyp: `{t['hypothesis']}`"
                  for t in worst]
    return "\n".join(lines) + "\n"


def format_reports(reports: List[dict]) -> str:
    lines = [f"{'model':<40} {'kind':<16} {'utts':>6} {'WER':>7} {'CER':>7} {'RTF':>7} {'bytes':>10}"]
    for r in reports:
        rtf, size = _rtf_and_size(r)
        name = r["model"] if len(r["model"]) <= 40 else "..." + r["model"][-37:]     # the path as given
        lines.append(f"{name:<40} {r['kind'][:16]:<16} {r['utterances']:>6} "
                     f"{r['wer']:>7.2%} {r['cer']:>7.2%} {rtf:>7} {size:>10}")
    return "\n".join(lines)


def _rtf_and_size(report: dict) -> tuple:
    """A report's real-time factor and bytes as table text; '-' for a Keras model, which has neither."""
    rtf = f"{report['rtf']:.4f}" if report.get("rtf") is not None else "-"
    return rtf, f"{report['bytes']:,}" if report.get("bytes") is not None else "-"
