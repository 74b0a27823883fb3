"""Long-stream keyword-spotting evaluation: false rejects at fixed false accepts per hour.

The test stream is a WAV plus a label file, either the user's or one built here from held-out
synthetic voices (`build_test_stream`, cached; the validation voices give a second stream on which
to choose thresholds or models). Label file format, one keyword occurrence a line,
times in seconds from the start of the WAV, `#` starts a comment:

    # start_s  end_s  keyword
    12.340  12.810  yes
    17.025  17.400  stop

Every label lies within the WAV, which is at least one model window long, and names one of the
model's keywords as its labels spell it (case included); `evaluate_stream` refuses other files before
the model runs, except that lines of words that are not keywords of the model (a stream labelled for
more keywords) are left out of the score with a warning: a detection during one counts as a false accept.

The model runs over the stream once (edgeasr.runtime.streaming.PosteriorStream, the code the
device runs); thresholds are then swept offline with the same trigger function. A detection of
keyword k at time t hits an occurrence of k when start <= t <= end + max_latency_s, each
occurrence at most once; every other detection is a false accept.

A built stream also has a pieces file (`pieces_path`: every piece with its kind: keyword, other
word, sentence, noise, silence); when one sits beside the label file, the report counts the false
accepts at each FA/h point's threshold by the kind of piece that was playing.
"""
import hashlib
import json
import math
import os
import numbers
import re
import sys
import unicodedata
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeasr.audio.frontend import FrontendConfig
from edgeasr.audio.io import load_audio, write_wav
from edgeasr.errors import EdgeasrError
from edgeasr.files import read_json, write_bytes_atomic, write_json_atomic
from edgeasr.progress import progress_bar
from edgeasr.runtime.litert import LiteRTModel
from edgeasr.runtime.metadata import keyword_columns, keywords_of, read_metadata
from edgeasr.runtime.streaming import (DetectorConfig, PosteriorStream, check_labels_match_outputs, fire_indices,
                                       frontend_config, input_frames, mono_samples, outputs_logits)
from edgeasr.runtime.streaming import stream_metadata as runtime_stream_metadata

STREAM_FORMAT = 1
STREAM_SPLITS = ("testing", "validation")
MAX_LATENCY_S = 1.0
LABEL_SLACK_S = 0.01     # a label may end this far after the audio: times rounded to ms, resampled lengths
FA_PER_HOUR_POINTS = (0.5, 1.0, 2.0, 5.0)
REFINE_STEPS = 10        # bisections below a grid threshold: 1/1024 of a grid step
# Common thresholds swept for the DET curve: 0.05 to 0.95, then ever closer to 1. Sharpened posteriors
# (DetectorConfig.sharpening) pile up near 1, so the top goes on to 1 - 1e-6 (about 17 float32 steps
# below 1); the points up to 0.99995 are the grid every table in docs/ was measured on.
THRESHOLDS = np.unique(np.concatenate([
    np.round(np.concatenate([np.linspace(0.05, 0.95, 91), 1.0 - np.geomspace(0.05, 0.00005, 60)]), 5),
    np.round(1.0 - np.geomspace(0.00005, 0.000001, 18)[1:], 8)]))
# Non-keyword speech for the stream: no Speech Commands keyword as a word (checked in _sentences).
SENTENCES = (
    "the weather will be warm and sunny this afternoon", "please bring me a cup of tea",
    "I would like to book a table for two people", "my brother lives in a small town by the sea",
    "what time does the train leave", "she reads a book every evening", "we walked through the park",
    "can you help me with this problem", "the children are playing in the garden",
    "I think it will rain later", "this is the best pizza in the city", "they moved here last year",
    "remember to call your mother", "the meeting starts at nine", "how much does this cost",
    "a cat sat near the window", "he plays the piano very well", "we need more milk and bread",
    "the museum is closed today", "let me think about it", "the river runs past the old mill",
    "thank you for waiting", "seven birds flew across the field", "happy birthday to you",
    "the house at the corner is for sale", "follow the signs to the station",
)


class StreamError(EdgeasrError):
    """A stream or label file that cannot be evaluated."""


# ---- labels -------------------------------------------------------------------------------

