"""tf.data for CTC training: manifest audio -> (log-mel frames, packed CTC targets) batches.

Batches hold utterances of similar length (sorted by length, cut into batches, batch order
shuffled every epoch), padded at the end with silence, so little compute goes to padding; the
model's chunked attention and causal convolutions make padding at the end harmless to the
frames before it.

Targets are packed into one int32 tensor so that Keras `fit` and any loss(y_true, y_pred)
can carry them:  y_true[:, 0] = valid output frames (after subsampling), y_true[:, 1:] = label
ids padded with 0 (the blank, which is never a label). See `ctc_loss`.
"""
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from edgeasr.audio.augment import AugmentConfig, add_noise, random_gain
from edgeasr.audio.frontend import FrontendConfig, tf_log_mel
from edgeasr.audio.io import AudioError, load_int16, upsampling_note
from edgeasr.data.manifest import read_manifest
from edgeasr.data.tokenizer import Tokenizer, drops_spoken_text, normalize_text
from edgeasr.errors import EdgeasrError


@dataclass(frozen=True)
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 6          # mel bins, at most
    time_masks: int = 2
    time_fraction: float = 0.05  # each time mask at most this fraction of the utterance


@dataclass
class AsrSplit:
    waves: List[np.ndarray]      # int16 per utterance
    texts: List[str]             # normalised
    labels: List[np.ndarray]     # int32 ids per utterance
    audio: List[str] = field(default_factory=list)   # the files, as read_manifest resolves them

    def __len__(self):
        return len(self.waves)


