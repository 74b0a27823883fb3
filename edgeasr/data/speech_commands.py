"""Datasets in the Google Speech Commands v2 layout (the real one or the synthesiser's).

    ROOT/<word>/<speaker>_nohash_<n>.wav    one folder per word
    ROOT/validation_list.txt                relative paths of validation clips
    ROOT/testing_list.txt                   relative paths of test clips (the rest is training)
    ROOT/_background_noise_/*.wav           long noise recordings

Labels are `_silence_`, `_unknown_`, then the keywords. Words that are not keywords become
`_unknown_`, sampled down to `unknown_percentage` of the keyword clips; `_silence_` clips are
cut from the background noise. Files that cannot be used are skipped and counted, files at
another sample rate are resampled and counted: a bad file never stops a run.
"""
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from edgeasr.audio.io import AudioError, OutOfScaleAudio, load_audio, load_int16, to_int16
from edgeasr.errors import EdgeasrError
from edgeasr.progress import progress_bar

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND_DIR = "_background_noise_"
SPLITS = ("train", "validation", "test")
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")      # of clips, in any case (.WAV); libsndfile reads them
SPEECH_COMMANDS_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


@dataclass(frozen=True)
class DataConfig:
    keywords: tuple = SPEECH_COMMANDS_KEYWORDS
    silence_percentage: float = 10.0
    unknown_percentage: float = 10.0
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    seed: int = 0

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def labels(self) -> list:
        return [SILENCE, UNKNOWN, *self.keywords]


@dataclass
class LoadReport:
    """What happened to the files of one split: used, resampled, skipped (by reason)."""

    used: int = 0
    resampled: int = 0
    skipped: dict = field(default_factory=dict)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(str(path))

    def summary(self) -> str:
        parts = [f"{self.used} clips", f"{self.resampled} resampled"]
        parts += [f"{len(paths)} skipped ({reason})" for reason, paths in sorted(self.skipped.items())]
        return ", ".join(parts)


@dataclass
class Split:
    """Clips of one split as int16 samples (N, clip_samples) and label indices (N,)."""

    waves: np.ndarray
    labels: np.ndarray
    report: LoadReport


