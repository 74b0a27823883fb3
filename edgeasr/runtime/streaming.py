"""Streaming keyword spotting: audio chunks of any size in, (time, keyword, score) detections out.

    audio chunks ─► StreamingFrontend ─► last `input_frames` frames (kept quantized) ─► model once
    per hop ─► (softmax) ─► (sharpening) ─► posteriors averaged over `smoothing_ms` ─► per-keyword
    threshold + refractory period

A model converted with `--scores logits` (metadata "scores": "logits", the default for KWS models)
outputs int8 logits; the softmax runs here in float32 on the dequantized logits, so a posterior
is not capped at the 255/256 of an int8 softmax output. Thresholds stay in probability space.

Runtime side: NumPy and LiteRT only (the frontend module imports TensorFlow only inside
tf_log_mel). The frontend computes each new frame once, with the batch frontend's own code
(log_mel_of_frames), so streamed frames equal numpy_log_mel on the whole signal; each hop costs
one model invoke, never a recomputation of the window.

The trigger is one function, `fire_indices`, used both online (KeywordSpotter) and offline over a
whole stream's posteriors (edgeasr.eval.stream sweeps thresholds with it), so evaluated
thresholds mean the same thing on the device.
"""
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from edgeasr.audio.frontend import FLOAT_PEAK_LIMIT, FrontendConfig, float_audio, log_mel_of_frames
from edgeasr.runtime.litert import LiteRTModel, dequantize, quantize
from edgeasr.runtime.metadata import keyword_columns, read_metadata


class StreamingFrontend:
    """Log-mel frames of a stream fed in chunks of any size (1 sample upwards)."""

    def __init__(self, config: FrontendConfig):
        self.config = config
        self._pending = np.zeros(0, dtype=np.float32)   # samples after the last emitted frame's hop

    def push(self, audio: np.ndarray) -> np.ndarray:
        """New float samples in [-1, 1] -> the frames they complete, (frames, n_mels)."""
        config = self.config
        buffer = np.concatenate([self._pending, float_audio(audio).reshape(-1)])
        count = config.num_frames(len(buffer))
        if count == 0:
            self._pending = buffer
            return np.zeros((0, config.n_mels), dtype=np.float32)
        frames = np.lib.stride_tricks.as_strided(          # read-only view: frame i starts at i * hop
            buffer, (count, config.window_samples), (config.hop_samples * buffer.itemsize, buffer.itemsize),
            writeable=False)
        features = log_mel_of_frames(frames, config)
        self._pending = buffer[count * config.hop_samples:]
        return features


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32."""
    shifted = np.asarray(logits, np.float32) - np.max(logits, axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / np.sum(exponentials, axis=-1, keepdims=True)


def outputs_logits(metadata: Optional[dict]) -> bool:
    """Whether a model's metadata says its output is logits (else it outputs probabilities)."""
    return (metadata or {}).get("scores", "probabilities") == "logits"


def sharpened(posteriors: np.ndarray, exponent: float) -> np.ndarray:
    """p_k^g / sum_j p_j^g along the last axis (for posteriors from logits: a softmax at temperature
    1/g); g = 1 returns them unchanged. Computed as a softmax of g log p in float64: plain powers
    underflow to 0 / 0 for a large g."""
    if exponent == 1:
        return np.asarray(posteriors, np.float32)
    with np.errstate(divide="ignore"):                     # log 0 = -inf: that class stays at 0
        scaled = exponent * np.log(np.asarray(posteriors, np.float64))
    powered = np.exp(scaled - np.max(scaled, axis=-1, keepdims=True))
    return (powered / powered.sum(axis=-1, keepdims=True)).astype(np.float32)


def smoothed_posteriors(raw: np.ndarray, runs: int) -> np.ndarray:
    """Each row of `raw` (runs, classes) averaged with up to runs - 1 rows before it: PosteriorStream's
    smoothing over a whole stream at once (for sweeping the smoothing window offline)."""
    totals = np.concatenate([np.zeros((1, raw.shape[1])), np.cumsum(np.asarray(raw, np.float64), axis=0)])
    ends = np.arange(1, len(raw) + 1)
    starts = np.maximum(ends - runs, 0)
    return ((totals[ends] - totals[starts]) / (ends - starts)[:, None]).astype(np.float32)

