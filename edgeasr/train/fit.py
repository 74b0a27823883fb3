"""`edgeasr train`: fit a model on a Speech Commands-layout dataset into a run directory.

A run is a list of stages (see `plan_stages`): float training, one-stage QAT, or the two stages
of "Sub 8-bit quantization of streaming keyword spotting models" (tanh-quantised weights only,
then weights, inputs, activations and folded BN gains). Each stage checkpoints every epoch in
its own folder, so an interrupted run continues where it stopped when the same command is run
again, and a finished stage is not trained twice.
"""
import sys
from contextlib import contextmanager
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
from edgeasr.models.registry import KEYWORD_MODELS, build_model
from edgeasr.quant.mracos import add_mracos
from edgeasr.quant.policy import check_16bit_activations
from edgeasr.quant.qat import check_rules_name_layers, freeze_batch_norm, quantize_model, transfer_weights
from edgeasr.train.distill import DistillationLoss, label_accuracy, with_teacher_targets
from edgeasr.train.numerics import describe, training_numerics
from edgeasr.train.run_dir import RunConfig, RunDir


@dataclass
class TrainingData:
    train: Split
    validation: Split
    test: Split
    noise: list


@dataclass(frozen=True)
class Stage:
    name: str  # also the checkpoint folder
    quantize: str  # "none", or a quantize_model stage: "weights" or "full"
    epochs: int
    frozen_bn_epochs: int = 0  # its last epochs train folded layers on the moving statistics


def plan_stages(config: RunConfig) -> list:
    epochs, stages, frozen = config.train.epochs, config.train.stages, config.train.frozen_bn_epochs
    if epochs < 0:
        raise EdgeasrError(f"--epochs must be 0 or more, got {epochs}")
    if stages not in (1, 2):
        raise EdgeasrError(f"--stages must be 1 or 2, got {stages}")
    if not 0 <= frozen <= epochs:
        raise EdgeasrError(f"--frozen-bn-epochs {frozen}: need 0 to the {epochs} epochs of a stage")
    if stages == 1 and config.train.stage2_lr_scale != 1.0:
        raise EdgeasrError(f"--stage2-lr-scale {config.train.stage2_lr_scale:g}: scales stage 2 of --stages 2; "
                           f"this run has one stage")
    if config.policy.is_float:
        if stages != 1:
            raise EdgeasrError("two-stage training needs a quantized --policy, not 'float'")
        if frozen:
            raise EdgeasrError("--frozen-bn-epochs freezes folded BatchNorm layers: it needs a quantized --policy")
        if config.train.mracos_weight:
            raise EdgeasrError("--mracos-weight pulls weights toward their quantization grid: it needs a quantized "
                               "--policy")
        return [Stage("float", "none", epochs)]
    check_16bit_activations(config.policy, post_training=False)       # no QAT with 16 bits converts
    # BatchNorm is folded into the convolutions only where activations are quantized too (stage
    # "full"): that is where its statistics can be frozen.
    if stages == 2:
        return [Stage("stage1", "weights", epochs), Stage("stage2", "full", epochs, frozen)]
    return [Stage("qat", "full", epochs, frozen)]


def load_training_data(config: RunConfig, progress: bool = True) -> TrainingData:
    root = Path(config.dataset)
    splits = {name: load_split(root, config.data, name, progress) for name in ("train", "validation", "test")}
    for name, split in splits.items():
        print(f"{name}: {split.report.summary()}", file=sys.stderr)
    empty = [name for name, split in splits.items() if not len(split.labels)]
    if empty:
        raise EdgeasrError(f"{root}: no {' or '.join(empty)} clips; a dataset names its held-out clips in "
                           f"validation_list.txt and testing_list.txt (the Speech Commands layout) and trains on "
                           f"the rest")
    missing = [word for i, word in enumerate(config.data.labels) if i >= 2 and i not in splits["train"].labels]
    if missing:
        raise EdgeasrError(f"{root}: no training clips of keyword(s) {', '.join(missing)}")
    noise = load_background_noise(root, config.data.sample_rate)
    if not noise:
        print(f"warning: {root}: no _background_noise_ recordings: the _silence_ clips are digital silence and "
              f"training adds no noise", file=sys.stderr)
    return TrainingData(**splits, noise=noise)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer + epoch and appends the epoch's metrics to history.json."""

    def __init__(self, run_dir: RunDir, manager: tf.train.CheckpointManager, epoch: tf.Variable, stage: str):
        super().__init__()
        self.run_dir, self.manager, self.epoch, self.stage = run_dir, manager, epoch, stage

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        self.run_dir.append_history({"stage": self.stage, "epoch": epoch + 1, **metrics})


