"""Log-mel frontend: one FrontendConfig, a TensorFlow implementation for training and a
NumPy implementation for the runtime (NumPy only, so it runs where TensorFlow does not).

Both compute   (log(max(mel_weights @ |rfft(hann * frame)|^2, log_floor)) - feature_mean) / feature_std
over frames of `window_samples` every `hop_samples`, without padding: a 1 s clip at 16 kHz
with a 30 ms window and a 10 ms hop gives 98 frames.

The fixed affine at the end puts features near zero mean and unit spread (raw log-mel of
speech sits around -10 with a spread of 4). A Dense layer fed raw log-mel does not train
(measured: the stateless FFN stayed at chance, 10%; with the affine, 65% after 8 epochs).
Being fixed, it costs nothing on the device: the model's int8 input scale absorbs it.

The mel filterbank is the Slaney-style one librosa builds by default (htk=False,
norm="slaney"); it is computed here in NumPy so the runtime needs neither librosa nor
TensorFlow, and tests hold it equal to librosa.filters.mel.
"""
import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    window_ms: float = 30.0
    hop_ms: float = 10.0
    n_fft: int = 512
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6
    feature_mean: float = -10.0
    feature_std: float = 4.0

    def __post_init__(self):
        """Settings that would give other features without a word (an FFT shorter than the window
        crops every frame) or fail deep inside the frontend are a ValueError naming them."""
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"frontend: {name} must be a finite number, not {value!r}")
        checks = (
            (self.sample_rate > 0, f"sample_rate must be positive, not {self.sample_rate}"),
            (self.window_samples >= 1 and self.hop_samples >= 1,
             f"window_ms {self.window_ms} and hop_ms {self.hop_ms} must each be at least one sample"),
            (self.n_fft >= self.window_samples,
             f"n_fft {self.n_fft} is shorter than the window ({self.window_samples} samples): it would crop "
             f"every frame"),
            (self.n_mels >= 1, f"n_mels must be at least 1, not {self.n_mels}"),
            (0 <= self.fmin < self.fmax <= self.sample_rate / 2,
             f"need 0 <= fmin < fmax <= sample_rate / 2 ({self.sample_rate / 2:g} Hz), not fmin {self.fmin} and "
             f"fmax {self.fmax}"),
            (self.log_floor > 0 and self.feature_std > 0, "log_floor and feature_std must be positive"),
        )
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("frontend: " + "; ".join(problems))

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for `num_samples` of audio (no padding at either end)."""
        if num_samples < self.window_samples:
            return 0
        return 1 + (num_samples - self.window_samples) // self.hop_samples

    def frames_end_seconds(self, frames):
        """Time in the audio at which the first `frames` frames (an int or an array) are complete."""
        return ((frames - 1) * self.hop_samples + self.window_samples) / self.sample_rate


def _hz_to_mel(hz):
    """Slaney's scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_weights(config: FrontendConfig) -> np.ndarray:
    """Triangular, area-normalised mel filters, shape (n_mels, n_fft // 2 + 1), float32."""
    fft_hz = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    edges_mel = np.linspace(_hz_to_mel(config.fmin), _hz_to_mel(config.fmax), config.n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window, the one tf.signal.stft uses by default."""
    n = np.arange(length)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


def numpy_log_mel(audio: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Log-mel features of float audio in [-1, 1], shape (..., samples) -> (..., frames, n_mels);
    audio shorter than one window has no frame."""
    audio = float_audio(audio)
    if audio.shape[-1] < config.window_samples:
        return np.zeros((*audio.shape[:-1], 0, config.n_mels), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(audio, config.window_samples, axis=-1)
    return log_mel_of_frames(frames[..., :: config.hop_samples, :], config)


FLOAT_PEAK_LIMIT = 2.0    # float audio above it is in another scale, not a clipped [-1, 1] signal


def float_audio(audio) -> np.ndarray:
    """float32 samples; integer PCM is refused (read as floats it is 32768 times too loud)."""
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"the frontend takes float samples in [-1, 1], not {audio.dtype}; divide int16 PCM by 32768")
    return audio.astype(np.float32, copy=False)


def log_mel_of_frames(frames: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Log-mel of already framed audio, (..., window_samples) -> (..., n_mels).

    Shared with the streaming frontend (edgeasr.runtime.streaming), which calls it every hop.
    """
    window, mel_matrix = _analysis_constants(config)
    spectrum = np.fft.rfft(frames * window, n=config.n_fft, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    # einsum, not `@`: BLAS rounds a row differently depending on how many rows it gets, and the
    # streaming frontend must give the batch frontend's frames bit for bit.
    mel = np.einsum("...k,km->...m", power, mel_matrix)
    log_mel = np.log(np.maximum(mel, config.log_floor))
    return ((log_mel - config.feature_mean) / config.feature_std).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _analysis_constants(config: FrontendConfig):
    """Hann window and transposed mel matrix, built once per config (read-only: they are shared)."""
    window, mel_matrix = hann_window(config.window_samples), np.ascontiguousarray(mel_weights(config).T)
    window.flags.writeable = mel_matrix.flags.writeable = False
    return window, mel_matrix


def tf_log_mel(audio, config: FrontendConfig):
    """The same features in TensorFlow, for tf.data pipelines: (..., samples) -> (..., frames, n_mels);
    float samples in [-1, 1] only, as `numpy_log_mel` (int16 read as floats is 32768 times too loud)."""
    import tensorflow as tf

    audio = tf.convert_to_tensor(audio)
    if not audio.dtype.is_floating:
        raise ValueError(f"the frontend takes float samples in [-1, 1], not {audio.dtype.name}; divide int16 PCM "
                         f"by 32768")
    stft = tf.signal.stft(
        tf.cast(audio, tf.float32),
        frame_length=config.window_samples,
        frame_step=config.hop_samples,
        fft_length=config.n_fft,
        window_fn=tf.signal.hann_window,
        pad_end=False,
    )
    power = tf.math.square(tf.math.real(stft)) + tf.math.square(tf.math.imag(stft))
    mel = tf.tensordot(power, tf.constant(mel_weights(config).T), axes=1)
    log_mel = tf.math.log(tf.maximum(mel, config.log_floor))
    return (log_mel - config.feature_mean) / config.feature_std
