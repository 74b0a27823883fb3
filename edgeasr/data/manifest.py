"""Speech-recognition manifests: one JSON object per line, {"audio", "text", "duration"} (+ "speaker").

`audio` is relative to the manifest's folder when the file lies under it, else absolute, so a
synthetic corpus can be moved as a whole. The same format is written for a LibriSpeech-layout
folder (`librispeech_manifest`), so real data goes through the same pipeline as synthetic data.

    LibriSpeech layout:  DIR/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
                         DIR/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac
"""
import glob
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

from edgeasr.audio.io import AudioError, audio_seconds
from edgeasr.data.tokenizer import drops_spoken_text, normalize_text
from edgeasr.errors import EdgeasrError
from edgeasr.files import atomic_output

AUDIO_SUFFIXES = (".flac", ".wav")
# why librispeech_manifest leaves an utterance out (counted in its summary as skipped_<reason>)
SKIP_REASONS = ("too_long", "no_text", "no_samples", "unreadable")


@dataclass(frozen=True)
class Utterance:
    audio: Path       # absolute once read
    text: str
    duration: float   # seconds
    speaker: str = ""


def write_manifest(path: os.PathLike, utterances: Iterable[Utterance], force: bool = True) -> Path:
    """JSONL, written atomically; audio paths under the manifest's folder are stored relative to it.
    force=False refuses an existing file."""
    path = Path(path)
    root = path.parent.resolve()
    lines = []
    for utterance in utterances:
        audio = Path(utterance.audio).resolve()
        stored = audio.relative_to(root).as_posix() if audio.is_relative_to(root) else str(audio)
        entry = {"audio": stored, "text": utterance.text, "duration": round(float(utterance.duration), 4)}
        if utterance.speaker:
            entry["speaker"] = utterance.speaker
        lines.append(json.dumps(entry, sort_keys=True))
    with atomic_output(path, force=force) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))
    return path


def read_manifest(path: os.PathLike, check_audio: bool = True) -> List[Utterance]:
    """The utterances of a manifest, audio paths made absolute; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EdgeasrError(f"{path}: no such manifest")
    content = _utf8_text(path, "a manifest is JSON lines (audio, text, duration), as `edgeasr data manifest` writes")
    utterances = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            audio = Path(entry["audio"])
            utterance = Utterance(audio if audio.is_absolute() else path.parent / audio, str(entry["text"]),
                                  float(entry["duration"]), str(entry.get("speaker", "")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EdgeasrError(f"{path}:{number}: not a manifest line with audio, text and duration ({exc})") from exc
        if check_audio and not utterance.audio.is_file():
            raise EdgeasrError(f"{path}:{number}: audio file {utterance.audio} does not exist")
        utterances.append(utterance)
    if not utterances:
        raise EdgeasrError(f"{path}: the manifest is empty")
    return utterances


def librispeech_manifest(root: os.PathLike, output: os.PathLike, max_seconds: Optional[float] = None,
                         force: bool = False) -> dict:
    """Write the manifest of a LibriSpeech-layout folder (text lower-cased, runs of whitespace made
    one space); returns a summary. Lines with no spellable text, audio that cannot be read or holds
    no samples, and audio longer than `max_seconds` are left out and counted (SKIP_REASONS), and so
    are audio files the manifest does not use (`unused_audio`: no line names them, or they are a second
    file of one utterance, such as X.wav beside X.flac); texts that lose digits or letters outside
    a-z in training are counted (`texts_losing_words`); a line whose audio file is missing, an id
    listed twice, or a transcript that is not UTF-8, is an error. An existing `output` (another
    manifest, or a transcript given by mistake) is replaced only with force."""
    root, output = Path(root), Path(output)
    if output.exists() and not force:
        raise EdgeasrError(f"{output} already exists; pass --force to overwrite it")
    if output.resolve().is_relative_to(root.resolve()) and (
            output.name.endswith(".trans.txt") or output.suffix.lower() in AUDIO_SUFFIXES):
        raise EdgeasrError(f"{output}: a transcript or audio file of the tree being read; write the manifest "
                           f"elsewhere")
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise EdgeasrError(f"max_seconds={max_seconds}: need a finite number of seconds above 0")
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise EdgeasrError(f"{root}: no *.trans.txt files; expected the LibriSpeech layout "
                           f"SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt")
    utterances, skipped, unused, listed_in = [], {reason: 0 for reason in SKIP_REASONS}, 0, {}
    for transcript in transcripts:
        lines = _transcript_lines(transcript)
        for utterance_id, text in lines:
            first = listed_in.setdefault((transcript.parent, utterance_id), transcript)
            if first != transcript:     # two transcripts of one folder: one clip, two references
                raise EdgeasrError(f"{transcript}: utterance {utterance_id} is listed in {first.name} too; keep "
                                   f"one line per utterance")
            utterance, reason = _librispeech_utterance(transcript.parent, utterance_id, text, max_seconds)
            if reason:
                skipped[reason] += 1
            else:
                utterances.append(utterance)
        unused += _unused_audio(transcript.parent, {utterance_id for utterance_id, _ in lines})
    if not utterances:
        raise EdgeasrError(f"{root}: no usable utterance ({_skipped_text(skipped)}); no manifest written")
    write_manifest(output, utterances, force=force)
    return {"manifest": str(output), "utterances": len(utterances),
            **{f"skipped_{reason}": count for reason, count in skipped.items()}, "unused_audio": unused,
            "texts_losing_words": sum(drops_spoken_text(u.text) for u in utterances),
            "hours": round(sum(u.duration for u in utterances) / 3600, 3),
            "speakers": len({u.speaker for u in utterances})}


def _utf8_text(path: Path, why: str) -> str:
    """The file's text (a leading byte-order mark dropped); bytes that are not UTF-8, or a file that
    cannot be read, are an EdgeasrError naming the line."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise EdgeasrError(f"{path}:{line}: not UTF-8 text; {why} (byte 0x{exc.object[exc.start]:02x})") from None
    except OSError as exc:
        raise EdgeasrError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _transcript_lines(transcript: Path) -> List[tuple]:
    """(utterance id, text) of each non-blank line; the id ends at the first space or tab, and the
    text's runs of whitespace (CR included) become one space."""
    content = _utf8_text(transcript, "LibriSpeech transcripts are UTF-8").replace("\ufeff", "")   # byte-order marks
    lines, seen = [], {}
    for number, line in enumerate(content.splitlines(), start=1):
        fields = line.split(None, 1)
        if not fields:
            continue
        if fields[0] in seen:       # one clip, two references: it would be trained and scored twice
            raise EdgeasrError(f"{transcript}:{number}: utterance {fields[0]} is listed again (first on line "
                               f"{seen[fields[0]]}); keep one line per utterance")
        seen[fields[0]] = number
        lines.append((fields[0], " ".join(fields[1].split()) if len(fields) > 1 else ""))
    return lines


