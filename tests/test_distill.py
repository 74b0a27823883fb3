"""Distillation loss and targets (edgeasr.train.distill) on hand-computed numbers."""
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from edgeasr.errors import EdgeasrError
from edgeasr.train.distill import DistillationLoss, label_accuracy, softened, with_teacher_targets


def _softmax(logits, temperature=1.0):
    e = np.exp(logits / temperature - np.max(logits / temperature, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_softening_divides_the_logits_by_the_temperature():
    logits = np.array([[2.0, 0.5, -1.0]])
    np.testing.assert_allclose(softened(tf.constant(_softmax(logits), tf.float32), 2.0).numpy(),
                               _softmax(logits, 2.0), rtol=1e-5)


def test_the_loss_mixes_cross_entropy_and_temperature_scaled_kl_by_weight():
    student = _softmax(np.array([[1.0, 0.0, -1.0], [0.2, 0.3, 1.5]]))
    teacher = _softmax(np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), 2.0)
    labels = np.array([0.0, 2.0])
    targets = np.concatenate([labels[:, None], teacher], axis=1).astype(np.float32)
    hard = -np.log(student[[0, 1], [0, 2]])
    student_soft = _softmax(np.log(student), 2.0)
    kl = (teacher * np.log(teacher / student_soft)).sum(axis=1)
    expected = np.mean(0.7 * hard + 0.3 * 4.0 * kl)
    loss = DistillationLoss(0.3)(tf.constant(targets), tf.constant(student, tf.float32))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    accuracy = label_accuracy()
    accuracy.update_state(tf.constant(targets), tf.constant(student, tf.float32))
    assert float(accuracy.result()) == 1.0


def test_a_student_that_already_matches_the_teacher_has_no_soft_loss():
    student = _softmax(np.array([[0.5, 2.0, -1.0]])).astype(np.float32)
    targets = np.concatenate([[[1.0]], softened(tf.constant(student)).numpy()], axis=1)
    assert float(DistillationLoss(1.0)(tf.constant(targets), tf.constant(student))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(EdgeasrError, match="distillation weight"):
        DistillationLoss(0.0)


def test_targets_carry_the_label_and_the_teachers_softened_posteriors():
    inputs = keras.Input((4,))
    teacher = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    features = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    labels = np.array([2, 0, 1, 1, 0])
    dataset = with_teacher_targets(tf.data.Dataset.from_tensor_slices((features, labels)).batch(5), teacher)
    batch_features, targets = next(iter(dataset))
    np.testing.assert_array_equal(batch_features.numpy(), features)
    np.testing.assert_array_equal(targets.numpy()[:, 0], labels)
    np.testing.assert_allclose(targets.numpy()[:, 1:], softened(teacher(features)).numpy(), rtol=1e-5)


def test_a_model_compiled_for_distillation_saves_without_a_lambda(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(optimizer="adam", loss=DistillationLoss(0.5), metrics=[label_accuracy()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save(tmp_path / "model.keras")
    assert not [w for w in caught if "lambda" in str(w.message)]
    assert (tmp_path / "model.keras").stat().st_size > 0