def compile_model(model: keras.Model, learning_rate: float, total_steps: int, distill_weight: float = 0.0) -> None:
    """Adam on a cosine schedule; cross-entropy, or the distillation loss when distill_weight > 0
    (the datasets then carry the teacher's posteriors, see `with_teacher`)."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))
    if distill_weight:
        loss, metrics = DistillationLoss(distill_weight), [label_accuracy()]
    else:
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(), ["accuracy"]
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics)


def train(run_dir, config: RunConfig, progress: bool = True, data: TrainingData = None) -> dict:
    """Train (or resume) the run in `run_dir`, stage by stage; returns the test report. Everything
    that can refuse the configuration runs before the run directory is claimed (config.json
    written), so a corrected command is not refused as 'a different configuration'."""
    config = config.with_model_shape()
    if config.model.name not in KEYWORD_MODELS:
        raise EdgeasrError(f"train trains keyword models: {', '.join(KEYWORD_MODELS)}, not {config.model.name!r} "
                           f"(the Conformer: `edgeasr train-asr`)")
    stages = plan_stages(config)
    RunDir(run_dir).refuse_if_training_elsewhere()           # all before minutes of loading data
    RunDir(run_dir).refuse_another_configuration(config)
    refuse_inconsistent_stage_epochs(RunDir(run_dir), stages)
    if config.train.frozen_bn_epochs and not any(isinstance(layer, keras.layers.BatchNormalization)
                                                 for layer in build_model(config.model).layers):
        raise EdgeasrError(f"--frozen-bn-epochs: {config.model.name} has no BatchNormalization layers to freeze")
    data = data or load_training_data(config, progress)
    keras.utils.set_random_seed(config.train.seed)
    train_ds = feature_dataset(data.train.waves, data.train.labels, config.frontend, config.train.batch_size,
                               config.augment, data.noise, seed=config.train.seed)
    val_ds = feature_dataset(data.validation.waves, data.validation.labels, config.frontend, config.train.batch_size)

    float_model = build_model(config.model)
    start = starting_model(config)
    if start is not None:
        transfer_weights(start, float_model)
    train_ds, val_ds = with_teacher(config, start, train_ds, val_ds)
    if not config.policy.is_float:
        check_rules_name_layers(float_model, config.policy)
    with RunDir(run_dir).locked() as run, resume_hint_on_interrupt(run):
        run.claim(config)
        model, trained = float_model, False
        for stage in stages:
            previous, model = model, _stage_model(float_model, config, stage)
            if previous is not model:
                transfer_weights(previous, model)
            trained |= _fit_stage(run, model, stage, config, train_ds, val_ds, progress)
        model = saved_model(run, model, trained)
        return evaluate_run(run, model, config, data.test)


def refuse_inconsistent_stage_epochs(run: RunDir, stages: list) -> None:
    """More epochs for a stage whose successor already trained from its end would be trained and
    then lost: the later stage resumes from its own checkpoint, which never saw them. And an
    unfinished multi-stage run asked for fewer epochs than a stage already trained would give its
    stages different lengths (stage 1 kept at 3, stage 2 stopped at 2)."""
    trained = run.trained_epochs()
    most = max(trained.values(), default=0)
    if len(stages) > 1 and not run.model_path.exists() and stages[0].epochs < most:
        raise EdgeasrError(f"{run.path}: a stage of this unfinished run already trained {most} epochs; "
                           f"--epochs {stages[0].epochs} would give its stages different lengths. Keep --epochs "
                           f"{most} to resume, or train a new --run-dir")
    for index, stage in enumerate(stages):
        later = next((s.name for s in stages[index + 1:] if trained.get(s.name)), None)
        done = trained.get(stage.name, 0)
        if later and done < stage.epochs:
            raise EdgeasrError(f"{run.path}: {later} already trained from the end of {stage.name} ({done} epochs); "
                               f"{stage.epochs} epochs of {stage.name} would not reach the model. Keep --epochs "
                               f"{done} to resume, or train a new --run-dir")


def starting_model(config: RunConfig):
    """The --init-from run's model, or None. Refused when that run's classes are not this run's,
    in the same order: its output layer would score other words (same shapes, so the weights
    would transfer without a word)."""
    if not config.train.init_from:
        return None
    start = RunDir(config.train.init_from)
    theirs, ours = list(start.read_config().data.labels), list(config.data.labels)
    if theirs != ours:
        raise EdgeasrError(f"--init-from {start.path}: its classes are {', '.join(theirs)}; this run's are "
                           f"{', '.join(ours)}; start from a run with the same --keywords, in the same order")
    return start.load_model()


def with_teacher(config: RunConfig, teacher, train_ds, val_ds) -> tuple:
    """The datasets, with the teacher's (the --init-from model's) posteriors added to the targets
    when distilling."""
    if not config.train.distill_weight:
        return train_ds, val_ds
    if teacher is None:
        raise EdgeasrError("distillation learns from the --init-from model: give the trained float run to start from")
    return with_teacher_targets(train_ds, teacher), with_teacher_targets(val_ds, teacher)


def saved_model(run, model: keras.Model, trained: bool) -> keras.Model:
    """Write model.keras and return the model to evaluate. A finished run keeps its file, and is
    evaluated from it: a rewritten file would make every model converted from it look stale, and
    the model rebuilt from the run's policy may not be the one it trained (a policy is read with
    today's meaning of its fields: Dense kernels were per tensor until they followed the
    granularity), while the file keeps the quantizers its weights were trained with."""
    if trained or not run.model_path.exists():
        model.save(run.model_path)
        return model
    return run.load_model()


def _stage_model(float_model: keras.Model, config: RunConfig, stage: Stage) -> keras.Model:
    if stage.quantize == "none":
        return float_model
    return quantize_model(float_model, config.policy, stage=stage.quantize)


def _fit_stage(run: RunDir, model, stage: Stage, config: RunConfig, train_ds, val_ds, progress: bool) -> bool:
    if config.train.mracos_weight:
        add_mracos(model, config.train.mracos_weight)
    compile_model(model, stage_learning_rate(config.train, stage), stage.epochs * int(train_ds.cardinality()),
                  config.train.distill_weight)
    return fit_checkpointed(run, model, stage, train_ds, val_ds, _verbosity(progress), f"policy {config.policy.name}")


def stage_learning_rate(train_config, stage: Stage) -> float:
    """The stage's peak learning rate. Stage 2 continues a converged stage 1: restarted at the full
    rate, the FFN lost 2-3 validation points in stage 2's first epoch and did not win them back."""
    return train_config.learning_rate * (train_config.stage2_lr_scale if stage.name == "stage2" else 1.0)