def read_labels(path) -> list:
    """[(start_s, end_s, keyword)] from a label file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise StreamError(f"{path}: label file not found")
    labels = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            start, end, keyword = float(fields[0]), float(fields[1]), fields[2]
            if len(fields) > 3:                # "12.3 12.8 turn on" is not the keyword "turn"
                raise ValueError
        except (IndexError, ValueError):
            raise StreamError(f"{path}:{number}: expected 'start_s end_s keyword' (one word), got {line!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            raise StreamError(f"{path}:{number}: times must be seconds from the start of the audio, got {line!r}")
        if end < start:
            raise StreamError(f"{path}:{number}: end {end} is before start {start}")
        labels.append((start, end, keyword, number))
    labels.sort()
    for first, second in zip(labels, labels[1:]):
        if second[0] < first[1] or first[:3] == second[:3]:
            what = "repeat each other" if first[:3] == second[:3] else "overlap"
            raise StreamError(f"{path}: lines {first[3]} and {second[3]} {what} ({first[0]:g}-{first[1]:g} "
                              f"{first[2]}, {second[0]:g}-{second[1]:g} {second[2]}); a label file holds one "
                              f"line per spoken word, one word at a time")
    return [label[:3] for label in labels]


def label_words_not_keywords(occurrences, labels_list, label_path, model_path) -> dict:
    """{word: lines} of the label words that are not keywords of the model (they are not scored).
    A word that differs from a keyword only by case or invisible characters is a typo, not another
    word: StreamError, naming it and how many lines it has."""
    keywords = [name for _, name in keyword_columns(labels_list)]
    others = tally(word for _, _, word in occurrences if word not in keywords)
    spelled = {_spelling(name): name for name in keywords}
    typos = [f"{word!r} ({_lines(count)}) for {spelled[_spelling(word)]!r}" for word, count in others.items()
             if _spelling(word) in spelled]
    if typos:
        raise StreamError(f"{label_path}: label words that differ from a keyword of {model_path} only by case or "
                          f"spacing: {', '.join(typos)}; write them as the model's keywords: {', '.join(keywords)}")
    return others


def _lines(count: int) -> str:
    return f"{count} label line{'s' if count != 1 else ''}"


def _spelling(word: str) -> str:
    """A word without case, surrounding whitespace and invisible characters (zero-width space, BOM)."""
    return "".join(c for c in word if unicodedata.category(c) != "Cf").strip().casefold()


def warn_not_keywords(others: dict, label_path, model_path) -> None:
    """Say on stderr which label lines are left out of the score (`label_words_not_keywords`)."""
    if others:
        print(f"warning: {label_path}: {_lines(sum(others.values()))} name words that are not keywords of "
              f"{model_path} ({counts_text(others)}); they are not scored as keywords, and a detection during "
              f"one counts as a false accept", file=sys.stderr)


def check_window(audio_s: float, window_s: float, source) -> None:
    """StreamError when the audio is shorter than one model window: the model never runs on it."""
    if audio_s < window_s:
        raise StreamError(f"{source}: {audio_s:.3f} s of audio is shorter than the model's input window "
                          f"({window_s:.3f} s): the model cannot run on it")


def check_stream_length(audio_s: float, window_s: float, occurrences, wav, label_path) -> None:
    """StreamError when the audio is shorter than one model window, or a label ends after the audio
    (the first one named): either would be scored as misses."""
    check_window(audio_s, window_s, wav)
    late = [(start, end, word) for start, end, word in occurrences if end > audio_s + LABEL_SLACK_S]
    if late:
        start, end, word = late[0]
        raise StreamError(f"{label_path}: the label '{start:.3f} {end:.3f} {word}' ends after the audio of {wav} "
                          f"({audio_s:.3f} s long), as {len(late)} of its {len(occurrences)} labels do: are they "
                          f"this WAV's labels?")


def check_some_keyword(occurrences, labels_list, label_path, wav) -> None:
    """StreamError, before the model runs, when the labels name no keyword of the model: there is
    no false-reject rate to measure (and every threshold choice rests on one)."""
    keywords = [name for _, name in keyword_columns(labels_list)]
    if not any(word in keywords for _, _, word in occurrences):
        raise StreamError(f"{label_path}: no occurrence of the model's keywords ({', '.join(keywords)}); eval-stream "
                          f"measures false rejects against false accepts. To count false accepts alone on audio "
                          f"without keywords: python scripts/rpi_kws.py MODEL --wav {wav} (each detection is one)")


def write_labels(path, labels, column: str = "keyword") -> None:
    text = f"# start_s  end_s  {column}\n" + "".join(f"{s:.3f} {e:.3f} {k}\n" for s, e, k in labels)
    write_bytes_atomic(path, text.encode())


def pieces_path(label_path) -> Path:
    """Where the stream's pieces file sits: NAME.pieces.txt beside NAME.labels.txt. Same format as a
    label file, one line per piece of the stream, with its kind (keyword, other, sentence, noise,
    silence) in place of the keyword; build_test_stream writes it, and a user may too."""
    label_path = Path(label_path)
    stem = label_path.name[:-len(".labels.txt")] if label_path.name.endswith(".labels.txt") else label_path.stem
    return label_path.with_name(f"{stem}.pieces.txt")


# ---- building a test stream ---------------------------------------------------------------

def model_stream(dataset, metadata, out_dir, hours: float = 1.0, seed: int = 0, split: str = "testing",
                 progress: bool = True):
    """`build_test_stream` for the keywords of a model with this metadata -> (wav path, label path)."""
    if not keywords_of(metadata):
        raise StreamError("the model's edgeasr metadata names no keywords to build a stream for; convert it "
                          "with `edgeasr convert` from a run directory")
    return build_test_stream(dataset, keywords_of(metadata), out_dir, hours=hours, seed=seed, split=split,
                             progress=progress)


def build_test_stream(dataset, keywords, out_dir, hours: float = 1.0, seed: int = 0,
                      sample_rate: int = 16000, progress: bool = True, split: str = "testing"):
    """A WAV of `hours` with one split's keyword clips at known times -> (wav path, label path);
    the pieces file (`pieces_path`) is written beside the labels.

    Made of: keyword and unknown-word clips of the dataset's `split` (testing or validation: both
    are voices training never heard), espeak sentences without keywords spoken by the same voices,
    coloured noise bursts and silence, over a quiet noise bed. A validation stream is where
    thresholds and models are chosen, so that the test stream only scores. Deterministic by seed;
    cached in out_dir by a key of the inputs, so a second call returns the cached files.
    """
    if not (isinstance(hours, numbers.Real) and math.isfinite(hours) and hours > 0):
        raise StreamError(f"the stream's length must be a positive number of hours, got {hours!r}")
    if split not in STREAM_SPLITS:
        raise StreamError(f"split must be one of {', '.join(STREAM_SPLITS)}, got {split!r}")
    dataset = Path(dataset)
    synth = read_json(dataset / "synth_config.json") if (dataset / "synth_config.json").is_file() else None
    if synth is None:
        raise StreamError(f"{dataset}: not a synthetic dataset (no synth_config.json): its held-out voices "
                          f"are unknown; pass a WAV and a label file instead")
    # The testing split keeps the key (and layout) it had before streams took a split, so cached
    # streams stay valid; "own layout" marks validation streams drawn apart from the testing one.
    inputs = [STREAM_FORMAT, synth, sorted(keywords), hours, seed, sample_rate] + (
        [split, "own layout"] if split != "testing" else [])
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    wav, label_path = Path(out_dir) / f"stream_{key}.wav", Path(out_dir) / f"stream_{key}.labels.txt"
    sources, fingerprint = wav.with_suffix(".sources"), _sources_fingerprint(dataset, split)
    if wav.is_file() and label_path.is_file() and pieces_path(label_path).is_file():
        if not sources.is_file():          # cached before fingerprints were kept: trust it from now on
            sources.write_text(fingerprint)
        if sources.read_text() == fingerprint:
            return wav, label_path
    audio, labels, pieces = _compose(dataset, synth, split, tuple(keywords), hours, seed, sample_rate, progress)
    write_wav(wav, audio, sample_rate)
    write_labels(label_path, labels)
    write_labels(pieces_path(label_path), pieces, column="kind")
    sources.write_text(fingerprint)
    return wav, label_path


def layout_seed(seed: int, split: str) -> list:
    """The seed of a stream's layout (its noise, silences, levels and keyword order). Each split
    draws its own: with one seed for both, a validation stream repeated the testing stream's noise
    bursts sample for sample, and thresholds chosen on it had already seen the test's noise."""
    return [seed, 6] if split == "testing" else [seed, 6, STREAM_SPLITS.index(split)]