def check_layout(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise EdgeasrError(f"{root}: dataset folder not found")
    if not any(p.is_dir() and not p.name.startswith(("_", ".")) for p in root.iterdir()):
        raise EdgeasrError(f"{root}: no word folders; expected the Speech Commands layout (ROOT/<word>/*.wav)")
    return root


def index_files(root: Path, config: DataConfig) -> dict:
    """{split: [(relative path, label index)]} with `_unknown_` sampled down, before loading."""
    root = check_layout(root)
    listed = {split: read_list(root / name) for split, name in SPLIT_LISTS.items()}
    audio = [path for path in word_folder_files(root) if path.suffix.lower() in AUDIO_SUFFIXES]
    _check_listed_files_exist(root, listed, {f"{path.parent.name}/{path.name}" for path in audio}, config.keywords)
    keyword_index = {word: i for i, word in enumerate(config.labels)}
    files = {split: {"keyword": [], "unknown": []} for split in SPLITS}
    for path in audio:
        word = path.parent.name
        if word.startswith("_"):
            continue
        relative = f"{word}/{path.name}"
        split = next((s for s, names in listed.items() if relative in names), "train")
        kind = "keyword" if word in keyword_index else "unknown"
        files[split][kind].append((relative, keyword_index.get(word, keyword_index[UNKNOWN])))
    rng = np.random.default_rng(config.seed)
    return {split: _with_sampled_unknown(parts, config, rng) for split, parts in files.items()}


def read_list(path: Path) -> set:
    """The relative paths a split list names, one per line (a word folder may hold spaces); './'
    prefixes and Windows separators are read as the same paths."""
    if not path.is_file():
        return set()
    try:
        text = path.read_text(encoding="utf-8-sig")          # a BOM is not part of the first entry
    except UnicodeDecodeError:
        raise EdgeasrError(f"{path}: not UTF-8 text (PowerShell's '>' writes UTF-16); save it as UTF-8") from None
    entries = (line.strip().replace("\\", "/") for line in text.splitlines())
    return {entry[2:] if entry.startswith("./") else entry for entry in entries if entry}


def _check_listed_files_exist(root: Path, listed: dict, present: set, keywords) -> None:
    """A listed clip that is not there is an error: the clip the list meant would otherwise train
    instead of being held out (a renamed folder moved its test clips into training). Entries of a
    word whose folder is gone altogether are left out (a copy without the words it does not use),
    unless the word is a keyword."""
    for split, names in listed.items():
        missing = sorted(name for name in names - present
                         if (root / name).parent.is_dir() or name.split("/", 1)[0] in keywords)
        if missing:
            raise EdgeasrError(f"{root / SPLIT_LISTS[split]}: {len(missing)} of its {len(names)} entries name no "
                               f"audio file under {root} (e.g. {', '.join(missing[:3])}); fix the list or the "
                               f"folders: its clips would otherwise be trained on")


def _with_sampled_unknown(parts: dict, config: DataConfig, rng) -> list:
    keywords, unknown = parts["keyword"], parts["unknown"]
    wanted = min(len(unknown), math.ceil(len(keywords) * config.unknown_percentage / 100))
    chosen = sorted(rng.choice(len(unknown), size=wanted, replace=False)) if wanted else []
    return keywords + [unknown[i] for i in chosen]


def load_background_noise(root: Path, sample_rate: int) -> list:
    """Each usable noise recording as float32; unreadable ones are left out."""
    noise = []
    for path in sorted(p for p in (Path(root) / BACKGROUND_DIR).glob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            noise.append(load_audio(path, sample_rate))
        except AudioError:
            continue
    return noise


def load_split(root: Path, config: DataConfig, split: str, progress: bool = True) -> Split:
    """Load one split into memory, with `_silence_` clips cut from the background noise."""
    if split not in SPLITS:
        raise EdgeasrError(f"unknown split {split!r}; known: {list(SPLITS)}")
    root = Path(root)
    entries = index_files(root, config)[split]
    report = LoadReport()
    if split == "train":                    # files no list names train, so other formats are counted there
        for path in other_files(root):
            report.skip(path, f"not {'/'.join(s[1:] for s in AUDIO_SUFFIXES)}")
    waves, labels = [], []
    for relative, label in progress_bar(entries, desc=f"loading {split}", unit="clip", enabled=progress):
        clip = _load_clip(root / relative, config, report)
        if clip is not None:
            waves.append(clip)
            labels.append(label)
    silence = _silence_clips(root, config, split, count=math.ceil(len(entries) * config.silence_percentage / 100))
    waves.extend(silence)
    labels.extend([config.labels.index(SILENCE)] * len(silence))
    report.used = len(waves)
    return Split(np.stack(waves) if waves else np.zeros((0, config.clip_samples), np.int16),
                 np.asarray(labels, dtype=np.int32), report)


def other_files(root: Path) -> list:
    """Files in word folders that are not clips edgeasr reads (.m4a, .opus, notes); hidden ones aside."""
    return [path for path in word_folder_files(root)
            if not path.parent.name.startswith("_") and path.suffix.lower() not in AUDIO_SUFFIXES]


def word_folder_files(root: Path) -> list:
    """The files one level down (word folders and _background_noise_), sorted; hidden ones aside."""
    return sorted(path for path in Path(root).glob("*/*") if path.is_file() and not hidden(path))


def hidden(path: Path) -> bool:
    """A file or word folder whose name starts with '.' (.git, .Trash-1000, macOS '._' files): not data."""
    return path.name.startswith(".") or path.parent.name.startswith(".")


def _load_clip(path: Path, config: DataConfig, report: LoadReport):
    try:
        info = soundfile.info(str(path))
        if info.frames == 0:
            report.skip(path, "empty")
            return None
        samples = load_int16(path, config.sample_rate)
    except OutOfScaleAudio:
        report.skip(path, "float samples beyond [-2, 2]")
        return None
    except (AudioError, RuntimeError, soundfile.LibsndfileError):
        report.skip(path, "unreadable")
        return None
    if info.samplerate != config.sample_rate:
        report.resampled += 1
    return fit_length(samples, config.clip_samples)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or crop the end, as Speech Commands' own loaders do."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def _silence_clips(root: Path, config: DataConfig, split: str, count: int) -> list:
    """Random 1 s cuts of background noise at a random level; a tenth are pure digital silence."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    noise = [n for n in load_background_noise(root, config.sample_rate) if len(n) >= config.clip_samples]
    clips = []
    for i in range(count):
        if not noise or i % 10 == 0:
            clips.append(np.zeros(config.clip_samples, np.int16))
            continue
        source = noise[rng.integers(len(noise))]
        start = rng.integers(len(source) - config.clip_samples + 1)
        level = rng.uniform(0.0, 1.0)
        clips.append(to_int16(source[start:start + config.clip_samples] * level))
    return clips


def label_counts(split: Split, config: DataConfig) -> dict:
    counts = Counter(split.labels.tolist())
    return {name: counts.get(i, 0) for i, name in enumerate(config.labels)}
