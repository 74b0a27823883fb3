"""Reading and writing audio files: mono float32 at the rate the caller asks for."""
import os
from typing import Optional

import numpy as np
import soundfile
import soxr

from edgeasr.audio.frontend import FLOAT_PEAK_LIMIT
from edgeasr.errors import EdgeasrError
from edgeasr.files import atomic_output


class AudioError(EdgeasrError):
    """An audio file that cannot be used: missing, unreadable, empty."""


class OutOfScaleAudio(AudioError):
    """A float file whose samples are in another scale than [-1, 1] (peaks above FLOAT_PEAK_LIMIT)."""


def load_audio(path: os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate`; other rates are resampled."""
    samples, file_rate = _with_soundfile(path, lambda name: soundfile.read(name, dtype="float32", always_2d=True))
    if samples.size == 0:
        raise AudioError(f"{path}: the file holds no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: the file holds NaN or infinite samples (a float WAV written from broken data)")
    mono = samples.mean(axis=1)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate).astype(np.float32)
    return mono


def audio_seconds(path: os.PathLike) -> float:
    """How long a file plays, from its header alone (nothing is decoded)."""
    info = _with_soundfile(path, soundfile.info)
    return info.frames / info.samplerate


def upsampling_note(paths, sample_rate: int, fmax: float) -> Optional[str]:
    """Why files recorded below the model's rate may score worse (None when none is that low): upsampled,
    they hold nothing above half their own rate, where the frontend's upper mel bands are. Only headers
    are read; a file that cannot be read is left to the caller's loading to report."""
    rates = []
    for path in paths:
        try:
            rates.append(int(_with_soundfile(path, soundfile.info).samplerate))
        except AudioError:
            pass
    low = [rate for rate in rates if rate < sample_rate and rate / 2 < fmax]
    if not low:
        return None
    return (f"{len(low)} of {len(rates)} files are recorded below the model's {sample_rate} Hz (lowest {min(low)} Hz) "
            f"and upsampled: they hold nothing above {min(low) / 2:g} Hz, and the frontend's mel bands reach "
            f"{fmax:g} Hz")


def _with_soundfile(path: os.PathLike, read):
    """read(str(path)), any error of soundfile's (it raises several types for bad files) as an AudioError."""
    try:
        return read(str(path))
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc


def write_wav(path: os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono WAV, written to a temporary file first and renamed into place."""
    pcm = samples if np.asarray(samples).dtype == np.int16 else to_int16(samples)
    with atomic_output(path) as tmp:
        soundfile.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")


def load_int16(path: os.PathLike, sample_rate: int) -> np.ndarray:
    """`load_audio` as int16 PCM, the form training and evaluation hold clips in. A float file whose
    samples peak above FLOAT_PEAK_LIMIT is an AudioError: they are in another scale than [-1, 1],
    and clipped they would be another signal (the runtime's `mono_samples` refuses them too)."""
    samples = load_audio(path, sample_rate)
    peak = float(np.abs(samples).max())
    if peak > FLOAT_PEAK_LIMIT:
        raise OutOfScaleAudio(f"{path}: float samples peaking at {peak:.4g}, not in [-1, 1]; int16 would clip "
                              f"{np.mean(np.abs(samples) > 1):.1%} of them: rescale the file")
    return to_int16(samples)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16, clipped."""
    return np.clip(np.round(np.asarray(samples) * 32767.0), -32768, 32767).astype(np.int16)
