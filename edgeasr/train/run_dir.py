"""A run directory: everything one training run wrote, enough to resume it or convert it.

    RUN/config.json         RunConfig (dataset, frontend, model, data, training, augmentation)
    RUN/checkpoints/STAGE/  model + optimizer + epoch, one per epoch (the last two kept), per stage
    RUN/history.json        per-epoch loss and accuracy
    RUN/numerics.json       what decided the floating-point results (edgeasr.train.numerics), per resume
    RUN/model.keras         the trained model
    RUN/test_report.json    accuracy and confusion matrix on the test split
    RUN/confusion.png       the same matrix as a picture
"""
import fcntl
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import edgeasr
from edgeasr.audio.augment import AugmentConfig
from edgeasr.audio.frontend import FrontendConfig
from edgeasr.configs import from_dict, to_dict
from edgeasr.files import read_json, write_json_atomic
from edgeasr.data.speech_commands import DataConfig
from edgeasr.errors import EdgeasrError
from edgeasr.models.registry import ModelConfig
from edgeasr.quant.policy import PrecisionPolicy, preset


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # per stage
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    stages: int = 1  # 2: the sub-8-bit paper's schedule (tanh weights only, then everything)
    stage2_lr_scale: float = 1.0  # stage 2's peak learning rate, as a share of learning_rate
    init_from: str = ""  # a trained run directory whose weights start this run (QAT fine-tuning)
    mracos_weight: float = 0.0
    distill_weight: float = 0.0  # share of the loss that follows init_from's softened posteriors (0: off)
    frozen_bn_epochs: int = 0  # last epochs of each quantized stage on the moving statistics (inference's graph)


def epochs_per_stage(total_epochs: int, stages: int) -> int:
    """Each stage's share of a total epoch budget; a total the stages cannot split evenly is an
    error rather than silently shortened."""
    if stages < 1 or total_epochs < stages or total_epochs % stages:
        raise EdgeasrError(f"{total_epochs} epochs cannot be split evenly into {stages} stage(s): "
                           f"give a multiple of {max(stages, 1)}")
    return total_epochs // stages


@dataclass(frozen=True)
class RunConfig:
    dataset: str = ""
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    policy: PrecisionPolicy = field(default_factory=lambda: preset("float"))

    def with_model_shape(self) -> "RunConfig":
        """The model's input and output sizes follow from the frontend and the label set."""
        frames = self.frontend.num_frames(self.data.clip_samples)
        model = replace(self.model, input_shape=(frames, self.frontend.n_mels), num_classes=len(self.data.labels))
        return replace(self, model=model)


PATH_FIELDS = ("dataset", "train_manifest", "validation_manifest", "test_manifest")   # of run configs


def with_absolute_paths(config):
    """The run config (keyword or ASR) with its data paths and init_from absolute: a run directory
    is used from other folders than the one it was trained in (convert, validate, eval-asr)."""
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path else path

    paths = {name: absolute(getattr(config, name)) for name in PATH_FIELDS if hasattr(config, name)}
    return replace(config, **paths, train=replace(config.train, init_from=absolute(config.train.init_from)))


def differing_settings(before: dict, after: dict, ignore=(), prefix: str = "") -> list:
    """"name: old -> new" for each setting (dotted path into nested dicts) that differs."""
    changed = []
    for key in sorted(set(before) | set(after)):
        name, old, new = f"{prefix}{key}", before.get(key), after.get(key)
        if name in ignore or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += differing_settings(old, new, ignore, f"{name}.")
        else:
            changed.append(f"{name}: {old!r} -> {new!r}")
    return changed


LOCK_NAME = ".lock"