def _librispeech_utterance(folder: Path, utterance_id: str, text: str, max_seconds: Optional[float]):
    """(Utterance, None), or (None, the SKIP_REASONS entry it is left out for)."""
    if not normalize_text(text):
        return None, "no_text"
    audio = _audio_file(folder, utterance_id)
    try:
        duration = audio_seconds(audio)
    except AudioError:
        return None, "unreadable"
    if duration <= 0:
        return None, "no_samples"
    if max_seconds is not None and duration > max_seconds:
        return None, "too_long"
    return Utterance(audio, text.lower(), duration, utterance_id.split("-")[0]), None


def _skipped_text(skipped: dict) -> str:
    parts = [f"{count} {reason.replace('_', ' ')}" for reason, count in skipped.items() if count]
    return "skipped: " + ", ".join(parts) if parts else "the transcripts list no utterance"


def _unused_audio(folder: Path, listed: set) -> int:
    """Audio files of a chapter folder the manifest leaves out: those no transcript line names, and
    all but the one `_audio_file` reads of a listed utterance (X.wav beside X.flac, X.FLAC beside X.flac)."""
    by_stem = Counter(path.stem for path in folder.iterdir()
                      if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file())
    return sum(by_stem.values()) - len(set(by_stem) & set(listed))


def _audio_file(folder: Path, utterance_id: str) -> Path:
    """The utterance's audio file, its extension in any case (.flac, .FLAC, .Wav)."""
    found = {path.suffix.lower(): path for path in sorted(folder.glob(f"{glob.escape(utterance_id)}.*"))
             if path.stem == utterance_id and path.is_file()}
    for suffix in AUDIO_SUFFIXES:            # .flac before .wav
        if suffix in found:
            return found[suffix]
    raise EdgeasrError(f"{folder}: no audio for utterance {utterance_id} ({' or '.join(AUDIO_SUFFIXES)}, "
                       f"in any case)")