def fit_checkpointed(run: RunDir, model, stage: Stage, train_ds, val_ds, verbose: int, about: str) -> bool:
    """Fit a compiled model for the stage's epochs, checkpointing every epoch into the stage's
    folder and resuming after the last checkpoint; False when the stage was already finished.
    The stage's last `frozen_bn_epochs` train the folded layers on their moving statistics
    (`freeze_batch_norm`), the graph inference and the converter use."""
    epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, run.checkpoints / stage.name, max_to_keep=2)
    if manager.latest_checkpoint:
        # expect_partial: a finished stage never builds the optimizer slots the checkpoint holds
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
    done = int(epoch.numpy())
    if done >= stage.epochs:
        if done > stage.epochs:
            print(f"{stage.name}: finished with {done} epochs, more than the {stage.epochs} asked; a trained "
                  f"run is not shortened (train another --run-dir for fewer)", file=sys.stderr)
        elif done:
            print(f"{stage.name}: finished ({done} epochs)", file=sys.stderr)
        return False
    frozen_note = (f", BatchNorm statistics frozen for the last {stage.frozen_bn_epochs}"
                   if stage.frozen_bn_epochs else "")
    print(f"== {stage.name}: {stage.epochs} epochs{frozen_note}, {about}", file=sys.stderr)
    if done:
        print(f"{stage.name}: resuming after epoch {done} of {stage.epochs}", file=sys.stderr)
    warn_if_numerics_changed(run, stage.name, done + 1)
    for end, frozen in frozen_bn_segments(stage.epochs, stage.frozen_bn_epochs):
        if int(epoch.numpy()) >= end:
            continue
        if frozen:
            freeze_batch_norm(model)
        model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=int(epoch.numpy()),
                  callbacks=[EpochCheckpoint(run, manager, epoch, stage.name)], verbose=keras_verbosity(verbose))
    return True