@dataclass(frozen=True)
class DetectorConfig:
    """How posteriors become detections.

    smoothing_ms is 400: on the 4 h held-out stream of docs/stream_results.md (models outputting
    logits; windows of 40 to 600 ms; chosen on that same stream, there is no second one to tune
    on), FRR at 1 false accept per hour is lowest there for the float and 8-bit FFN and DS-CNN-S;
    the 4-bit DS-CNN-S is lowest at 300 ms (15.92 against 16.83%), the 4-bit FFN at 600 ms (37.70
    against 40.93%). One window for all keeps every float-to-4-bit comparison at one detector.
    Shorter windows let single-hop false peaks through; longer ones dilute the ~0.5 s keywords.
    With an int8 softmax output (`convert --scores probabilities`) windows of 80 ms and less fail
    outright: its 0.996 cap makes confident false peaks equal to keywords (FRR 100% at
    1 FA/h).

    sharpening (g) raises each raw posterior to the power g and renormalises it before the average,
    so one confident run outweighs several lukewarm ones. Opt-in, default 1 (off): on the held-out
    streams of docs/posterior_sharpening.md g = 2 lowered FRR at 1 FA/h for every float and 4-bit
    DS-CNN-S run measured (float means 18.95 -> 17.20% on 4 h of test voices, 15.10 -> 12.26% on
    10 h of validation voices), but every other table in docs/ and every written threshold were
    measured without it. Thresholds chosen with one g hold only for that g: choose both on the
    same validation stream (`eval-stream --sharpening 2 --write-thresholds` writes both).
    """

    hop_ms: float = 20.0             # the model runs once per hop on the last window
    smoothing_ms: float = 400.0      # posteriors are averaged over this much history
    refractory_ms: float = 1000.0    # a keyword that fired stays silent this long
    default_threshold: float = 0.5
    thresholds: Dict[str, float] = field(default_factory=dict)   # per keyword, else the default
    sharpening: float = 1.0          # exponent g of each raw posterior before the average (1: off)

    def __post_init__(self):
        if not 0 < self.sharpening < np.inf:   # 0 flattens every posterior, a negative one inverts them
            raise ValueError(f"sharpening must be positive, not {self.sharpening:g}")
        for name in ("hop_ms", "smoothing_ms"):
            if not 0 < getattr(self, name) < np.inf:
                raise ValueError(f"{name} must be positive, not {getattr(self, name):g}")
        if not 0 <= self.refractory_ms < np.inf:
            raise ValueError(f"refractory_ms must be 0 or more, not {self.refractory_ms:g}")
        for keyword, threshold in [("default", self.default_threshold), *self.thresholds.items()]:
            if not 0 <= threshold <= 1:         # a posterior is in [0, 1]; NaN never fires
                raise ValueError(f"threshold of {keyword} must be in [0, 1], not {threshold:g}")

    def threshold(self, keyword: str) -> float:
        return float(self.thresholds.get(keyword, self.default_threshold))

    def hop_frames(self, frontend: FrontendConfig) -> int:
        """Frontend frames between two model runs: the model can only run when a frame is complete,
        so a hop that is not a whole number of frames is refused rather than rounded."""
        frames = self.hop_ms / frontend.hop_ms
        if frames < 1 - 1e-6 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"hop_ms {self.hop_ms:g} is not a multiple of the frontend's {frontend.hop_ms:g} ms "
                             f"frame hop; the model runs when a frame is complete")
        return int(round(frames))

    @classmethod
    def from_metadata(cls, metadata: dict, **overrides) -> "DetectorConfig":
        """The detector settings a model's metadata carries (written by eval-stream), then overrides.
        Settings written before `sharpening` existed were chosen without it (g = 1), whatever the
        default becomes."""
        stored = dict(metadata.get("detector") or {})
        if stored:
            stored.setdefault("sharpening", 1.0)
        stored.update({k: v for k, v in overrides.items() if v is not None})
        known = {k: stored[k] for k in cls.__dataclass_fields__ if k in stored}
        return cls(**known)


def changed_detector_settings(metadata: dict, **given) -> list:
    """"--hop-ms 20 (chosen with 40)" for each given setting (hop_ms, smoothing_ms, refractory_ms,
    sharpening; None: not given) that differs from those the model's thresholds were chosen with;
    none when the model holds no thresholds. Thresholds hold only for their own settings."""
    if not (metadata.get("detector") or {}).get("thresholds"):
        return []
    stored = DetectorConfig.from_metadata(metadata)
    return [f"--{name.replace('_', '-')} {value:.10g} (chosen with {getattr(stored, name):.10g})"
            for name, value in given.items() if value is not None and value != getattr(stored, name)]


class Detection(NamedTuple):
    time_s: float      # stream time at the end of the window that fired
    keyword: str
    score: float       # smoothed posterior


