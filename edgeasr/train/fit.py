"""`edgeasr train`: fit a model on a Speech Commands-layout dataset into a run directory.

Every epoch ends with a checkpoint (model, optimizer, epoch), so a run that was interrupted
continues where it stopped when the same command is run again.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edgeasr.data.pipeline import feature_dataset
from edgeasr.data.speech_commands import Split, load_background_noise, load_split
from edgeasr.errors import EdgeasrError
from edgeasr.eval.metrics import classification_report, plot_confusion
from edgeasr.files import write_json_atomic
from edgeasr.models.registry import build_model
from edgeasr.train.run_dir import RunConfig, RunDir


@dataclass
class TrainingData:
    train: Split
    validation: Split
    test: Split
    noise: list


def load_training_data(config: RunConfig, progress: bool = True) -> TrainingData:
    root = Path(config.dataset)
    splits = {name: load_split(root, config.data, name, progress) for name in ("train", "validation", "test")}
    for name, split in splits.items():
        print(f"{name}: {split.report.summary()}", file=sys.stderr)
    missing = [word for i, word in enumerate(config.data.labels) if i >= 2 and i not in splits["train"].labels]
    if missing:
        raise EdgeasrError(f"{root}: no training clips of keyword(s) {', '.join(missing)}")
    return TrainingData(**splits, noise=load_background_noise(root, config.data.sample_rate))


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer + epoch and appends the epoch's metrics to history.json."""

    def __init__(self, run_dir: RunDir, manager: tf.train.CheckpointManager, epoch: tf.Variable):
        super().__init__()
        self.run_dir, self.manager, self.epoch = run_dir, manager, epoch

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        self.run_dir.append_history({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})


def compile_model(model: keras.Model, config: RunConfig, steps_per_epoch: int) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(
        config.train.learning_rate, decay_steps=max(1, config.train.epochs * steps_per_epoch)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )


def train(run_dir, config: RunConfig, progress: bool = True, data: TrainingData = None) -> dict:
    """Train (or resume) the run in `run_dir`; returns the test report."""
    config = config.with_model_shape()
    data = data or load_training_data(config, progress)
    run = RunDir(run_dir)
    resuming = run.claim(config)
    keras.utils.set_random_seed(config.train.seed)
    train_ds = feature_dataset(data.train.waves, data.train.labels, config.frontend, config.train.batch_size,
                               config.augment, data.noise, seed=config.train.seed)
    val_ds = feature_dataset(data.validation.waves, data.validation.labels, config.frontend, config.train.batch_size)

    model = build_model(config.model)
    compile_model(model, config, steps_per_epoch=int(np.ceil(len(data.train.labels) / config.train.batch_size)))
    epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, run.checkpoints, max_to_keep=2)
    if resuming and manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
        print(f"resuming {run.path} after epoch {int(epoch.numpy())}", file=sys.stderr)

    try:
        model.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs, initial_epoch=int(epoch.numpy()),
                  callbacks=[EpochCheckpoint(run, manager, epoch)], verbose=_verbosity(progress))
    except KeyboardInterrupt:
        print(f"\ninterrupted after epoch {int(epoch.numpy())}; run the same command to resume", file=sys.stderr)
        raise
    model.save(run.model_path)
    return evaluate_run(run, model, config, data.test)


def evaluate_run(run: RunDir, model: keras.Model, config: RunConfig, test: Split) -> dict:
    """Test accuracy and confusion matrix, written as JSON and PNG into the run directory."""
    test_ds = feature_dataset(test.waves, test.labels, config.frontend, config.train.batch_size)
    predictions = np.argmax(model.predict(test_ds, verbose=0), axis=-1)
    report = classification_report(test.labels, predictions, config.data.labels)
    write_json_atomic(run.test_report_path, report)
    plot_confusion(report, run.confusion_plot_path, title=f"{config.model.name}: test accuracy {report['accuracy']:.1%}")
    return report


def _verbosity(progress: bool) -> int:
    """A live progress bar on a terminal, one line per epoch in logs and CI."""
    if not progress:
        return 0
    return 1 if sys.stderr.isatty() else 2
