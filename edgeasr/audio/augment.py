"""Training-time augmentation on batches of waveforms, in TensorFlow (runs inside tf.data).

Three things a keyword model meets on a device: the word is not centred (time shift), the room
is not quiet (background noise at a random signal-to-noise ratio), and the speaker is not at a
fixed distance (gain).
"""
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    time_shift_ms: float = 100.0
    noise_probability: float = 0.8
    snr_db_min: float = 0.0
    snr_db_max: float = 25.0
    gain_db_min: float = -12.0
    gain_db_max: float = 6.0


def time_shift(waves, max_shift: int, seed):
    """Shift each clip by a random number of samples in [-max_shift, max_shift], zero-filled."""
    if max_shift <= 0:
        return waves
    batch, length = tf.shape(waves)[0], tf.shape(waves)[1]
    padded = tf.pad(waves, [[0, 0], [max_shift, max_shift]])
    offsets = tf.random.stateless_uniform([batch], seed, 0, 2 * max_shift + 1, dtype=tf.int32)
    indices = offsets[:, None] + tf.range(length)[None, :]
    return tf.gather(padded, indices, batch_dims=1)


def add_noise(waves, noise, config: AugmentConfig, seed):
    """Mix a random cut of `noise` (1-D) into each clip at a random SNR, with some probability."""
    batch, length = tf.shape(waves)[0], tf.shape(waves)[1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    starts = tf.random.stateless_uniform([batch], seeds[0], 0, tf.shape(noise)[0] - length, dtype=tf.int32)
    cuts = tf.gather(noise, starts[:, None] + tf.range(length)[None, :])
    snr_db = tf.random.stateless_uniform([batch, 1], seeds[1], config.snr_db_min, config.snr_db_max)
    signal_power = tf.reduce_mean(tf.square(waves), axis=1, keepdims=True) + 1e-8
    noise_power = tf.reduce_mean(tf.square(cuts), axis=1, keepdims=True) + 1e-8
    scale = tf.sqrt(signal_power / (noise_power * tf.pow(10.0, snr_db / 10.0)))
    apply = tf.cast(tf.random.stateless_uniform([batch, 1], seeds[2]) < config.noise_probability, tf.float32)
    return waves + apply * scale * cuts


def random_gain(waves, config: AugmentConfig, seed):
    batch = tf.shape(waves)[0]
    gain_db = tf.random.stateless_uniform([batch, 1], seed, config.gain_db_min, config.gain_db_max)
    return tf.clip_by_value(waves * tf.pow(10.0, gain_db / 20.0), -1.0, 1.0)


def augment(waves, noise, config: AugmentConfig, sample_rate: int, seed):
    """All three, in order: shift, noise (if any noise is given), gain. `seed` is a shape-[2] int tensor."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    waves = time_shift(waves, int(sample_rate * config.time_shift_ms / 1000), seeds[0])
    if noise is not None:
        waves = add_noise(waves, noise, config, seeds[1])
    return random_gain(waves, config, seeds[2])