def fire_indices(times: np.ndarray, scores: np.ndarray, threshold: float, refractory_s: float,
                 last_fire: float = -np.inf) -> np.ndarray:
    """Indices where one keyword fires: score >= threshold, at least refractory_s after its last firing.

    Jumps from firing to firing with searchsorted, so a whole stream costs one step per detection.
    """
    candidates = np.flatnonzero(scores >= scores.dtype.type(threshold))    # compared in the scores' dtype
    candidate_times = times[candidates]
    fired = []
    position = int(np.searchsorted(candidate_times, last_fire + refractory_s, side="left"))
    while position < len(candidates):
        fired.append(candidates[position])
        # side="right" at refractory 0: the next run, not the same one again
        position = int(np.searchsorted(candidate_times, candidate_times[position] + refractory_s,
                                       side="left" if refractory_s > 0 else "right"))
    return np.asarray(fired, dtype=np.int64)


def mono_samples(audio) -> np.ndarray:
    """float32 samples of a 1-D float or int16 array; a 2-D (stereo) array is refused: flattened it
    would play interleaved channels as a stream twice as long. Floats overshooting [-1, 1] (up to
    FLOAT_PEAK_LIMIT) are clipped, as a file read through int16 is, so both give the same result."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be one channel of samples (1-D), got shape {audio.shape}; "
                         f"average the channels first")
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1] or int16 PCM, got {audio.dtype}")
    if not np.isfinite(audio).all():
        raise ValueError("audio holds NaN or infinite samples")
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > FLOAT_PEAK_LIMIT:
        raise ValueError(f"float audio must be in [-1, 1]; this peaks at {peak:.4g} (int16 values "
                         f"as floats? pass the int16 array, or divide by 32768)")
    return np.clip(audio, -1.0, 1.0).astype(np.float32) if peak > 1 else audio.astype(np.float32, copy=False)


def run_ends(input_frames: int, hop_frames: int, start: int, stop: int) -> range:
    """Frame counts in (start, stop] at which a streaming model runs: once its first window of
    `input_frames` is full, then every `hop_frames`."""
    begin = max(input_frames, start + 1)
    offset = (begin - input_frames) % hop_frames
    return range(begin + (hop_frames - offset) % hop_frames, stop + 1, hop_frames)


PIECE_SECONDS = 10.0        # PosteriorStream.push works through longer chunks this much at a time


class PosteriorStream:
    """Frontend + model + smoothing: audio chunks -> (times, smoothed posteriors) of each model run."""

    def __init__(self, model: LiteRTModel, frontend: FrontendConfig, input_frames: int, config: DetectorConfig,
                 logits: bool = False):
        self.model, self.frontend_config, self.input_frames = model, frontend, int(input_frames)
        self.logits = logits                    # the model outputs logits: softmax them here
        self.sharpening = float(config.sharpening)
        self.hop_frames = hop_within_window(config, frontend, self.input_frames)
        self.smoothing_runs = max(1, int(round(config.smoothing_ms / (self.hop_frames * frontend.hop_ms))))
        self.frontend = StreamingFrontend(frontend)
        self._history = np.zeros((0, frontend.n_mels), dtype=model.input_detail["dtype"])
        self._frames_seen = 0
        self._recent = []                       # last `smoothing_runs` raw posteriors

    def push(self, audio: np.ndarray):
        """-> (times in s, smoothed posteriors (runs, classes)) of the runs this chunk completes.
        A long chunk is taken PIECE_SECONDS at a time (the same runs: the stream is chunk-size
        agnostic): the frontend's spectra of 30 min at once peaked at about 2 GB."""
        piece = int(PIECE_SECONDS * self.frontend_config.sample_rate)
        if len(audio) > piece:
            parts = [self._push(audio[start:start + piece]) for start in range(0, len(audio), piece)]
            return np.concatenate([times for times, _ in parts]), np.concatenate([scores for _, scores in parts])
        return self._push(audio)

    def _push(self, audio: np.ndarray):
        new = quantize(self.frontend.push(audio), self.model.input_detail)
        frames = np.concatenate([self._history, new]) if len(self._history) else new
        first = self._frames_seen - len(self._history)            # stream index of frames[0]
        self._frames_seen += len(new)
        ends = run_ends(self.input_frames, self.hop_frames, self._frames_seen - len(new), self._frames_seen)
        times, smoothed = [], []
        for end in ends:                                           # frames [end - input_frames, end)
            window = frames[end - self.input_frames - first:end - first]
            posterior = dequantize(self.model.run_raw(window)[None], self.model.output_detail)[0]
            posterior = sharpened(softmax(posterior) if self.logits else posterior, self.sharpening)
            self._recent = (self._recent + [posterior])[-self.smoothing_runs:]
            smoothed.append(np.mean(self._recent, axis=0))
            times.append(self.frontend_config.frames_end_seconds(end))
        self._history = frames[-(self.input_frames - 1):] if self.input_frames > 1 else frames[:0]
        classes = self.model.output_detail["shape"][-1]
        return np.asarray(times), (np.stack(smoothed) if smoothed else np.zeros((0, classes), np.float32))