def evenly_spaced(items: list, count: Optional[int]) -> list:
    """`count` items spread evenly over `items`, first and last included (all of them for None).

    Manifests list a speaker's utterances together, so their first N would be a few voices."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, max(count, 0)).round().astype(int)]


def load_asr_split(manifest, tokenizer: Optional[Tokenizer], frontend: FrontendConfig, limit: Optional[int] = None,
                   spread: bool = False, warn: bool = True) -> AsrSplit:
    """Audio (int16, at the frontend's rate), normalised text and label ids (none without a tokenizer).

    limit: the first `limit` utterances, or with `spread` that many spread evenly over the manifest.
    warn: say when normalised texts lose spoken words (once per manifest, not per model scored)."""
    utterances = read_manifest(manifest)
    utterances = evenly_spaced(utterances, limit) if spread else utterances[:limit]
    waves, texts, labels = [], [], []
    for utterance in utterances:
        text = normalize_text(utterance.text)
        if not text:
            raise EdgeasrError(f"{manifest}: {utterance.audio} has no spellable text ({utterance.text!r})")
        try:
            waves.append(load_int16(utterance.audio, frontend.sample_rate))
        except AudioError as exc:    # a manifest reads headers only: a damaged body shows here
            raise EdgeasrError(f"{manifest}: {exc}; fix the file or remove its line") from exc
        texts.append(text)
        labels.append(np.asarray(tokenizer.encode(text) if tokenizer else [], np.int32))
    if warn:
        _warn_dropped_text(manifest, utterances)
        _warn_upsampled(manifest, utterances, frontend)
    return AsrSplit(waves, texts, labels, [str(u.audio) for u in utterances])


def _warn_dropped_text(manifest, utterances) -> None:
    """Say when normalised references lose spoken words: WER is then scored on other text than the audio's."""
    dropped = [u.text for u in utterances if drops_spoken_text(u.text)]
    if dropped:
        print(f"warning: {manifest}: {len(dropped)} of {len(utterances)} texts lose digits or letters outside a-z "
              f"when normalised (e.g. {dropped[0]!r} -> {normalize_text(dropped[0])!r}); spell numbers out and "
              f"transliterate to score them", file=sys.stderr)


def _warn_upsampled(manifest, utterances, frontend: FrontendConfig) -> None:
    note = upsampling_note([u.audio for u in utterances], frontend.sample_rate, frontend.fmax)
    if note:
        print(f"warning: {manifest}: {note}", file=sys.stderr)


def ctc_feasible(labels: np.ndarray, logit_frames: int) -> bool:
    """CTC needs a frame per label plus a blank between equal neighbours."""
    repeats = int(np.sum(labels[1:] == labels[:-1])) if len(labels) > 1 else 0
    return len(labels) + repeats <= logit_frames


def length_batches(lengths, batch_size: int, rng: Optional[np.random.Generator] = None) -> List[np.ndarray]:
    """Indices grouped into batches of similar length; batch order shuffled when `rng` is given."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def pad_batch(split: AsrSplit, indices, frontend: FrontendConfig, frames_out: Callable[[int], int]):
    """(waves (B, S) int16, targets (B, 1 + L) int32) for the utterances at `indices`."""
    longest = max(len(split.waves[i]) for i in indices)
    longest_label = max(len(split.labels[i]) for i in indices)
    waves = np.zeros((len(indices), longest), np.int16)
    targets = np.zeros((len(indices), 1 + longest_label), np.int32)
    for row, i in enumerate(indices):
        waves[row, :len(split.waves[i])] = split.waves[i]
        targets[row, 0] = frames_out(frontend.num_frames(len(split.waves[i])))
        targets[row, 1:1 + len(split.labels[i])] = split.labels[i]
    return waves, targets


def spec_augment(features, config: SpecAugmentConfig, seed):
    """Zero random mel bands and random time spans of each example (features are ~zero-mean)."""
    batch, frames, mels = tf.shape(features)[0], tf.shape(features)[1], tf.shape(features)[2]
    seeds = tf.random.experimental.stateless_split(seed, 2 * (config.freq_masks + config.time_masks) + 1)
    keep = tf.ones_like(features)
    masks = [(mels, config.freq_width, 1)] * config.freq_masks
    time_width = tf.maximum(1, tf.cast(tf.cast(frames, tf.float32) * config.time_fraction, tf.int32))
    masks += [(frames, time_width, 2)] * config.time_masks
    for k, (size, max_width, axis) in enumerate(masks):
        width = tf.random.stateless_uniform([batch, 1], seeds[2 * k], 0, max_width + 1, dtype=tf.int32)
        room = tf.cast(tf.maximum(1, size - width + 1), tf.float32)
        start = tf.cast(tf.random.stateless_uniform([batch, 1], seeds[2 * k + 1]) * room, tf.int32)
        positions = tf.range(size)[None, :]
        inside = tf.cast((positions >= start) & (positions < start + width), features.dtype)
        keep = keep * (1.0 - tf.expand_dims(inside, axis))
    return features * keep


def asr_dataset(split: AsrSplit, frontend: FrontendConfig, frames_out: Callable[[int], int], batch_size: int,
                augment: Optional[AugmentConfig] = None, spec: Optional[SpecAugmentConfig] = None,
                noise: Optional[np.ndarray] = None, seed: int = 0, training: bool = False) -> tf.data.Dataset:
    """(features (B, T, n_mels), targets (B, 1 + L)) batches; `training` reshuffles and augments.

    Training drops utterances CTC cannot align (more labels than output frames) and says how many;
    validation keeps them (its loss is then dominated by theirs) and says so.
    """
    alignable = np.array([i for i in range(len(split)) if ctc_feasible(
        split.labels[i], frames_out(frontend.num_frames(len(split.waves[i]))))], np.int64)
    too_fast = len(split) - len(alignable)
    if training and not len(alignable):
        raise EdgeasrError(f"no training utterance CTC can align: all {len(split)} have more labels than the "
                           f"model's output frames at this subsampling (speech too fast for it, or clips cut short)")
    if too_fast and training:
        print(f"dropped {too_fast} of {len(split)} training utterances too fast for CTC at this subsampling",
              flush=True)
    elif too_fast:
        print(f"warning: {too_fast} of {len(split)} validation utterances are too fast for CTC at this "
              f"subsampling: their loss is infinite or huge, and val_loss mostly theirs", flush=True)
    usable = alignable if training else np.arange(len(split))
    lengths = [len(split.waves[i]) for i in usable]
    epoch = [0]

    def generate():
        rng = np.random.default_rng([seed, epoch[0]]) if training else None
        epoch[0] += 1
        for batch in length_batches(lengths, batch_size, rng):
            yield pad_batch(split, usable[batch], frontend, frames_out)

    signature = (tf.TensorSpec([None, None], tf.int16), tf.TensorSpec([None, None], tf.int32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    noise_tensor = tf.constant(noise, tf.float32) if noise is not None and augment is not None else None

    def to_features(batch, batch_seed):
        waves, targets = batch
        floats = tf.cast(waves, tf.float32) / 32768.0
        seeds = tf.random.experimental.stateless_split(batch_seed, 3)
        if training and augment is not None:
            if noise_tensor is not None:
                floats = add_noise(floats, noise_tensor, augment, seeds[0])
            floats = random_gain(floats, augment, seeds[1])
        features = tf_log_mel(floats, frontend)
        if training and spec is not None:
            features = spec_augment(features, spec, seeds[2])
        return features, targets

    dataset = tf.data.Dataset.zip((dataset, batch_seeds)).map(to_features, num_parallel_calls=2)
    return dataset.prefetch(2)


def ctc_loss(targets, logits):
    """Mean CTC loss per utterance from packed targets (see the module docstring); blank = 0."""
    targets = tf.cast(targets, tf.int32)
    logit_length = tf.minimum(targets[:, 0], tf.shape(logits)[1])
    labels = targets[:, 1:]
    label_length = tf.reduce_sum(tf.cast(labels > 0, tf.int32), axis=1)
    loss = tf.nn.ctc_loss(labels, tf.cast(logits, tf.float32), label_length, logit_length,
                          logits_time_major=False, blank_index=0)
    return tf.reduce_mean(loss)


def padded_features(split: AsrSplit, indices, frontend: FrontendConfig, frames: int) -> np.ndarray:
    """Log-mel frames of utterances padded (or cut) to `frames` frames: calibration arrays."""
    samples = frontend.window_samples + (frames - 1) * frontend.hop_samples
    waves = np.zeros((len(indices), samples), np.float32)
    for row, i in enumerate(indices):
        wave = split.waves[i][:samples].astype(np.float32) / 32768.0
        waves[row, :len(wave)] = wave
    return tf_log_mel(waves, frontend).numpy()
