"""Knowledge distillation for QAT fine-tuning: the quantized student learns the labels and the
softened posteriors of the float model it starts from (the --init-from run, the teacher).

Why: 4-bit DS-CNN-S models match the float model's clip accuracy (docs/qat_results.md) yet score
worse on an always-on stream, where the false accepts on non-keyword audio set the threshold
(docs/stream_results.md). The teacher's posteriors on every clip, keywords and the rest, carry
how confident the float model is, which the labels alone do not. Measured once (DS-CNN-S
w4a8-tanh, weight 0.5, the recipe and seeds 0-4 of scripts/qat_results.py, scored like
scripts/stream_results.py): it did not help. FRR at 1 FA/h on the test stream 21.9% against 21.2%
without it (float 18.9%), on the validation stream 19.7% against 15.9% (float 12.8%); test clip
accuracy 97.3% against 97.6%. With a per-seed teacher (scripts/recipe_pilots.py "distilled": each
seed starts from and learns from its own float run) it did not help either: +2.19 +/- 2.34 points
of FRR against that run at 1 FA/h over seeds 0-3, where the same start without distillation
("fromfloat") gave -1.45 +/- 1.75 on those seeds, +0.29 +/- 1.22 over seeds 0-9 on the test
stream, but +2.60 +/- 1.91 on the 10 h validation stream (docs/recipe_pilots.md). Lower weights
are untried.

The teacher runs inside the input pipeline on the same augmented features the student sees;
targets become [label, teacher posteriors softened at TEMPERATURE] per example, so the student's
loss and accuracy read the label from column 0:

    train_ds = with_teacher_targets(train_ds, teacher)
    model.compile(optimizer, loss=DistillationLoss(weight=0.5), metrics=[label_accuracy()])
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import tensorflow as tf
import tf_keras as keras

from edgeasr.errors import EdgeasrError

TEMPERATURE = 2.0
_FLOOR = 1e-7   # posteriors are clipped here before the log that softens them


def softened(probabilities: tf.Tensor, temperature: float = TEMPERATURE) -> tf.Tensor:
    """Posteriors re-softmaxed at `temperature` (the models end in a softmax, so log p are their logits
    up to a constant)."""
    return tf.nn.softmax(tf.math.log(tf.clip_by_value(probabilities, _FLOOR, 1.0)) / temperature, axis=-1)


def with_teacher_targets(dataset: tf.data.Dataset, teacher: keras.Model,
                         temperature: float = TEMPERATURE) -> tf.data.Dataset:
    """(features, labels) batches -> (features, [label, teacher's softened posteriors]) batches."""
    def targets(features, labels):
        soft = softened(teacher(features, training=False), temperature)
        return features, tf.concat([tf.cast(labels, tf.float32)[:, None], soft], axis=-1)

    return dataset.map(targets)


class DistillationLoss(keras.losses.Loss):
    """(1 - weight) x cross-entropy with the labels + weight x T^2 x KL(teacher || student), both
    softened at T (the T^2 keeps the soft term's gradients on the scale of the hard one's)."""

    def __init__(self, weight: float, temperature: float = TEMPERATURE, name: str = "distillation"):
        if not 0.0 < weight <= 1.0:
            raise EdgeasrError(f"the distillation weight must be in (0, 1], got {weight}")
        super().__init__(name=name)
        self.weight, self.temperature = weight, temperature

    def call(self, targets, probabilities):
        hard = keras.losses.sparse_categorical_crossentropy(targets[:, 0], probabilities)
        soft = keras.losses.kl_divergence(targets[:, 1:], softened(probabilities, self.temperature))
        return (1.0 - self.weight) * hard + self.weight * self.temperature ** 2 * soft

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "temperature": self.temperature}


def label_accuracy() -> keras.metrics.Metric:
    """Accuracy against the labels in column 0 of the targets, logged as "accuracy" like a plain run."""
    return keras.metrics.MeanMetricWrapper(accuracy_on_labels, name="accuracy")


def accuracy_on_labels(targets: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Per example, 1 where the top class is the label in column 0 of the targets. A named function,
    not a lambda: the model file records the compiled metric, and tf_keras warns on saving a lambda."""
    return keras.metrics.sparse_categorical_accuracy(targets[:, 0], probabilities)
