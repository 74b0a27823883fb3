"""Speech to text with a converted Conformer-CTC: NumPy frontend, LiteRT model, NumPy CTC decoding.

Runtime side: NumPy and LiteRT only. Everything the transcriber needs comes from the model's
`edgeasr` metadata: the frontend config, the window length in frames (`input_frames`), the
subsampling factor and the tokens (`asr`).

The model takes a fixed window of frames. Shorter audio is padded at the end with silence (the
model's chunked attention and causal convolutions keep the outputs of every chunk that holds no
padding as they were, up to rounding; models converted before df280eb leak: docs/attention_leak.md); longer
audio is cut into consecutive windows whose outputs are joined before decoding (a word cut
in two at a window edge may come out misspelt: windows do not share context).
"""
import time
from pathlib import Path
from typing import List

import numpy as np

from edgeasr.audio.frontend import FrontendConfig, numpy_log_mel
from edgeasr.data.tokenizer import decode_tokens
from edgeasr.runtime.ctc import check_beam_width, decode
from edgeasr.runtime.litert import LiteRTModel
from edgeasr.runtime.metadata import read_metadata
from edgeasr.runtime.streaming import mono_samples


class TranscriberError(ValueError):
    """The model is not a speech-recognition model converted by edgeasr."""


class Transcriber:
    def __init__(self, model_path, num_threads: int = 1, beam_width: int = 0, kernels: str = "xnnpack"):
        self.path = Path(model_path)
        _check_settings(num_threads, beam_width)
        metadata = read_metadata(self.path) or {}
        if "asr" not in metadata or not metadata.get("frontend"):
            raise TranscriberError(f"{self.path}: no speech-recognition metadata (convert an ASR run with "
                                   f"`edgeasr convert RUN_DIR`)")
        self.metadata = metadata
        self.frontend = FrontendConfig(**metadata["frontend"])
        self.tokens = metadata["asr"]["tokens"]
        self.subsampling = int(metadata["asr"]["subsampling"])
        self.window_frames = int(metadata["input_frames"])
        self.beam_width = beam_width
        self.model = LiteRTModel(self.path, num_threads=num_threads, kernels=kernels)

    @property
    def window_samples(self) -> int:
        return self.frontend.window_samples + (self.window_frames - 1) * self.frontend.hop_samples

    def scores(self, audio: np.ndarray) -> np.ndarray:
        """Per-output-frame logits (T_out, V) of mono audio at the frontend's rate: floats in
        [-1, 1] or int16 PCM (`streaming.mono_samples`: stereo is refused, not interleaved)."""
        windows = self.windows(audio)
        return self.joined([self.model.predict(features[None])[0] for features, _ in windows], windows)

    def windows(self, audio: np.ndarray) -> list:
        """(log-mel features of one model window, output frames of it to keep) for each window of the
        audio. A window of fewer frames than one output frame spans (under 40 ms: the audio's tail, or
        all of a very short clip) is not run: it would decode mostly padding into a stray letter."""
        audio = mono_samples(audio)
        if not len(audio):
            raise ValueError("the audio holds no samples")
        step = self.window_frames * self.frontend.hop_samples   # windows start every window_frames frames
        windows = []
        for start in range(0, max(1, len(audio)), step):
            piece = audio[start:start + self.window_samples]
            frames = min(self.window_frames, self.frontend.num_frames(len(piece)))
            if frames < self.subsampling:
                break
            padded = np.zeros(self.window_samples, np.float32)
            padded[:len(piece)] = piece
            windows.append((numpy_log_mel(padded, self.frontend), -(-frames // self.subsampling)))
            if start + self.window_samples >= len(audio):
                break
        return windows

    def joined(self, window_logits: list, windows: list) -> np.ndarray:
        """The kept output frames of each window's logits, joined: the audio's logits (T_out, V)."""
        if not window_logits:
            return np.zeros((0, len(self.tokens)), np.float32)
        return np.concatenate([logits[:kept] for logits, (_, kept) in zip(window_logits, windows)])

    def transcribe(self, audio: np.ndarray) -> str:
        return self.text(self.scores(audio))

    def text(self, scores: np.ndarray) -> str:
        """The decoded text of an audio's logits (T_out, V)."""
        return decode_tokens(self.tokens, decode(scores, self.beam_width))

    def transcribe_timed(self, audio: np.ndarray) -> tuple:
        """(text, seconds of model + decoding time): real-time factor = seconds / audio seconds."""
        started = time.perf_counter()
        text = self.transcribe(audio)
        return text, time.perf_counter() - started

    def transcribe_file(self, path) -> str:
        """The text of an audio file; an unreadable or empty file raises edgeasr.audio.io.AudioError.
        Decoding files of any format and rate needs soundfile and soxr (installed with edgeasr); on a
        device with NumPy and LiteRT alone, read the audio yourself and call `transcribe`."""
        from edgeasr.audio.io import load_int16

        # int16 as the training and eval-asr loaders hold clips, so a file transcribes as eval-asr scores it
        return self.transcribe(load_int16(path, self.frontend.sample_rate))

    def transcribe_files(self, paths) -> List[str]:
        return [self.transcribe_file(p) for p in paths]


def _check_settings(num_threads: int, beam_width: int) -> None:
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise TranscriberError(f"num_threads {num_threads!r}: need 1 or more")
    try:
        check_beam_width(beam_width)
    except ValueError as exc:
        raise TranscriberError(str(exc)) from exc
