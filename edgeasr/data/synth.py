"""A synthetic keyword-spotting dataset from espeak-ng, in the Google Speech Commands v2 layout.

    out_dir/
      yes/<speakerhash>_nohash_<k>.wav ...     one folder per keyword and per unknown word
      sentences/<speakerhash>_nohash_<k>.wav   with sentence_windows > 0: 1 s of connected speech
      _background_noise_/{white,pink,brown}_noise.wav, babble.wav
      validation_list.txt, testing_list.txt    relative paths; training is everything else
      synth_config.json                        the config and the speakers of each split

A speaker is an espeak voice (an accent) plus a variant (a timbre), e.g. "en-us+f3". Speakers,
not clips, are split, and each variant belongs to one split only, so no timbre heard in
training is heard in validation or testing. Every random choice comes from a generator seeded
by (seed, speaker, word, take), and espeak is reset before each speaker (see espeak.py), so the
same config writes byte-identical files.

Connected speech (`sentence_windows`): an always-on detector hears whole sentences, which clips of
single words never show a model; on the 4 h test stream nearly all of DS-CNN-S's false accepts
fired during sentences (`eval-stream` counts them by what the stream played). Each window is one
second cut at random from a generated sentence without keywords (edgeasr.data.asr_synth's
grammar); the folder is one more unknown "word". Measured on DS-CNN-S: 15 windows per speaker
with `DataConfig.unknown_percentage` 30 lowered its false rejects at 1 false accept per hour from
19% to 11% (float) and 23% to 16% (4-bit), means of 5 seeds of an older two-stage recipe; either
change alone did not. With the current one-stage recipe, fine-tuning seeds 0-3 on the default
test stream (docs/stream_errors.md against docs/sentence_windows/stream_errors.md): float 18.9% ->
10.9%, w4a8-tanh 19.9% -> 14.9%. The 4-bit model beats the default float one, but its gap to its
own float grows from +1.0 to +4.0 points: at float's threshold it fires 1.8 times an hour, mostly
on sentences.
"""
import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soxr

from edgeasr.audio.io import write_wav
from edgeasr.data.espeak import Espeak
from edgeasr.data.speech_commands import BACKGROUND_DIR, SPEECH_COMMANDS_KEYWORDS
from edgeasr.errors import EdgeasrError
from edgeasr.files import write_json_atomic
from edgeasr.progress import progress_bar

DEFAULT_KEYWORDS = SPEECH_COMMANDS_KEYWORDS
DEFAULT_UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "five", "forward", "follow", "learn",
)
# Words that sound like a Speech Commands keyword without being one (no homophone: not "know" for
# "no", not "write" for "right"): `SynthConfig(unknown_words=unknown_words(near_words=True))`,
# `synth-kws --near-words`. An always-on detector's false accepts on connected speech are mostly
# "stop" and "up" heard in words like these (docs/stream_errors.md).
NEAR_WORDS = (
    "top", "step", "shop", "spot", "stock", "cup", "pup", "us", "goat", "goal", "note", "snow",
    "yet", "less", "guess", "lift", "loft", "light", "ride", "white", "town", "gown", "gone", "john",
    "cough", "soft",
)


def unknown_words(near_words: bool = False, keywords=()) -> Tuple[str, ...]:
    """The default unknown words, with NEAR_WORDS after them when asked (`--near-words`), less
    the chosen `keywords` (a digit set `zero,one,two` takes 'zero' out of the unknown words)."""
    return tuple(word for word in DEFAULT_UNKNOWN_WORDS + (NEAR_WORDS if near_words else ())
                 if word not in keywords)


# Babble phrases contain no default keyword; `babble_phrases` leaves out those with a chosen one,
# so background noise never carries a keyword.
BABBLE_PHRASES = (
    "what time is it", "please call me later", "the weather is nice today", "I think so",
    "maybe tomorrow", "that sounds good", "how are you", "thank you very much", "see you soon",
    "where is the station", "let me check", "it is raining again", "bird", "house", "happy",
    "seven", "visual", "learn", "forward", "wow",
)

