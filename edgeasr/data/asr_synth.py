"""A synthetic speech-recognition corpus from espeak-ng: digit strings, commands, short sentences.

    out_dir/
      audio/<speakerhash>/<k>.wav                   one folder per speaker, 16 kHz mono
      train.jsonl, validation.jsonl, test.jsonl     manifests (see manifest.py)
      synth_asr_config.json                         the config and the speakers of each split

Speakers are espeak voice+variant pairs chosen exactly as for the keyword corpus
(synth.choose_speakers): no speaker and no variant (timbre) is in two splits, so the test split
is held-out voices. Texts come from templates over a built-in word list of a few hundred words;
each speaker gets its own seeded texts. An utterance longer than `max_seconds` is redrawn, not
cropped (a cropped word would no longer match its transcript). Same config, same bytes.
"""
import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edgeasr.audio.io import write_wav
from edgeasr.data.espeak import Espeak
from edgeasr.data.manifest import Utterance, write_manifest
from edgeasr.data.synth import (SPLITS, Speaker, SynthConfig, _check_destination, _move_into_place,
                                _place_in_clip, _rng, _say, choose_speakers)
from edgeasr.errors import EdgeasrError
from edgeasr.files import write_json_atomic
from edgeasr.progress import progress_bar

MANIFEST_NAMES = {"training": "train.jsonl", "validation": "validation.jsonl", "testing": "test.jsonl"}
SILENCE_SECONDS = (0.05, 0.3)   # before and after the speech
# A text whose speech does not fit max_seconds (less the silence around it, up to 0.6 s) is redrawn.
# The shortest texts ("call anna", "go back home") take about 1 s at espeak's slower rates, so below
# MIN_SECONDS too few texts fit: measured over 2400 utterances of 300 voices, 2 s needed at most 10
# draws (81% the first), 1.5 s up to 35, and 1.2 s failed 5% of utterances even after 40 draws.
# Raising MAX_REDRAWS leaves every corpus that fitted within fewer draws byte for byte the same.
MIN_SECONDS = 2.0
MAX_REDRAWS = 50

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMBERS = ("ten", "twenty", "thirty", "forty", "fifty", "sixty", "hundred", "eleven", "twelve", "fifteen")
NAMES = ("anna", "david", "maria", "peter", "sarah", "james", "lucy", "thomas", "emma", "daniel",
         "olivia", "jack", "sophie", "henry", "grace", "oscar")
CITIES = ("london", "paris", "berlin", "tokyo", "boston", "madrid", "sydney", "chicago", "dublin", "rome")
ROOMS = ("kitchen", "bedroom", "bathroom", "garage", "garden", "office", "hallway", "basement", "living room",
         "dining room")
DEVICES = ("light", "lights", "lamp", "heater", "fan", "radio", "music", "television", "alarm", "oven",
           "speaker", "camera", "door", "window", "blinds", "washer")
SETTINGS = ("volume", "temperature", "brightness", "timer", "speed", "level")
ACTIONS = ("open", "close", "lock", "unlock", "start", "stop", "pause", "check", "clean", "show")
MOODS = ("jazz", "rock", "classical", "quiet", "happy", "relaxing", "loud", "country")
UNITS = ("minutes", "seconds", "hours", "degrees", "percent")
DETERMINERS = ("the", "a", "my", "our", "this", "that", "every", "some")
ADJECTIVES = ("big", "small", "red", "blue", "green", "old", "new", "warm", "cold", "dark", "bright", "quick",
              "slow", "happy", "tired", "young", "little", "heavy", "soft", "loud", "clean", "empty", "busy",
              "quiet", "yellow", "white", "black", "strong", "gentle", "lucky")
NOUNS = ("dog", "cat", "bird", "horse", "child", "man", "woman", "teacher", "doctor", "farmer", "boy", "girl",
         "car", "boat", "train", "plane", "house", "tree", "river", "road", "book", "letter", "table", "chair",
         "apple", "bread", "cake", "coffee", "water", "milk", "shop", "school", "park", "city", "mountain",
         "window", "garden", "friend", "family", "music", "phone", "song", "story", "ball", "box", "bag",
         "key", "hat", "coat", "shoe", "fish", "flower", "sun", "moon", "rain", "snow", "wind", "fire",
         "morning", "evening", "night", "week", "year")
VERBS_PAST = ("saw", "found", "took", "made", "liked", "wanted", "opened", "closed", "painted", "carried",
              "bought", "sold", "washed", "cooked", "watched", "helped", "followed", "lost", "kept", "moved",
              "pushed", "pulled", "called", "visited", "cleaned", "fixed", "read", "wrote", "heard", "held")