def _sources_fingerprint(dataset: Path, split: str) -> str:
    """A hash of the clips and noises a stream is made of. The cache key covers the synthesis
    settings only, so an edited copy of a dataset would otherwise get the original's stream."""
    keyword_and_other = [dataset / relative for relative in _listed(dataset, split)]
    digest = hashlib.sha256()
    for path in keyword_and_other + _noise_paths(dataset):
        digest.update(path.relative_to(dataset).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()


def _compose(dataset: Path, synth: dict, split: str, keywords, hours, seed, sample_rate, progress):
    rng = np.random.default_rng(layout_seed(seed, split))
    keyword_clips, other_clips = _split_clips(dataset, split, keywords)
    if not keyword_clips:
        raise StreamError(f"{dataset}: the {split} split has no clips of {list(keywords)}")
    speakers = synth["speakers"][split]
    noises = _noises(dataset, sample_rate)
    total = int(round(hours * 3600 * sample_rate))
    audio = np.zeros(total, dtype=np.float32)
    labels, pieces, position = [], [], int(rng.uniform(0.5, 2.0) * sample_rate)
    keyword_order = iter(np.concatenate([rng.permutation(len(keyword_clips)) for _ in range(100)]))
    with progress_bar(total=total // sample_rate, desc=f"building {split} stream", unit="s",
                      enabled=progress) as bar:
        while position < total:
            kind = rng.choice(["keyword", "other", "sentence", "noise", "silence"], p=[0.45, 0.15, 0.2, 0.1, 0.1])
            if kind == "keyword":
                word, path = keyword_clips[next(keyword_order)]
                piece = _speech(load_audio(path, sample_rate), rng)
            elif kind == "other":
                piece = _speech(load_audio(other_clips[rng.integers(len(other_clips))], sample_rate), rng)
            elif kind == "sentence":
                piece = _sentence(speakers[rng.integers(len(speakers))], rng, sample_rate)
            elif kind == "noise":
                noise = noises[rng.integers(len(noises))]
                length = int(rng.uniform(1.0, 4.0) * sample_rate)
                start = rng.integers(len(noise) - length)
                piece = noise[start:start + length] * rng.uniform(0.05, 0.3)
            else:
                piece = np.zeros(int(rng.uniform(1.0, 3.0) * sample_rate), np.float32)
            piece = piece[: total - position]
            audio[position:position + len(piece)] += piece
            span = (position / sample_rate, (position + len(piece)) / sample_rate)
            if len(piece):
                pieces.append((*span, str(kind)))
            if kind == "keyword" and len(piece):
                labels.append((*span, word))
            step = len(piece) + int(rng.uniform(0.3, 1.5) * sample_rate)
            bar.update(min(total, position + step) // sample_rate - position // sample_rate)
            position += step
    audio += _noise_bed(noises, total, rng, shifted=split != "testing") * 0.01
    return np.clip(audio, -1.0, 1.0), labels, pieces


def _noise_bed(noises: list, total: int, rng, shifted: bool) -> np.ndarray:
    """Whole noise files end to end under the stream. shifted: each starts at a random sample, so
    that two streams that draw the same file do not share its samples (the testing stream keeps
    the unshifted bed its results in docs/ were measured on)."""
    segments = []
    for _ in range(total // len(noises[0]) + 1):
        noise = noises[rng.integers(len(noises))]
        segments.append(np.roll(noise, int(rng.integers(len(noise)))) if shifted else noise)
    return np.concatenate(segments)[:total]


def _split_clips(dataset: Path, split: str, keywords):
    """(keyword, path) and other-word paths of the split; the synthesiser's connected-speech
    windows are left out: the stream has whole sentences of its own (kind `sentence`)."""
    keyword_clips, other_clips = [], []
    for relative in _listed(dataset, split):
        word = relative.split("/", 1)[0]
        (keyword_clips.append((word, dataset / relative)) if word in keywords
         else other_clips.append(dataset / relative))
    return keyword_clips, other_clips


def _listed(dataset: Path, split: str) -> list:
    """The split's clips (relative paths, sorted), without the synthesiser's sentence windows."""
    from edgeasr.data.speech_commands import read_list
    from edgeasr.data.synth import SENTENCES_FOLDER

    listed = read_list(dataset / f"{split}_list.txt")        # as training reads it ('./', '\\', spaces)
    return [relative for relative in sorted(listed) if relative.split("/", 1)[0] != SENTENCES_FOLDER]


def _speech(clip: np.ndarray, rng) -> np.ndarray:
    """The spoken part of a 1 s clip (samples above -46 dB of its peak), at a random level."""
    peak = float(np.max(np.abs(clip)))
    loud = np.flatnonzero(np.abs(clip) > peak * 0.005) if peak > 0 else []
    if len(loud) == 0:
        return clip[:0]
    speech = clip[loud[0]:loud[-1] + 1]
    return speech * (rng.uniform(0.3, 0.9) / peak)


def _sentence(speaker: str, rng, sample_rate: int) -> np.ndarray:
    import soxr

    from edgeasr.data.espeak import Espeak

    voice, variant = speaker.split("+", 1)
    engine = Espeak()
    engine.reset(seed=int(rng.integers(2**31)))        # espeak's output depends on what it said before
    text = _sentences()[rng.integers(len(SENTENCES))]
    pcm = engine.synthesize(text, voice, variant, rate=int(rng.integers(130, 231)), pitch=int(rng.integers(25, 76)))
    speech = soxr.resample(pcm.astype(np.float32) / 32768.0, engine.sample_rate, sample_rate).astype(np.float32)
    peak = float(np.max(np.abs(speech))) or 1.0
    return speech * (rng.uniform(0.3, 0.9) / peak)


def _sentences():
    from edgeasr.data.speech_commands import SPEECH_COMMANDS_KEYWORDS

    for sentence in SENTENCES:
        clash = set(re.findall(r"[a-z']+", sentence.lower())) & set(SPEECH_COMMANDS_KEYWORDS)
        if clash:
            raise AssertionError(f"sentence {sentence!r} contains keywords {clash}")
    return SENTENCES


def _noises(dataset: Path, sample_rate: int) -> list:
    """The dataset's coloured noises (babble is left out: it is spoken by training voices)."""
    paths = _noise_paths(dataset)
    if not paths:
        raise StreamError(f"{dataset}/_background_noise_: no *_noise.wav files")
    return [load_audio(p, sample_rate) for p in paths]


def _noise_paths(dataset: Path) -> list:
    return sorted((dataset / "_background_noise_").glob("*_noise.wav"))


def default_cache_dir() -> Path:
    """Built streams are keyed by what they are built from, so one per-user cache serves every folder."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "edgeasr" / "streams"


# ---- running a model over a stream --------------------------------------------------------

def stream_posteriors(model_path, audio: np.ndarray, config: DetectorConfig, metadata=None,
                      chunk_seconds: float = 10.0, progress: bool = True, num_threads: int = 1):
    """(times, smoothed posteriors, labels) of one model over the whole stream (float samples in
    [-1, 1] or int16 PCM, as `KeywordSpotter.push` takes them), chunk by chunk."""
    try:
        audio = mono_samples(audio)
    except ValueError as exc:
        raise StreamError(f"the stream: {exc}") from None
    metadata = stream_metadata(model_path, metadata or read_metadata(model_path))
    frontend = frontend_of(model_path, metadata)
    model = LiteRTModel(model_path, num_threads=num_threads)
    try:
        check_labels_match_outputs(model_path, metadata["labels"], model)
    except ValueError as exc:
        raise StreamError(str(exc)) from None
    frames = input_frames(model, metadata)
    check_window(len(audio) / frontend.sample_rate, frontend.frames_end_seconds(frames), "the stream")
    try:
        stream = PosteriorStream(model, frontend, frames, config, outputs_logits(metadata))
    except ValueError as exc:                         # detector settings that do not fit the model
        raise StreamError(str(exc)) from None
    chunk = int(chunk_seconds * frontend.sample_rate)
    times, scores = [], []
    for start in progress_bar(range(0, len(audio), chunk), desc=f"scoring {Path(model_path).name}", unit="chunk",
                              enabled=progress):
        t, s = stream.push(audio[start:start + chunk])
        times.append(t)
        scores.append(s)
    return np.concatenate(times), np.concatenate(scores), list(metadata["labels"])


def stream_metadata(model_path, metadata) -> dict:
    """The runtime's `streaming.stream_metadata`, its refusal as a StreamError (a user error)."""
    try:
        return runtime_stream_metadata(model_path, metadata)
    except ValueError as exc:
        raise StreamError(str(exc)) from None


def frontend_of(model_path, metadata: dict) -> FrontendConfig:
    try:
        return frontend_config(model_path, metadata)
    except ValueError as exc:
        raise StreamError(str(exc)) from None


# ---- scoring detections -------------------------------------------------------------------

def _hits(fired: np.ndarray, occurrences: np.ndarray, max_latency_s: float):
    """(positions in `fired` that hit an occurrence, the occurrences they hit), each occurrence once."""
    if not len(occurrences):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts, ends = occurrences[:, 0], occurrences[:, 1]
    index = np.searchsorted(starts, fired, side="right") - 1
    inside = (index >= 0) & (fired <= ends[np.maximum(index, 0)] + max_latency_s)
    _, first = np.unique(index[inside], return_index=True)
    positions = np.flatnonzero(inside)[first]
    return positions, index[positions]


def _detections(times, scores, column: int, occurrences, threshold: float, refractory_s: float,
                max_latency_s: float):
    """(firing times of one keyword at one threshold, positions that hit, the occurrences they hit)."""
    fired = times[fire_indices(times, scores[:, column], threshold, refractory_s)]
    return (fired, *_hits(fired, occurrences, max_latency_s))


def _keywords_of(labels_list, occurrences):
    """([(output column, keyword)], {keyword: its occurrences}): the labels that are keywords."""
    keywords = keyword_columns(labels_list)
    return keywords, {name: _occurrences_of(name, occurrences) for _, name in keywords}


def _occurrences_of(name: str, occurrences) -> np.ndarray:
    """(n, 2) start and end times of one keyword's occurrences."""
    return np.array([(s, e) for s, e, k in occurrences if k == name]).reshape(-1, 2)


def count_errors(times, scores, column: int, occurrences, threshold: float, refractory_s: float,
                 max_latency_s: float = MAX_LATENCY_S):
    """(hit latencies, false accepts, detections) of one keyword at one threshold."""
    fired, positions, hit = _detections(times, scores, column, occurrences, threshold, refractory_s, max_latency_s)
    latencies = fired[positions] - occurrences[hit, 1] if len(positions) else np.zeros(0)
    return latencies, len(fired) - len(positions), len(fired)


def false_accept_sources(times, scores, labels_list, occurrences, pieces, threshold: float, refractory_s: float,
                  max_latency_s: float = MAX_LATENCY_S) -> list:
    """[(keyword, piece kind)] of every false accept at one common threshold: which keyword fired and
    what the stream was playing (the last piece that started before it; `pieces` as
    build_test_stream writes them)."""
    starts = np.array([start for start, _, _ in pieces])
    kinds = [kind for _, _, kind in pieces]
    found = []
    for column, name in keyword_columns(labels_list):
        fired, positions, _ = _detections(times, scores, column, _occurrences_of(name, occurrences), threshold,
                                          refractory_s, max_latency_s)
        for moment in np.delete(fired, positions):
            piece = int(np.searchsorted(starts, moment, side="right")) - 1
            found.append((name, kinds[piece] if piece >= 0 else "lead-in"))
    return found


def false_accepts_by_kind(*args, **kwargs) -> dict:
    """{piece kind: false accepts} at one common threshold (the arguments of `false_accept_sources`)."""
    return tally(kind for _, kind in false_accept_sources(*args, **kwargs))


def tally(names) -> dict:
    """{name: how often it occurs}, names in sorted order."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def evaluate(times, scores, labels_list, occurrences, hours: float, config: DetectorConfig,
             target_fa_per_hour: float = 1.0, max_latency_s: float = MAX_LATENCY_S, thresholds=None,
             per_keyword: bool = False) -> dict:
    """DET curve (one threshold for all keywords), FRR at fixed FA/h, and the thresholds for a target:
    one for all keywords, or one per keyword when `per_keyword` and the stream is long enough
    (`threshold_rule`).

    `thresholds` ({keyword: threshold}, e.g. chosen on a validation stream) are scored as given
    instead of being chosen on this stream, which flatters them: chosen here, they fit its false
    accepts exactly."""
    refractory = config.refractory_ms / 1000.0
    keywords, by_keyword = _keywords_of(labels_list, occurrences)
    total = sum(len(v) for v in by_keyword.values())
    if total == 0:
        raise StreamError("the label file has no occurrence of the model's keywords "
                          f"{[name for _, name in keywords]}")
    table = {name: [count_errors(times, scores, i, by_keyword[name], t, refractory, max_latency_s)
                    for t in THRESHOLDS] for i, name in keywords}
    misses = np.array([[len(by_keyword[name]) - len(table[name][j][0]) for j in range(len(THRESHOLDS))]
                       for _, name in keywords])
    false_accepts = np.array([[table[name][j][1] for j in range(len(THRESHOLDS))] for _, name in keywords])
    det = {"threshold": THRESHOLDS.tolist(), "frr": (misses.sum(0) / total).tolist(),
           "fa_per_hour": (false_accepts.sum(0) / hours).tolist()}
    def errors_at_common(threshold, only=None):
        """Misses and false accepts of every keyword (or only the one named) at one threshold."""
        scored = [k for k in keywords if only is None or k[1] == only]
        return _at_thresholds(times, scores, scored, by_keyword, dict.fromkeys(by_keyword, threshold),
                              refractory, max_latency_s)

    at_points = {str(p): _refined_point(det, p, hours, total, errors_at_common) for p in FA_PER_HOUR_POINTS}
    rule = threshold_rule(len(keywords), hours, target_fa_per_hour, per_keyword) if thresholds is None else "given"
    if rule == "per keyword":
        chosen = _per_keyword_thresholds(keywords, false_accepts, hours, target_fa_per_hour, errors_at_common)
    elif rule == "common":
        point = at_points.get(str(target_fa_per_hour)) or _refined_point(det, target_fa_per_hour, hours, total,
                                                                         errors_at_common)
        common = point["threshold"]
        chosen = dict.fromkeys((name for _, name in keywords), 1.0 if common is None else common)
    else:
        missing = [name for _, name in keywords if name not in thresholds]
        if missing:
            raise StreamError(f"no threshold given for keywords {missing}")
        chosen = {name: float(thresholds[name]) for _, name in keywords}
    operating = _at_thresholds(times, scores, keywords, by_keyword, chosen, refractory, max_latency_s)
    fa_per_hour = operating["false_accepts"] / hours
    return {"hours": hours, "keyword_occurrences": total,
            "detector": {**asdict(config), "thresholds": chosen},        # the detector these figures are of
            "max_latency_s": max_latency_s, "det": det, "frr_at_fa_per_hour": at_points,
            "target_fa_per_hour": target_fa_per_hour, "thresholds": chosen, "thresholds_rule": rule,
            "target_reached": fa_per_hour <= target_fa_per_hour,
            "at_thresholds": {**operating, "frr": operating["misses"] / total, "fa_per_hour": fa_per_hour}}


def errors_at(times, scores, labels_list, occurrences, hours: float, config: DetectorConfig, threshold: float,
              max_latency_s: float = MAX_LATENCY_S) -> dict:
    """FRR and false accepts per hour at one common threshold (e.g. one chosen on another stream)."""
    keywords, by_keyword = _keywords_of(labels_list, occurrences)
    errors = _at_thresholds(times, scores, keywords, by_keyword, dict.fromkeys(by_keyword, threshold),
                            config.refractory_ms / 1000.0, max_latency_s)
    return {"threshold": threshold, "frr": errors["misses"] / sum(len(v) for v in by_keyword.values()),
            "fa_per_hour": errors["false_accepts"] / hours}


def frr_at_rate(det: dict, fa_per_hour: float) -> dict:
    """The lowest common threshold with at most `fa_per_hour` false accepts per hour, and its FRR."""
    for threshold, frr, fa in zip(det["threshold"], det["frr"], det["fa_per_hour"]):
        if fa <= fa_per_hour:
            return {"threshold": threshold, "frr": frr, "fa_per_hour": fa}
    return {"threshold": None, "frr": 1.0, "fa_per_hour": None}


def _refined_point(det: dict, fa_per_hour: float, hours: float, total: int, errors_at) -> dict:
    """`frr_at_rate`, its threshold refined between the grid's answer and the grid point below it."""
    point = frr_at_rate(det, fa_per_hour)
    if point["threshold"] is None:
        return point
    threshold, errors = _refine(point["threshold"], errors_at, fa_per_hour * hours)
    if errors is None:
        return point
    return {"threshold": threshold, "frr": errors["misses"] / total, "fa_per_hour": errors["false_accepts"] / hours}


def _refine(grid_threshold: float, errors_at, allowed_false_accepts: float):
    """The lowest threshold between the grid point below `grid_threshold` and it that keeps
    errors_at(t)["false_accepts"] within the allowance, by bisection (REFINE_STEPS halvings), and its
    errors; (grid_threshold, None) when it is the grid's lowest. On a 4 h stream one grid step near 0.98
    moves FRR at 1 FA/h by several points, so the grid alone would add that much noise to every model."""
    index = int(np.searchsorted(THRESHOLDS, grid_threshold))
    if index == 0:
        return grid_threshold, None
    lower, upper, best = float(THRESHOLDS[index - 1]), float(grid_threshold), None
    for _ in range(REFINE_STEPS):
        middle = (lower + upper) / 2
        errors = errors_at(middle)
        if errors["false_accepts"] <= allowed_false_accepts + 1e-9:
            upper, best = middle, errors
        else:
            lower = middle
    return upper, best if best is not None else errors_at(upper)


def threshold_rule(keyword_count: int, hours: float, target_fa_per_hour: float, per_keyword: bool = False) -> str:
    """"per keyword" when asked for and the stream lets each keyword false-accept at least once at the
    target (target / keywords * hours >= 1), else "common": one threshold for all keywords at the target.

    Per-keyword thresholds are not the default: each rests on the few highest non-keyword scores of
    one keyword, which belong to the stream's voices. Chosen on 10 h of validation voices for 1 FA/h
    in all, they gave 2.75-6.5 FA/h on the test voices (8 DS-CNN-S runs), and at those rates one
    threshold for all missed fewer keywords (float FRR 10.3% against 18.4%); with 5 false accepts
    allowed per keyword (5 FA/h in all) they gave 12-15 FA/h. The common threshold chosen on the same
    stream gave 0.25-1.75 FA/h (docs/keyword_thresholds.md). Below one allowed false accept each,
    they sit just above the stream's highest score for each keyword: 4-10 FA/h on the test voices for
    1 FA/h on 4 h of validation voices (docs/stream_results.md)."""
    allowed = target_fa_per_hour / keyword_count * hours >= 1
    return "per keyword" if per_keyword and allowed else "common"


def _per_keyword_thresholds(keywords, false_accepts, hours, target, errors_at) -> dict:
    """Per keyword, the lowest threshold keeping its false accepts within target / #keywords per hour."""
    share = target / len(keywords)
    chosen = {}
    for row, (_, name) in enumerate(keywords):
        allowed = np.flatnonzero(false_accepts[row] / hours <= share)
        if not len(allowed):
            chosen[name] = 1.0
            continue
        grid = float(THRESHOLDS[allowed[0]])
        chosen[name] = _refine(grid, lambda t: errors_at(t, only=name), share * hours)[0]
    return chosen


def _at_thresholds(times, scores, keywords, by_keyword, chosen, refractory, max_latency_s) -> dict:
    """Misses, false accepts and hit latencies at the `chosen` thresholds, in all and per keyword."""
    per_keyword, latencies = {}, []
    for i, name in keywords:
        hits, fa, _ = count_errors(times, scores, i, by_keyword[name], chosen[name], refractory, max_latency_s)
        per_keyword[name] = {"occurrences": len(by_keyword[name]), "misses": len(by_keyword[name]) - len(hits),
                             "false_accepts": fa}
        latencies.extend(hits.tolist())
    latency = np.asarray(latencies)
    return {"misses": sum(k["misses"] for k in per_keyword.values()),
            "false_accepts": sum(k["false_accepts"] for k in per_keyword.values()), "keywords": per_keyword,
            "latency_s": {"median": float(np.median(latency)) if len(latency) else None,
                          "p90": float(np.percentile(latency, 90)) if len(latency) else None}}


def plot_det(curves: dict, path, title: str = "") -> None:
    """DET curves (FRR against false accepts per hour) of one or more models into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, det in curves.items():
        fa, frr = np.asarray(det["fa_per_hour"]), np.asarray(det["frr"]) * 100
        ax.plot(np.maximum(fa, 0.1), frr, label=name, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour (0 drawn at 0.1)")
    ax.set_ylabel("false reject rate (%)")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "DET: keyword stream")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the whole evaluation ------------------------------------------------------------------

def evaluate_stream(model_path, wav, label_path, config: DetectorConfig, out_dir,
                    target_fa_per_hour: float = 1.0, progress: bool = True, thresholds=None,
                    per_keyword: bool = False) -> dict:
    """Run MODEL over WAV, score against the labels, write report JSON/Markdown and the DET PNG.
    Files that cannot be scored raise StreamError before the model runs (`check_stream_length`,
    `label_words_not_keywords`); label lines of other words are left out with a warning."""
    metadata = stream_metadata(model_path, read_metadata(model_path))
    frontend = frontend_of(model_path, metadata)
    occurrences = read_labels(label_path)
    not_keywords = label_words_not_keywords(occurrences, metadata["labels"], label_path, model_path)
    audio = load_audio(wav, frontend.sample_rate)
    check_stream_length(len(audio) / frontend.sample_rate,
                        frontend.frames_end_seconds(input_frames(model_path, metadata)), occurrences, wav, label_path)
    warn_not_keywords(not_keywords, label_path, model_path)
    check_some_keyword(occurrences, metadata["labels"], label_path, wav)
    times, scores, labels_list = stream_posteriors(model_path, audio, config, metadata, progress=progress)
    hours = len(audio) / frontend.sample_rate / 3600
    report = {"model": str(model_path), "stream": str(wav), "labels": str(label_path),
              **({"labels_not_keywords": not_keywords} if not_keywords else {}),
              **evaluate(times, scores, labels_list, occurrences, hours, config, target_fa_per_hour,
                         thresholds=thresholds, per_keyword=per_keyword)}
    if pieces_path(label_path).is_file():
        pieces = read_labels(pieces_path(label_path))
        found = {point: false_accept_sources(times, scores, labels_list, occurrences, pieces, entry["threshold"],
                                      config.refractory_ms / 1000.0)
                 for point, entry in report["frr_at_fa_per_hour"].items() if entry["threshold"] is not None}
        report["false_accepts_by_kind"] = {point: tally(k for _, k in pairs) for point, pairs in found.items()}
        report["false_accepts_by_keyword"] = {point: tally(k for k, _ in pairs) for point, pairs in found.items()}
    out_dir = Path(out_dir)
    stem = Path(model_path).stem
    report["det_png"] = str(out_dir / f"{stem}.det.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_det({stem: report["det"]}, report["det_png"], f"{stem}: {duration_text(hours)} stream")
    write_json_atomic(out_dir / f"{stem}.stream.json", report)
    return report


def write_thresholds(model_path, report: dict) -> None:
    """Put the chosen per-keyword thresholds and detector settings into the model's metadata."""
    from edgeasr.converters.metadata import embed_metadata

    model_path = Path(model_path).resolve()          # a link keeps pointing at the model it names
    metadata = read_metadata(model_path) or {}
    values = {k: v for k, v in metadata.items() if k not in ("format", "edgeasr_version")}
    values["detector"] = {**report["detector"], "thresholds": report["thresholds"],
                          "target_fa_per_hour": report["target_fa_per_hour"]}
    write_bytes_atomic(model_path, embed_metadata(model_path.read_bytes(), values))


def format_report(report: dict) -> str:
    lines = [f"{report['model']}: {duration_text(report['hours'])}, {report['keyword_occurrences']} keywords"]
    if report.get("labels_not_keywords"):
        lines.append(f"  not scored: {_lines(sum(report['labels_not_keywords'].values()))} of words that are "
                     f"not keywords ({counts_text(report['labels_not_keywords'])})")
    for point, entry in report["frr_at_fa_per_hour"].items():
        threshold = "none" if entry["threshold"] is None else threshold_text(entry["threshold"])
        lines.append(f"  FRR at <= {point} FA/h: {entry['frr']:.2%} (common threshold {threshold})")
    at = report["at_thresholds"]
    latency = at["latency_s"]
    chosen = {"given": "given (not chosen on this stream)",
              "common": f"one common threshold for {report['target_fa_per_hour']} FA/h"
              }.get(report.get("thresholds_rule"), f"per keyword for {report['target_fa_per_hour']} FA/h")
    lines.append(f"  thresholds {chosen}: FRR {at['frr']:.2%}, "
                 f"{at['fa_per_hour']:.2f} FA/h, latency after keyword end median "
                 f"{_seconds(latency['median'])}, p90 {_seconds(latency['p90'])}")
    lines.append("  thresholds: " + ", ".join(f"{k}={threshold_text(v)}" for k, v in report["thresholds"].items()))
    if report["hours"] * report["target_fa_per_hour"] < 1:
        lines.append(f"  note: one false accept on this {duration_text(report['hours'])} is {1 / report['hours']:.1f} "
                     f"FA/h: the stream is too short to resolve {report['target_fa_per_hour']} FA/h")
    if not report.get("target_reached", True):
        lines.append(f"  NOT REACHED: {report['target_fa_per_hour']} FA/h; these thresholds give "
                     f"{at['fa_per_hour']:.2f} FA/h on this stream")
    lines.append("  at those thresholds, per keyword (misses/occurrences, false accepts): " + ", ".join(
        f"{k} {e['misses']}/{e['occurrences']} {e['false_accepts']}" for k, e in at.get("keywords", {}).items()))
    for point, counts in report.get("false_accepts_by_kind", {}).items():
        by_keyword = report.get("false_accepts_by_keyword", {}).get(point, {})
        lines.append(f"  false accepts at the {point} FA/h threshold, by what the stream played: "
                     + (", ".join(f"{kind} {count}" for kind, count in counts.items()) or "none")
                     + ("; by keyword: " + counts_text(by_keyword) if by_keyword else ""))
    lines.append(f"  DET curve: {report['det_png']}")
    return "\n".join(lines)


def duration_text(hours: float) -> str:
    """4.00 h; a stream under a tenth of an hour in minutes (0.00 h said nothing)."""
    return f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 60:.1f} min"


def threshold_text(threshold: float) -> str:
    """A threshold with 3 decimals, or as many more as it takes to tell it from 1 (sharpened posteriors'
    thresholds sit at 0.9999 and above): 0.984, 0.99985."""
    decimals = 3
    while decimals < 8 and round(threshold, decimals) >= 1.0 > threshold:
        decimals += 1
    return f"{threshold:.{decimals + (decimals > 3)}f}"


def counts_text(counts: dict) -> str:
    """"stop 43, right 20, up 8": the counts largest first."""
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda item: -item[1]))


def _seconds(value) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"
