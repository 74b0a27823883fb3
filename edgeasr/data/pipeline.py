"""tf.data pipelines: int16 clips in memory -> (log-mel features, label) batches."""
import numpy as np
import tensorflow as tf

from edgeasr.audio.augment import AugmentConfig, augment
from edgeasr.audio.frontend import FrontendConfig, tf_log_mel


def feature_dataset(
    waves: np.ndarray,
    labels: np.ndarray,
    frontend: FrontendConfig,
    batch_size: int,
    augmentation: AugmentConfig = None,
    noise: list = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (features (B, frames, n_mels), labels (B,)).

    With `augmentation`, examples are shuffled every epoch and augmented on the fly, with
    `noise` (a list of float recordings) as the background; without it the order is fixed.
    """
    dataset = tf.data.Dataset.from_tensor_slices((waves, labels))
    if augmentation is not None:
        dataset = dataset.shuffle(len(waves), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    noise_tensor = _concatenated(noise, len(waves[0]) if len(waves) else 0)

    # One stateless seed per batch, different in every epoch yet reproducible from `seed`.
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def to_features(batch, batch_seed):
        batch_waves, batch_labels = batch
        floats = tf.cast(batch_waves, tf.float32) / 32768.0
        if augmentation is not None:
            floats = augment(floats, noise_tensor, augmentation, frontend.sample_rate, batch_seed)
        return tf_log_mel(floats, frontend), batch_labels

    dataset = tf.data.Dataset.zip((dataset, batch_seeds)).map(to_features, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _concatenated(noise, clip_samples: int):
    """All noise recordings end to end, or None when there is not enough noise to cut a clip."""
    if not noise:
        return None
    joined = np.concatenate([np.asarray(n, np.float32) for n in noise])
    return tf.constant(joined) if len(joined) > clip_samples else None


def features_of(waves: np.ndarray, frontend: FrontendConfig, batch_size: int = 256) -> np.ndarray:
    """Log-mel features of int16 clips, no augmentation (calibration, evaluation)."""
    dataset = feature_dataset(waves, np.zeros(len(waves), np.int32), frontend, batch_size)
    return np.concatenate([f.numpy() for f, _ in dataset]) if len(waves) else np.zeros((0,))