SPLITS = ("training", "validation", "testing")
RATE_WPM = (130, 230)
PITCH = (25, 75)
PITCH_RANGE = (30, 80)
PEAK_LEVEL = (0.3, 0.9)
TRIM_THRESHOLD = 0.005  # of the take's peak, about -46 dB
TRIM_MARGIN_SECONDS = 0.01
FASTER_RETRIES = 2  # a take longer than the clip is said up to this many times faster, then cropped
NOISE_PEAK = 0.5
# 'en-shaw' is for the Shavian alphabet; on Latin text it gives exactly the samples of 'en'.
DUPLICATE_VOICES = ("en-shaw",)
BABBLE_LAYERS = 6
SENTENCES_FOLDER = "sentences"
SENTENCE_MAX_SECONDS = 6.0


@dataclasses.dataclass
class SynthConfig:
    words: Tuple[str, ...] = DEFAULT_KEYWORDS
    unknown_words: Tuple[str, ...] = DEFAULT_UNKNOWN_WORDS
    speakers: int = 120
    repeats: int = 2  # takes of each keyword per speaker; unknown words get one take each
    seed: int = 0
    validation_fraction: float = 0.1
    testing_fraction: float = 0.1
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    noise_seconds: float = 60.0
    sentence_windows: int = 0  # per speaker: 1 s windows of keyword-free sentences, as `_unknown_`

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


@dataclasses.dataclass(frozen=True)
class Speaker:
    voice: str
    variant: str

    @property
    def name(self) -> str:
        return f"{self.voice}+{self.variant}"

    @property
    def hash(self) -> str:
        """Stable 8 hex digits, the first part of a Speech Commands file name."""
        return hashlib.sha1(self.name.encode()).hexdigest()[:8]


