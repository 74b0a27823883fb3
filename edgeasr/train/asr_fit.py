"""`edgeasr train-asr`: CTC training of a Conformer on JSONL manifests, into a run directory.

The run directory follows edgeasr/train/run_dir.py (config.json, checkpoints/STAGE/ per epoch,
history.json, model.keras; rerun the same command to resume), plus:

    RUN/tokenizer.json     the tokenizer (ids <-> text), also embedded in converted models
    RUN/test_report.json   WER and CER on the test manifest (greedy CTC decoding)

Stages are those of `edgeasr train` (fit.plan_stages): float, one-stage QAT, or two-stage QAT,
through edgeasr.quant.qat.quantize_model; `init_from` starts from a trained (float) run.
"""
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import tf_keras as keras

from edgeasr.audio.augment import AugmentConfig
from edgeasr.audio.frontend import FrontendConfig
from edgeasr.configs import from_dict
from edgeasr.data.asr_pipeline import AsrSplit, SpecAugmentConfig, asr_dataset, ctc_loss, load_asr_split
from edgeasr.data.tokenizer import Tokenizer, build_tokenizer
from edgeasr.errors import EdgeasrError
from edgeasr.files import read_json, write_json_atomic
from edgeasr.models.conformer import ConformerConfig, build_conformer, conformer_config, output_frames
from edgeasr.quant.policy import PrecisionPolicy, preset
from edgeasr.quant.qat import quantize_model, transfer_weights
from edgeasr.train.fit import (fit_checkpointed, plan_stages, refuse_inconsistent_stage_epochs,
                                resume_hint_on_interrupt, saved_model, stage_learning_rate)
from edgeasr.train.run_dir import RunDir, TrainConfig

# Waveform augmentation for ASR: gain always, noise sometimes; no time shift (it would push
# speech past the end of an utterance).
ASR_AUGMENT = AugmentConfig(time_shift_ms=0.0, noise_probability=0.5, snr_db_min=10.0, snr_db_max=30.0)
NOISE_SECONDS = 30.0


@dataclass(frozen=True)
class AsrTrainConfig:
    tokenizer: str = "char"            # char | sentencepiece
    sentencepiece_vocab: int = 128
    warmup_steps: int = 400
    clipnorm: float = 5.0
    noise: bool = True                 # mix coloured noise into training audio (ASR_AUGMENT)
    spec_augment: bool = True
    limit_train: int = 0               # use only the first N training utterances (0: all)
    limit_validation: int = 300        # validation loss each epoch on the first N utterances (0: all)


@dataclass(frozen=True)
class AsrRunConfig:
    train_manifest: str = ""
    validation_manifest: str = ""
    test_manifest: str = ""
    model_size: str = "xs"
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ConformerConfig = field(default_factory=ConformerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=32, learning_rate=2e-3))
    asr: AsrTrainConfig = field(default_factory=AsrTrainConfig)
    augment: AugmentConfig = ASR_AUGMENT
    spec: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    policy: PrecisionPolicy = field(default_factory=lambda: preset("float"))


def asr_run_config(train_manifest, validation_manifest, test_manifest, size: str = "xs", **sections
                   ) -> AsrRunConfig:
    """A config for a Conformer `size` whose input width follows the frontend."""
    frontend = sections.pop("frontend", FrontendConfig())
    model = sections.pop("model", conformer_config(size, num_mels=frontend.n_mels))
    return AsrRunConfig(train_manifest=str(train_manifest), validation_manifest=str(validation_manifest),
                        test_manifest=str(test_manifest), model_size=size, frontend=frontend, model=model,
                        **sections)