VERBS_PRESENT = ("runs", "walks", "sleeps", "sings", "waits", "works", "plays", "jumps", "swims", "reads",
                 "laughs", "talks", "smiles", "listens", "rests", "cries")
ADVERBS = ("slowly", "quickly", "today", "again", "outside", "inside", "early", "late", "often", "never",
           "always", "here", "there", "now", "soon", "together")
PREPOSITIONS = ("in", "on", "under", "near", "behind", "over", "with", "from", "into", "by")
WORDS_EXTRA = ("please", "turn", "switch", "set", "play", "call", "what", "is", "weather", "time", "it",
               "to", "of", "and", "up", "down", "off", "for", "at", "some", "next", "previous", "track",
               "remind", "me", "tomorrow", "tonight", "yes", "no", "ok", "cancel", "repeat", "send",
               "message", "number", "phone", "dial", "code", "the", "in", "all", "go", "back", "home")


def word_list() -> tuple:
    """The built-in vocabulary: every word any template can produce."""
    groups = (DIGITS, NUMBERS, NAMES, CITIES, DEVICES, SETTINGS, ACTIONS, MOODS, UNITS, DETERMINERS,
              ADJECTIVES, NOUNS, VERBS_PAST, VERBS_PRESENT, ADVERBS, PREPOSITIONS, WORDS_EXTRA)
    words = {w for group in groups for w in group} | {w for room in ROOMS for w in room.split()}
    return tuple(sorted(words))


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def digit_string(rng: np.random.Generator) -> str:
    return " ".join(_pick(rng, DIGITS) for _ in range(int(rng.integers(3, 8))))


def command(rng: np.random.Generator) -> str:
    p = lambda options: _pick(rng, options)  # noqa: E731
    templates = (
        lambda: f"turn {p(('on', 'off'))} the {p(ROOMS)} {p(DEVICES)}",
        lambda: f"switch {p(('on', 'off'))} the {p(DEVICES)}",
        lambda: f"{p(ACTIONS)} the {p(ROOMS)} {p(DEVICES)}",
        lambda: f"set the {p(SETTINGS)} to {p(DIGITS)} {p(UNITS)}",
        lambda: f"set the {p(SETTINGS)} to {p(NUMBERS)}",
        lambda: f"turn the {p(SETTINGS)} {p(('up', 'down'))}",
        lambda: f"play some {p(MOODS)} music",
        lambda: f"call {p(NAMES)}",
        lambda: f"send a message to {p(NAMES)}",
        lambda: f"what is the weather in {p(CITIES)}",
        lambda: f"what time is it in {p(CITIES)}",
        lambda: f"remind me to call {p(NAMES)} {p(('tomorrow', 'tonight'))}",
        lambda: f"play the {p(('next', 'previous'))} track",
        lambda: f"dial {digit_string(rng)}",
        lambda: f"{p(('yes', 'no', 'ok'))} {p(('please', 'cancel', 'repeat'))}",
        lambda: "go back home",
    )
    return _pick(rng, templates)()


def sentence(rng: np.random.Generator) -> str:
    p = lambda options: _pick(rng, options)  # noqa: E731
    templates = (
        lambda: f"{p(DETERMINERS)} {p(ADJECTIVES)} {p(NOUNS)} {p(VERBS_PRESENT)} {p(ADVERBS)}",
        lambda: f"the {p(NOUNS)} {p(VERBS_PAST)} {p(DETERMINERS)} {p(NOUNS)}",
        lambda: f"{p(NAMES)} {p(VERBS_PAST)} the {p(ADJECTIVES)} {p(NOUNS)}",
        lambda: f"the {p(NOUNS)} is {p(PREPOSITIONS)} the {p(NOUNS)}",
        lambda: f"{p(NAMES)} {p(VERBS_PRESENT)} {p(PREPOSITIONS)} the {p(NOUNS)}",
        lambda: f"{p(DETERMINERS)} {p(NOUNS)} {p(VERBS_PAST)} {p(ADVERBS)}",
    )
    return _pick(rng, templates)()


KINDS = {"digits": digit_string, "command": command, "sentence": sentence}


@dataclasses.dataclass
class AsrSynthConfig:
    speakers: int = 200                 # voice+variant pairs, split like the keyword corpus
    utterances_per_speaker: int = 50
    seed: int = 0
    validation_fraction: float = 0.1
    testing_fraction: float = 0.1
    sample_rate: int = 16000
    max_seconds: float = 4.0
    kind_weights: tuple = (0.25, 0.4, 0.35)  # digits, command, sentence

    def speaker_config(self) -> SynthConfig:
        """The keyword-corpus config that chooses the same kind of disjoint speakers."""
        return SynthConfig(speakers=self.speakers, seed=self.seed, validation_fraction=self.validation_fraction,
                           testing_fraction=self.testing_fraction, sample_rate=self.sample_rate)