def warn_if_numerics_changed(run: RunDir, stage: str, from_epoch: int) -> None:
    """Record the numerics the epochs from here are trained with; a run whose earlier epochs had
    others goes on, but will not be bit-identical to one trained under either."""
    now = training_numerics()
    before = run.note_numerics(now, stage, from_epoch)
    if before:
        print(f"warning: {run.path} trained its earlier epochs with {describe(before)}; this process has "
              f"{describe(now)}. Training goes on, but the run will not be bit-identical to one trained under "
              f"either (docs/toolchain_facts.md)", file=sys.stderr)


@contextmanager
def resume_hint_on_interrupt(run: RunDir):
    """Ctrl-C (or SIGTERM) anywhere in a run, inside an epoch or between stages, says where the
    run stopped and how to go on."""
    try:
        yield run
    except KeyboardInterrupt:
        history = run.read_history()
        where = f"after {history[-1]['stage']} epoch {history[-1]['epoch']}" if history else "before its first epoch"
        print(f"\ninterrupted {where}; run the same command to resume", file=sys.stderr)
        raise


def keras_verbosity(verbose: int) -> int:
    """Keras's per-step bar on a terminal; one line per epoch in a log or pipe, where the bar's
    carriage returns wrote a line per step."""
    return 1 if verbose and sys.stdout.isatty() else (2 if verbose else 0)


def frozen_bn_segments(epochs: int, frozen_bn_epochs: int) -> list:
    """[(last epoch, BN statistics frozen)] of a stage whose last `frozen_bn_epochs` epochs freeze them."""
    unfrozen = epochs - frozen_bn_epochs
    return ([(unfrozen, False)] if unfrozen else []) + ([(epochs, True)] if frozen_bn_epochs else [])


def evaluate_run(run: RunDir, model: keras.Model, config: RunConfig, test: Split) -> dict:
    """Test accuracy and confusion matrix, written as JSON and PNG into the run directory."""
    test_ds = feature_dataset(test.waves, test.labels, config.frontend, config.train.batch_size)
    predictions = np.argmax(model.predict(test_ds, verbose=0), axis=-1)
    report = classification_report(test.labels, predictions, config.data.labels)
    write_json_atomic(run.test_report_path, report)
    title = f"{config.model.name} ({config.policy.name}): test accuracy {report['accuracy']:.1%}"
    plot_confusion(report, run.confusion_plot_path, title=title)
    return report


def _verbosity(progress: bool) -> int:
    """A live progress bar on a terminal, one line per epoch in logs and CI."""
    if not progress:
        return 0
    return 1 if sys.stderr.isatty() else 2