class AsrRunDir(RunDir):
    """A RunDir whose config is an AsrRunConfig, with a tokenizer next to it."""
    TRAIN_COMMAND = "edgeasr train-asr"

    def __init__(self, path):
        super().__init__(path)
        self.tokenizer_path = self.path / "tokenizer.json"

    def read_config(self) -> AsrRunConfig:
        if not self.config_path.is_file():
            raise EdgeasrError(f"{self.path}: not an edgeasr run directory (no config.json)")
        values = read_json(self.config_path)
        values.pop("edgeasr_version", None)
        if "train_manifest" not in values:
            raise EdgeasrError(f"{self.path}: a keyword run, not a speech-recognition run (train-asr)")
        return from_dict(AsrRunConfig, values)

    def read_tokenizer(self) -> Tokenizer:
        return Tokenizer.from_dict(read_json(self.tokenizer_path))

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        write_json_atomic(self.tokenizer_path, tokenizer.to_dict())


def is_asr_run(path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and "train_manifest" in read_json(config)


@dataclass
class AsrData:
    train: AsrSplit
    validation: AsrSplit
    test: Optional[AsrSplit]


def check_init_from(config: AsrRunConfig) -> None:
    """The --init-from run must have this run's size and tokenizer: its weights are transferred by
    shape and its tokens are the output layer's (taken silently, config.json recorded the other)."""
    if not config.train.init_from:
        return
    start = AsrRunDir(config.train.init_from).read_config()
    mismatched = [f"--{option} {theirs} (this run: {ours})" for option, theirs, ours in (
        ("size", start.model_size, config.model_size),
        ("tokenizer", start.asr.tokenizer, config.asr.tokenizer)) if theirs != ours]
    if mismatched:
        raise EdgeasrError(f"--init-from {config.train.init_from}: that run has {', '.join(mismatched)}; give the "
                           f"same options to fine-tune it")


def _tokenizer_for(run: AsrRunDir, config: AsrRunConfig, resuming: bool) -> Tokenizer:
    """The run's tokenizer: read back when resuming (not from a run that failed before training:
    its command may have been corrected), else taken from init_from, else built."""
    if resuming and run.tokenizer_path.is_file():
        return run.read_tokenizer()
    if config.train.init_from:
        return AsrRunDir(config.train.init_from).read_tokenizer()
    from edgeasr.data.manifest import read_manifest

    texts = [u.text for u in read_manifest(config.train_manifest, check_audio=False)]
    tokenizer = build_tokenizer(config.asr.tokenizer, texts, config.asr.sentencepiece_vocab)
    if tokenizer.kind == "sentencepiece" and tokenizer.vocab_size - 1 < config.asr.sentencepiece_vocab:
        print(f"tokenizer: {tokenizer.vocab_size - 1} SentencePiece pieces, fewer than the "
              f"{config.asr.sentencepiece_vocab} asked: the training text allows no more", file=sys.stderr)
    return tokenizer


def load_asr_data(config: AsrRunConfig, tokenizer: Tokenizer) -> AsrData:
    limit = config.asr.limit_train or None
    train = load_asr_split(config.train_manifest, tokenizer, config.frontend, limit)
    validation = load_asr_split(config.validation_manifest, tokenizer, config.frontend,
                                config.asr.limit_validation or None)
    test = load_asr_split(config.test_manifest, tokenizer, config.frontend) if config.test_manifest else None
    print(f"utterances: train {len(train)}, validation {len(validation)}, test {len(test) if test else 0}",
          file=sys.stderr)
    warn_unspellable(tokenizer, train.texts, config)
    return AsrData(train, validation, test)


def warn_unspellable(tokenizer: Tokenizer, texts, config: AsrRunConfig) -> None:
    """Say how many training texts the tokenizer spells with <unk> (an --init-from run's SentencePiece
    model meets letters of other data): the model would learn to emit it, and those letters are lost."""
    unspellable = tokenizer.unspellable(texts)
    if unspellable:
        origin = (f"the --init-from run's ({config.train.init_from})" if config.train.init_from
                  else "the run's")
        print(f"warning: {len(unspellable)} of {len(texts)} training texts hold letters {origin} SentencePiece "
              f"tokenizer ({tokenizer.vocab_size} tokens) cannot spell, e.g. {unspellable[0]!r}; they are learnt "
              f"as <unk> and lost from transcripts", file=sys.stderr)


def training_noise(config: AsrRunConfig) -> Optional[np.ndarray]:
    """White, pink and brown noise end to end (seeded), or None when noise is off."""
    if not config.asr.noise:
        return None
    from edgeasr.data.synth import colored_noise

    samples = int(NOISE_SECONDS * config.frontend.sample_rate)
    rng = np.random.default_rng(config.train.seed)
    return np.concatenate([colored_noise(samples, exponent, rng) for exponent in (0.0, 1.0, 2.0)])


def compile_ctc(model: keras.Model, config: AsrRunConfig, total_steps: int, learning_rate: float) -> None:
    """Adam, linear warm-up to `learning_rate` then cosine decay, global gradient clipping, CTC loss."""
    warmup = min(config.asr.warmup_steps, max(1, total_steps // 5))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), warmup_target=learning_rate,
        warmup_steps=warmup, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=config.asr.clipnorm), loss=ctc_loss)


def train_asr(run_dir, config: AsrRunConfig, progress: bool = True, data: Optional[AsrData] = None) -> dict:
    """Train (or resume) the ASR run in `run_dir`, stage by stage; returns the test report."""
    stages = plan_stages(config)
    check_init_from(config)
    refuse_inconsistent_stage_epochs(AsrRunDir(run_dir), stages)
    with AsrRunDir(run_dir).locked() as run, resume_hint_on_interrupt(run):
        return _train_asr_run(run, config, stages, progress, data)


def _train_asr_run(run: "AsrRunDir", config: AsrRunConfig, stages, progress: bool, data: Optional[AsrData]) -> dict:
    resuming = run.claim(config)
    tokenizer = _tokenizer_for(run, config, resuming)
    run.write_tokenizer(tokenizer)
    data = data or load_asr_data(config, tokenizer)
    keras.utils.set_random_seed(config.train.seed)
    spec = config.spec if config.asr.spec_augment else None
    train_ds = asr_dataset(data.train, config.frontend, output_frames, config.train.batch_size, config.augment,
                           spec, training_noise(config), seed=config.train.seed, training=True)
    val_ds = asr_dataset(data.validation, config.frontend, output_frames, config.train.batch_size)
    steps_per_epoch = -(-len(data.train) // config.train.batch_size)

    float_model = build_conformer(config.model, tokenizer.vocab_size)
    if config.train.init_from:
        transfer_weights(AsrRunDir(config.train.init_from).load_model(), float_model)
    model, trained = float_model, False
    for stage in stages:
        previous = model
        model = float_model if stage.quantize == "none" else quantize_model(float_model, config.policy,
                                                                             stage=stage.quantize)
        if previous is not model:
            transfer_weights(previous, model)
        trained |= _fit_stage(run, model, stage, config, train_ds, val_ds, steps_per_epoch, progress)
    model = saved_model(run, model, trained)
    report = {}
    if data.test is not None:
        from edgeasr.eval.asr import keras_transcripts, error_rates

        hypotheses = keras_transcripts(model, data.test, config.frontend, tokenizer)
        report = error_rates(data.test.texts, hypotheses)
        write_json_atomic(run.test_report_path, report)
    return report


def _fit_stage(run: AsrRunDir, model, stage, config: AsrRunConfig, train_ds, val_ds, steps_per_epoch: int,
               progress: bool) -> bool:
    """One stage, checkpointed every epoch and resumed like `edgeasr train`'s stages."""
    compile_ctc(model, config, stage.epochs * steps_per_epoch, stage_learning_rate(config.train, stage))
    return fit_checkpointed(run, model, stage, train_ds, val_ds, 1 if progress else 0,
                            f"{steps_per_epoch} steps each, policy {config.policy.name}")


def with_policy(config: AsrRunConfig, policy, stages: int, epochs: int, init_from, learning_rate: float
                ) -> AsrRunConfig:
    """A QAT config that fine-tunes the float run `init_from`."""
    policy = preset(policy) if isinstance(policy, str) else policy
    train = replace(config.train, stages=stages, epochs=epochs, init_from=str(init_from),
                    learning_rate=learning_rate)
    return replace(config, policy=policy, train=train)