class RunDir:
    TRAIN_COMMAND = "edgeasr train"         # what finishes (resumes) a run of this kind

    def __init__(self, path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.checkpoints = self.path / "checkpoints"
        self.history_path = self.path / "history.json"
        self.numerics_path = self.path / "numerics.json"
        self.model_path = self.path / "model.keras"
        self.test_report_path = self.path / "test_report.json"
        self.confusion_plot_path = self.path / "confusion.png"

    def write_config(self, config: RunConfig) -> None:
        write_json_atomic(self.config_path, {"edgeasr_version": edgeasr.__version__, **to_dict(config)})

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise EdgeasrError(f"{self.path}: not an edgeasr run directory (no config.json)")
        values = read_json(self.config_path)
        values.pop("edgeasr_version", None)
        return from_dict(RunConfig, values)

    def load_model(self):
        """The trained model, float or QAT."""
        from edgeasr.quant.qat import load_model

        if not self.model_path.exists():
            raise EdgeasrError(f"{self.path}: no trained model ({self.model_path.name}); finish "
                               f"`{self.TRAIN_COMMAND}` first")
        return load_model(self.model_path, compile=False)

    def read_history(self) -> list:
        return read_json(self.history_path) if self.history_path.is_file() else []

    def append_history(self, entry: dict) -> None:
        write_json_atomic(self.history_path, self.read_history() + [entry])

    def read_numerics(self) -> list:
        """[{stage, from_epoch, tensorflow, kernels, threads, cpu}]: one entry per change of numerics; empty
        for runs trained before runs recorded them."""
        return read_json(self.numerics_path) if self.numerics_path.is_file() else []

    def note_numerics(self, numerics: dict, stage: str, from_epoch: int) -> dict:
        """Record the numerics training goes on with from `stage`'s epoch `from_epoch` unless they are the
        ones recorded last; returns those when training goes on under others (for a warning), else {}.
        Facts added to the record after the run began (e.g. the rsqrt fingerprint) are unknown, not changed."""
        recorded = self.read_numerics()
        last = {key: recorded[-1][key] for key in numerics if key in recorded[-1]} if recorded else {}
        changed = any(numerics[key] != value for key, value in last.items())
        if changed or not recorded:
            write_json_atomic(self.numerics_path, recorded + [{"stage": stage, "from_epoch": from_epoch, **numerics}])
        return last if changed else {}

    def claim(self, config: RunConfig) -> bool:
        """Write `config`, or check it matches the one already here; True when resuming.

        Only the number of epochs may differ, so an interrupted run can be resumed or extended; a
        run asked for fewer epochs than it trained keeps recording the epochs it trained.
        A folder that holds a config but nothing trained (a run that failed before its first
        epoch) takes the new config.
        """
        config = with_absolute_paths(config)
        if not self.config_path.is_file() or not self.holds_training():
            self.write_config(config)
            return False
        self.refuse_another_configuration(config)
        existing = self.read_config()
        recorded = max(config.train.epochs, max(self.trained_epochs().values(), default=0),
                       existing.train.epochs if self.model_path.exists() else 0)
        self.write_config(replace(config, train=replace(config.train, epochs=recorded)))
        return True

    def trained_epochs(self) -> dict:
        """{stage: the last epoch its history records}."""
        trained = {}
        for entry in self.read_history():
            trained[entry["stage"]] = max(trained.get(entry["stage"], 0), int(entry["epoch"]))
        return trained

    def refuse_another_configuration(self, config: RunConfig) -> None:
        """Raise, naming the settings, when this folder holds a trained run configured otherwise than
        `config` (the epochs aside). train calls it before loading data, claim again when it writes."""
        if not self.config_path.is_file() or not self.holds_training():
            return
        config, existing = with_absolute_paths(config), with_absolute_paths(self.read_config())
        if replace(existing, train=replace(existing.train, epochs=config.train.epochs)) != config:
            changed = differing_settings(to_dict(existing), to_dict(config), ignore={"train.epochs"})
            raise EdgeasrError(
                f"{self.path} holds a run with a different configuration ({'; '.join(changed[:6])}); choose a "
                f"new --run-dir (only --epochs may change when resuming)"
            )

    @contextmanager
    def locked(self):
        """Hold the run's lock while training: a second process training the same folder is refused
        (two at once interleaved their epochs in one history and checkpoint folder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_NAME, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise EdgeasrError(f"{self.path}: another process is training this run; wait for it to finish "
                                   f"or choose another --run-dir") from None
            yield self

    def refuse_if_training_elsewhere(self) -> None:
        """The lock tried and let go at once: train checks it before minutes of loading data, then
        takes it for real (`locked`) when it claims the folder."""
        if (self.path / LOCK_NAME).exists():
            with self.locked():
                pass

    def holds_training(self) -> bool:
        """Whether any epoch was trained here: a checkpoint, a history entry or a model file."""
        return (self.model_path.exists() or bool(self.read_history())
                or (self.checkpoints.is_dir() and any(self.checkpoints.rglob("*.index"))))
