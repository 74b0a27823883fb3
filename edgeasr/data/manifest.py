"""Speech-recognition manifests: one JSON object per line, {"audio", "text", "duration"} (+ "speaker").

`audio` is relative to the manifest's folder when the file lies under it, else absolute, so a
synthetic corpus can be moved as a whole. The same format is written for a LibriSpeech-layout
folder (`librispeech_manifest`), so real data goes through the same pipeline as synthetic data.

    LibriSpeech layout:  DIR/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
                         DIR/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

import soundfile

from edgeasr.errors import EdgeasrError
from edgeasr.files import atomic_output

AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class Utterance:
    audio: Path       # absolute once read
    text: str
    duration: float   # seconds
    speaker: str = ""


def write_manifest(path: os.PathLike, utterances: Iterable[Utterance]) -> Path:
    """JSONL, written atomically; audio paths under the manifest's folder are stored relative to it."""
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
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))
    return path


def read_manifest(path: os.PathLike, check_audio: bool = True) -> List[Utterance]:
    """The utterances of a manifest, audio paths made absolute; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EdgeasrError(f"{path}: no such manifest")
    utterances = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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


def librispeech_manifest(root: os.PathLike, output: os.PathLike, max_seconds: Optional[float] = None) -> dict:
    """Write the manifest of a LibriSpeech-layout folder (text lower-cased); returns a summary."""
    root = Path(root)
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise EdgeasrError(f"{root}: no *.trans.txt files; expected the LibriSpeech layout "
                           f"SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt")
    utterances, skipped = [], 0
    for transcript in transcripts:
        for line in transcript.read_text().splitlines():
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            audio = _audio_file(transcript.parent, utterance_id)
            duration = soundfile.info(str(audio)).duration
            if max_seconds is not None and duration > max_seconds:
                skipped += 1
                continue
            utterances.append(Utterance(audio, text.lower(), duration, utterance_id.split("-")[0]))
    write_manifest(output, utterances)
    return {"manifest": str(output), "utterances": len(utterances), "skipped_too_long": skipped,
            "hours": round(sum(u.duration for u in utterances) / 3600, 3),
            "speakers": len({u.speaker for u in utterances})}


def _audio_file(folder: Path, utterance_id: str) -> Path:
    for suffix in AUDIO_SUFFIXES:
        candidate = folder / f"{utterance_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise EdgeasrError(f"{folder}: no audio for utterance {utterance_id} ({' or '.join(AUDIO_SUFFIXES)})")