def stream_metadata(model_path, metadata) -> dict:
    """The model's edgeasr metadata, checked to name the labels and frontend a stream needs (a model
    converted from a plain Keras file without --labels and --frontend has them null)."""
    if isinstance(metadata, dict) and "asr" in metadata:
        raise ValueError(f"{model_path}: a speech-recognition model; the keyword spotter runs keyword models "
                         f"(transcribe it with `edgeasr transcribe` or edgeasr.runtime.asr.Transcriber)")
    if not isinstance(metadata, dict) or not metadata.get("labels") or not isinstance(metadata.get("frontend"), dict):
        raise ValueError(f"{model_path}: no edgeasr metadata with labels and frontend; convert it with "
                         f"`edgeasr convert` from a run directory, or from a model file with --labels and "
                         f"--frontend")
    return metadata


def frontend_config(model_path, metadata: dict) -> FrontendConfig:
    """The metadata's frontend; fields this runtime does not know (a model converted by a newer
    edgeasr, run by an older rpi_kws.py) or of the wrong type are a ValueError naming them."""
    try:
        return FrontendConfig(**metadata["frontend"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{model_path}: the frontend in its metadata is not one this runtime reads ({exc}); "
                         f"a model from a newer edgeasr needs that version's runtime or rpi_kws.py") from None


def check_labels_match_outputs(model_path, labels: list, model: LiteRTModel) -> None:
    classes = int(model.output_detail["shape"][-1])
    if len(labels) != classes:
        raise ValueError(f"{model_path}: its metadata names {len(labels)} labels for {classes} outputs")


def hop_within_window(config: DetectorConfig, frontend: FrontendConfig, window_frames: int) -> int:
    """The hop in frames; a ValueError when it is longer than the model's window, which would leave
    the audio between two windows unscored."""
    hop = config.hop_frames(frontend)
    if hop > window_frames:
        raise ValueError(f"hop_ms {config.hop_ms:g} is longer than the model's window of {window_frames} frames "
                         f"({window_frames * frontend.hop_ms:g} ms): audio between two windows would never be scored")
    return hop


def input_frames(model, metadata: dict) -> int:
    """Frames per model run: the metadata's, else the model's input shape (`model`: a path or LiteRTModel)."""
    if metadata.get("input_frames"):
        return int(metadata["input_frames"])
    model = model if isinstance(model, LiteRTModel) else LiteRTModel(model)
    return int(model.input_detail["shape"][1])


class KeywordSpotter:
    """The whole detector for one converted model; settings from its metadata unless given."""

    def __init__(self, model_path, config: Optional[DetectorConfig] = None, num_threads: int = 1,
                 kernels: str = "xnnpack", metadata: Optional[dict] = None):
        metadata = stream_metadata(model_path, metadata if metadata is not None else read_metadata(model_path))
        self.labels = list(metadata["labels"])
        self.frontend = frontend_config(model_path, metadata)
        self.config = config or DetectorConfig.from_metadata(metadata)
        self.keyword_indices = [column for column, _ in keyword_columns(self.labels)]
        unknown = sorted(set(self.config.thresholds) - {name for _, name in keyword_columns(self.labels)})
        if unknown:                      # a misspelt keyword would silently keep the default threshold
            raise ValueError(f"thresholds for words that are not keywords of {model_path}: {', '.join(unknown)}")
        model = LiteRTModel(model_path, num_threads=num_threads, kernels=kernels)
        check_labels_match_outputs(model_path, self.labels, model)
        frames = input_frames(model, metadata)
        self.posteriors = PosteriorStream(model, self.frontend, frames, self.config, outputs_logits(metadata))
        self._last_fire = {i: -np.inf for i in self.keyword_indices}
        self._thresholds = np.array([self.config.threshold(self.labels[i]) for i in self.keyword_indices],
                                    dtype=np.float32)

    def push(self, audio: np.ndarray) -> List[Detection]:
        """Mono samples at the model's sample rate -> detections completed by them: floats in
        [-1, 1], or int16 PCM (scaled here)."""
        times, scores = self.posteriors.push(mono_samples(audio))
        detections = []
        refractory = self.config.refractory_ms / 1000.0
        above = (scores[:, self.keyword_indices] >= self._thresholds).any(axis=0)
        for index in np.asarray(self.keyword_indices)[above]:     # most hops: no keyword near its threshold
            keyword = self.labels[index]
            for run in fire_indices(times, scores[:, index], self.config.threshold(keyword), refractory,
                                    self._last_fire[index]):
                detections.append(Detection(float(times[run]), keyword, float(scores[run, index])))
                self._last_fire[index] = float(times[run])
        return sorted(detections)