def draw_text(rng: np.random.Generator, config: AsrSynthConfig) -> str:
    weights = np.asarray(config.kind_weights, np.float64)
    kind = list(KINDS)[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
    return KINDS[kind](rng)


def synthesize_asr_corpus(out_dir, config: Optional[AsrSynthConfig] = None, progress: bool = True,
                          overwrite: bool = False) -> dict:
    """Write the corpus to `out_dir` (built in a sibling temp folder, then renamed); returns a summary."""
    started = time.perf_counter()
    config = config or AsrSynthConfig()
    _check_config(config)
    out_dir = Path(out_dir)
    _check_destination(out_dir, overwrite, marker="synth_asr_config.json")
    espeak = Espeak()
    splits = choose_speakers(espeak, config.speaker_config())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    staging.chmod(0o755)
    try:
        manifests = _write_utterances(staging, espeak, splits, config, progress)
        for split, utterances in manifests.items():
            write_manifest(staging / MANIFEST_NAMES[split], utterances)
        write_json_atomic(staging / "synth_asr_config.json", {
            "config": dataclasses.asdict(config),
            "speakers": {split: [s.name for s in splits[split]] for split in SPLITS},
            "words": list(word_list()),
        })
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "out_dir": str(out_dir),
        "utterances": {split: len(u) for split, u in manifests.items()},
        "hours": {split: round(sum(x.duration for x in u) / 3600, 3) for split, u in manifests.items()},
        "speakers": {split: len(splits[split]) for split in SPLITS},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _check_config(config: AsrSynthConfig) -> None:
    if config.utterances_per_speaker < 1:
        raise EdgeasrError(f"utterances_per_speaker={config.utterances_per_speaker}: need 1 or more")
    if not (math.isfinite(config.max_seconds) and config.max_seconds >= MIN_SECONDS):
        raise EdgeasrError(f"max seconds {config.max_seconds}: need a finite number, at least {MIN_SECONDS:g} "
                           f"(shorter clips fit too few of the texts)")
    if len(config.kind_weights) != len(KINDS) or min(config.kind_weights) < 0 or sum(config.kind_weights) <= 0:
        raise EdgeasrError(f"kind_weights {config.kind_weights}: give {len(KINDS)} non-negative weights "
                           f"({', '.join(KINDS)})")


def _utterance(espeak: Espeak, speaker: Speaker, rng: np.random.Generator, config: AsrSynthConfig):
    """(text, audio) of one utterance no longer than max_seconds, silence before and after."""
    max_samples = int(config.max_seconds * config.sample_rate)
    silence = [int(rng.uniform(*SILENCE_SECONDS) * config.sample_rate) for _ in range(2)]
    for _ in range(MAX_REDRAWS):
        text = draw_text(rng, config)
        speech = _say(espeak, text, speaker, rng, config.sample_rate, 10 * max_samples)
        if 0 < len(speech) <= max_samples - sum(silence):
            return text, _place_in_clip(speech, len(speech) + sum(silence), rng)
    raise EdgeasrError(f"speaker {speaker.name}: no text fitted in {config.max_seconds} s after "
                       f"{MAX_REDRAWS} draws; raise max seconds (--max-seconds)")


def _write_utterances(root: Path, espeak: Espeak, splits: Dict[str, List[Speaker]], config: AsrSynthConfig,
                      progress: bool) -> Dict[str, List[Utterance]]:
    manifests = {split: [] for split in SPLITS}
    total = config.utterances_per_speaker * sum(len(s) for s in splits.values())
    with progress_bar(total=total, desc="synthesising utterances", unit="utt", enabled=progress) as bar:
        for split in SPLITS:
            for speaker in splits[split]:
                espeak.reset(seed=int(_rng(config.seed, speaker.name).integers(2**31)))
                folder = root / "audio" / speaker.hash
                folder.mkdir(parents=True)
                for index in range(config.utterances_per_speaker):
                    rng = _rng(config.seed, "asr", speaker.name, index)
                    text, audio = _utterance(espeak, speaker, rng, config)
                    path = folder / f"{index}.wav"
                    write_wav(path, audio, config.sample_rate)
                    manifests[split].append(Utterance(path, text, len(audio) / config.sample_rate, speaker.name))
                    bar.update()
    return manifests