def synthesize_kws_dataset(out_dir: os.PathLike, config: Optional[SynthConfig] = None,
                           progress: bool = True, overwrite: bool = False) -> dict:
    """Write the dataset to `out_dir` (built in a sibling temp folder, then renamed); returns a summary."""
    started = time.perf_counter()
    config = SynthConfig() if config is None else config
    out_dir = Path(out_dir)
    _check_config(config)
    _check_destination(out_dir, overwrite)
    espeak = Espeak()
    splits = choose_speakers(espeak, config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        clips = _write_clips(staging, espeak, splits, config, progress)
        _write_lists(staging, clips)
        _write_noise(staging / BACKGROUND_DIR, espeak, splits["training"], config)
        _write_config(staging, splits, config)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _summary(out_dir, clips, splits, time.perf_counter() - started)


# ---- config and destination ---------------------------------------------------------------

def _check_config(config: SynthConfig) -> None:
    words = tuple(config.words) + tuple(config.unknown_words)
    if not config.words:
        raise EdgeasrError("SynthConfig.words: give at least one keyword")
    for word in words:
        if not re.fullmatch(r"[a-z][a-z0-9']*", word):
            raise EdgeasrError(f"SynthConfig: word {word!r} must be lower-case letters (a folder name)")
    if SENTENCES_FOLDER in words:
        raise EdgeasrError(f"SynthConfig: {SENTENCES_FOLDER!r} names the connected-speech folder; not a word")
    if config.sentence_windows < 0:
        raise EdgeasrError(f"SynthConfig.sentence_windows={config.sentence_windows}: need 0 or more")
    if len(set(words)) != len(words):
        twice = sorted({word for word in words if words.count(word) > 1})
        raise EdgeasrError(f"SynthConfig: {', '.join(twice)}: repeated, or both a keyword and an unknown word")
    if config.speakers < 3:
        raise EdgeasrError(f"SynthConfig.speakers={config.speakers}: need 3 (one per split) or more")
    if config.repeats < 1:
        raise EdgeasrError(f"SynthConfig.repeats={config.repeats}: need 1 or more")
    fractions = (config.validation_fraction, config.testing_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
        raise EdgeasrError(f"SynthConfig: validation/testing fractions {fractions} must be >= 0, sum < 1")
    if config.sample_rate < 8000 or config.clip_seconds <= 0 or config.noise_seconds <= 0:
        raise EdgeasrError("SynthConfig: sample_rate >= 8000, clip_seconds > 0, noise_seconds > 0")


def _check_destination(out_dir: Path, overwrite: bool, marker: str = "synth_config.json") -> None:
    """OUT must be new, empty, or (with overwrite) a dataset this synthesiser wrote, which holds
    `marker`: --overwrite on any other folder (a run, '.', a home) would delete it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeasrError(f"{out_dir}: exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise EdgeasrError(f"{out_dir}: folder exists and is not empty (--overwrite, or overwrite=True, replaces it)")
    if not (out_dir / marker).is_file():
        raise EdgeasrError(f"{out_dir}: not a dataset this command wrote (no {marker}); --overwrite replaces only "
                           f"those, choose another folder")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Swap the finished folder in; an old one is moved aside first and deleted last."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old / "data")
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- speakers -----------------------------------------------------------------------------

def _rng(*keys) -> np.random.Generator:
    """A generator for one purpose: seeded by ints and strings (strings by CRC32, stable across runs)."""
    entropy = [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(entropy)


def speakers_per_split(config: SynthConfig) -> Dict[str, int]:
    """How many speakers each split gets; validation and testing get at least one."""
    n_validation = max(1, int(round(config.speakers * config.validation_fraction)))
    n_testing = max(1, int(round(config.speakers * config.testing_fraction)))
    n_training = config.speakers - n_validation - n_testing
    if n_training < 1:
        raise EdgeasrError(f"SynthConfig: {config.speakers} speakers leave none for training; add speakers")
    return {"training": n_training, "validation": n_validation, "testing": n_testing}


def _variants_per_split(variants: Sequence[str], n_voices: int, counts: Dict[str, int],
                        config: SynthConfig) -> Dict[str, List[str]]:
    """Share the variants (the timbres) out between splits, so no timbre is in two splits."""
    groups, start = {}, 0
    for split, fraction in (("validation", config.validation_fraction), ("testing", config.testing_fraction)):
        size = max(1, -(-counts[split] // n_voices), int(round(fraction * len(variants))))
        groups[split] = list(variants[start:start + size])
        start += size
    groups["training"] = list(variants[start:])
    for split, group in groups.items():
        if len(group) * n_voices < counts[split]:
            raise EdgeasrError(f"SynthConfig.speakers={config.speakers}: espeak has too few voice+variant "
                               f"pairs ({len(variants)} variants x {n_voices} voices) for {counts[split]} "
                               f"{split} speakers")
    return groups


def choose_speakers(espeak: Espeak, config: SynthConfig) -> Dict[str, List[Speaker]]:
    """Seeded voice+variant speakers per split: no speaker, and no variant, in two splits."""
    voices = [v for v in espeak.english_voices() if v not in DUPLICATE_VOICES]
    variants = [espeak.variants()[i] for i in _rng(config.seed, "variants").permutation(len(espeak.variants()))]
    counts = speakers_per_split(config)
    groups = _variants_per_split(variants, len(voices), counts, config)
    splits, hashes = {}, set()
    for split in SPLITS:
        pool = [Speaker(voice, variant) for variant in groups[split] for voice in voices]
        splits[split] = []
        for index in _rng(config.seed, "speakers", split).permutation(len(pool)):
            if len(splits[split]) == counts[split]:
                break
            if pool[index].hash not in hashes:  # file names must not collide
                splits[split].append(pool[index])
                hashes.add(pool[index].hash)
    return splits


# ---- one take ------------------------------------------------------------------------------

def _to_float(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    samples = audio.astype(np.float32) / 32768.0
    return soxr.resample(samples, from_rate, to_rate).astype(np.float32)


def _trim(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing silence, keeping a short margin around the speech."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    loud = np.nonzero(np.abs(audio) > peak * TRIM_THRESHOLD)[0] if peak > 0 else []
    if len(loud) == 0:
        return audio[:0]
    margin = int(TRIM_MARGIN_SECONDS * sample_rate)
    return audio[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def _say(espeak: Espeak, text: str, speaker: Speaker, rng: np.random.Generator,
         sample_rate: int, max_samples: int) -> np.ndarray:
    """Synthesise `text` at a random rate and pitch, trimmed; faster retries if it is too long."""
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    pitch_range = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    for _ in range(FASTER_RETRIES + 1):
        raw = espeak.synthesize(text, speaker.voice, speaker.variant, rate, pitch, pitch_range)
        speech = _trim(_to_float(raw, espeak.sample_rate, sample_rate), sample_rate)
        if len(speech) <= max_samples:
            return speech
        rate = min(450, int(rate * 1.4))
    return speech[:max_samples]


def _place_in_clip(speech: np.ndarray, clip_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Put the speech at a random offset in a silent clip, scaled to a random peak level."""
    clip = np.zeros(clip_samples, dtype=np.float32)
    if speech.size == 0:
        return clip
    offset = int(rng.integers(0, clip_samples - len(speech) + 1))
    level = float(rng.uniform(*PEAK_LEVEL))
    clip[offset:offset + len(speech)] = speech * (level / float(np.max(np.abs(speech))))
    return clip


def _takes(config: SynthConfig) -> List[Tuple[str, int]]:
    """(word, take) of one speaker, connected speech last."""
    return ([(w, k) for w in config.words for k in range(config.repeats)] + [(w, 0) for w in config.unknown_words]
            + [(SENTENCES_FOLDER, k) for k in range(config.sentence_windows)])


def keyword_free_sentence(rng: np.random.Generator, keywords: Sequence[str]) -> str:
    """A generated sentence with no keyword among its words."""
    from edgeasr.data.asr_synth import sentence   # asr_synth builds on this module

    while True:
        text = sentence(rng)
        if not set(text.split()) & set(keywords):
            return text


def _window_of(espeak: Espeak, speaker: Speaker, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """One clip-long stretch at a random place in a spoken sentence."""
    text = keyword_free_sentence(rng, config.words)
    speech = _say(espeak, text, speaker, rng, config.sample_rate, int(SENTENCE_MAX_SECONDS * config.sample_rate))
    start = int(rng.integers(0, max(1, len(speech) - config.clip_samples + 1)))
    return speech[start:start + config.clip_samples]


def _write_clips(root: Path, espeak: Espeak, splits: Dict[str, List[Speaker]], config: SynthConfig,
                 progress: bool) -> Dict[str, List[str]]:
    """Every take of every speaker; returns the relative clip paths of each split."""
    for word in dict.fromkeys(word for word, _ in _takes(config)):
        (root / word).mkdir()
    total = sum(len(_takes(config)) * len(speakers) for speakers in splits.values())
    clips = {split: [] for split in SPLITS}
    with progress_bar(total=total, desc="synthesising takes", unit="take", enabled=progress) as bar:
        for split in SPLITS:
            for speaker in splits[split]:
                espeak.reset(seed=int(_rng(config.seed, speaker.name).integers(2**31)))
                for word, take in _takes(config):
                    rng = _rng(config.seed, speaker.name, word, take)
                    speech = (_window_of(espeak, speaker, rng, config) if word == SENTENCES_FOLDER
                              else _say(espeak, word, speaker, rng, config.sample_rate, config.clip_samples))
                    relative = f"{word}/{speaker.hash}_nohash_{take}.wav"
                    write_wav(root / relative, _place_in_clip(speech, config.clip_samples, rng),
                               config.sample_rate)
                    clips[split].append(relative)
                    bar.update()
    return clips


def _write_lists(root: Path, clips: Dict[str, List[str]]) -> None:
    for split in ("validation", "testing"):
        (root / f"{split}_list.txt").write_text("".join(f"{p}\n" for p in sorted(clips[split])))


def _write_config(root: Path, splits: Dict[str, List[Speaker]], config: SynthConfig) -> None:
    described = {
        "config": dataclasses.asdict(config),
        "speakers": {split: [s.name for s in splits[split]] for split in SPLITS},
        "speaker_hashes": {s.hash: s.name for speakers in splits.values() for s in speakers},
    }
    write_json_atomic(root / "synth_config.json", described)


# ---- background noise ----------------------------------------------------------------------

def colored_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown), peak 1."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    frequencies = np.fft.rfftfreq(n_samples)
    frequencies[0] = frequencies[1]  # the DC bin is zeroed below; avoid dividing by zero
    spectrum *= frequencies ** (-exponent / 2.0)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n_samples)
    return (noise / np.max(np.abs(noise))).astype(np.float32)


def babble_phrases(keywords) -> tuple:
    """BABBLE_PHRASES without those that say one of `keywords` (--words seven,learn: 'seven', 'learn')."""
    return tuple(phrase for phrase in BABBLE_PHRASES if not set(phrase.lower().split()) & set(keywords))


def babble(espeak: Espeak, speakers: Sequence[Speaker], config: SynthConfig) -> np.ndarray:
    """Several layers of phrases from random training speakers, overlapping, peak 1."""
    phrases = babble_phrases(config.words)
    n_samples = int(round(config.noise_seconds * config.sample_rate))
    mix = np.zeros(n_samples, dtype=np.float32)
    for layer in range(BABBLE_LAYERS):
        rng = _rng(config.seed, "babble", layer)
        espeak.reset(seed=int(rng.integers(2**31)))
        position = int(rng.integers(0, config.sample_rate))
        while position < n_samples:
            speaker = speakers[int(rng.integers(len(speakers)))]
            phrase = phrases[int(rng.integers(len(phrases)))]
            speech = _say(espeak, phrase, speaker, rng, config.sample_rate, n_samples)
            speech = speech[: n_samples - position]
            if speech.size:
                gain = float(rng.uniform(0.3, 1.0)) / float(np.max(np.abs(speech)) or 1.0)
                mix[position:position + len(speech)] += speech * gain
            position += len(speech) + int(rng.integers(0, config.sample_rate // 4))
    return mix / max(float(np.max(np.abs(mix))), 1e-9)


def _write_noise(folder: Path, espeak: Espeak, training: Sequence[Speaker], config: SynthConfig) -> None:
    folder.mkdir()
    n_samples = int(round(config.noise_seconds * config.sample_rate))
    for name, exponent in (("white_noise", 0.0), ("pink_noise", 1.0), ("brown_noise", 2.0)):
        noise = colored_noise(n_samples, exponent, _rng(config.seed, "noise", name))
        write_wav(folder / f"{name}.wav", noise * NOISE_PEAK, config.sample_rate)
    write_wav(folder / "babble.wav", babble(espeak, training, config) * NOISE_PEAK, config.sample_rate)


# ---- summary ------------------------------------------------------------------------------

def _summary(out_dir: Path, clips: Dict[str, List[str]], splits: Dict[str, List[Speaker]],
             seconds: float) -> dict:
    per_word: Dict[str, int] = {}
    for paths in clips.values():
        for path in paths:
            word = path.split("/", 1)[0]
            per_word[word] = per_word.get(word, 0) + 1
    return {
        "out_dir": str(out_dir),
        "clips": {split: len(clips[split]) for split in SPLITS},
        "clips_per_word": per_word,
        "speakers": {split: len(splits[split]) for split in SPLITS},
        "seconds": round(seconds, 2),
    }
