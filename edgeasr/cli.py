"""The `edgeasr` command. Thin: parses options, calls library functions, reports errors plainly."""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import functools
import json
import math
import signal
import sys
import threading
from pathlib import Path

import click

from edgeasr.errors import EdgeasrError
from edgeasr.quant.policy import known_presets      # no TensorFlow: the CLI stays quick to start
from edgeasr.runtime.litert import ModelLoadError
from edgeasr.runtime.metadata import MetadataError


def user_errors(command):
    """Errors a user can cause become 'Error: <message>' and exit status 1, not a traceback.
    MetadataError (a file that is no TFLite model, or unreadable metadata) is the runtime's own:
    the runtime is NumPy-only and bundled into scripts/rpi_kws.py, so it cannot raise EdgeasrError.
    An OSError names the path the system refused."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (EdgeasrError, MetadataError) as exc:
            raise click.ClickException(str(exc)) from exc
        except ModelLoadError as exc:
            raise click.ClickException(f"LiteRT cannot load the model ({str(exc).splitlines()[0]}): a damaged "
                                       f"file, or an op this LiteRT lacks (pip install -U ai-edge-litert)") from exc
        except OSError as exc:                 # a path under a file, no permission, a full disk
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from exc

    return wrapper


def readable_models(ctx, param, value):
    """A MODEL argument's .tflite files must hold a flatbuffer whose indices and types are in range:
    a damaged file is refused by name here, not with a traceback from deep inside LiteRT."""
    from edgeasr.converters.flatbuffer import load

    for path in value if isinstance(value, tuple) else (value,):
        if path.is_file() and (param.name == "model" or path.suffix == ".tflite"):
            try:
                load(path.read_bytes(), str(path))
            except EdgeasrError as exc:
                raise click.ClickException(str(exc)) from exc
    return value


FLOAT32_TINY = 2.0 ** -126       # float32's smallest normal number


class FiniteRange(click.FloatRange):
    """click.FloatRange that refuses nan and inf, which pass its comparisons (a learning rate of nan
    trained to a nan loss and wrote NaN into config.json)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        if self.min == 0 and self.min_open and number < FLOAT32_TINY:      # 1e-320 would train as 0
            self.fail(f"{value} is below float32's smallest normal number ({FLOAT32_TINY:.2g}), the precision "
                      f"edgeasr trains and runs in", param, ctx)
        return number


MODEL_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
SEED = click.IntRange(0, 2**32 - 1)            # what numpy's generators take
MIN_STREAM_HOURS = 0.01        # 36 s: a few keywords; shorter built streams fail in ways that name no option


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(edgeasr.__version__, prog_name="edgeasr")
def main():
    """edgeasr: Keras speech models to small, fully-integer LiteRT models.

    \b
    Example, the whole path on synthetic data:
      edgeasr data synth-kws data/kws
      edgeasr train data/kws --run-dir runs/ds_cnn_s --model ds_cnn_s --epochs 12
      edgeasr convert runs/ds_cnn_s -o ds_cnn_s_int8.tflite
    or all of it at once:  edgeasr demo --out demo_run
    """
    stop_on_terminate()


def stop_on_terminate() -> None:
    """SIGTERM (kill, a job scheduler, a closed session) stops a command as Ctrl-C does, so its
    clean-ups run: train says how to resume, device-check removes its folder on the device."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@main.group()
def data():
    """Make datasets.

    \b
    Example:
      edgeasr data synth-kws data/kws --speakers 120
    """


@data.command("synth-kws")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--speakers", default=120, show_default=True, type=click.IntRange(3),
              help="Voice+variant pairs, split 80/10/10, disjoint.")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1), help="Takes of each keyword per speaker.")
@click.option("--words", default=None, help="Comma-separated keywords (default: the 10 Speech Commands words).")
@click.option("--sentence-windows", default=0, show_default=True, type=click.IntRange(0),
              help="Per speaker: 1 s windows of keyword-free sentences, labelled unknown (connected-speech negatives).")
@click.option("--near-words", is_flag=True,
              help="Add words that sound like the Speech Commands keywords (top, cup, light, ...) to the unknown "
                   "words: hard negatives.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Same seed, same bytes.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@user_errors
def synth_kws(out, speakers, repeats, words, sentence_windows, near_words, seed, overwrite):
    """Synthesise a keyword dataset in the Speech Commands v2 layout with espeak-ng.

    \b
    Example:
      edgeasr data synth-kws data/kws --speakers 60 --seed 1
      edgeasr data synth-kws data/kws_small --words yes,no,stop --speakers 12 --repeats 1
      edgeasr data synth-kws data/kws_speech --sentence-windows 15
      edgeasr data synth-kws data/kws_hard --near-words
    """
    from edgeasr.data.synth import SynthConfig, synthesize_kws_dataset, unknown_words

    chosen_words = {"words": _split_words(words)} if words else {}
    config = SynthConfig(speakers=speakers, repeats=repeats, seed=seed, sentence_windows=sentence_windows,
                         unknown_words=unknown_words(near_words, chosen_words.get("words", ())), **chosen_words)
    summary = synthesize_kws_dataset(out, config, overwrite=overwrite)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where config, checkpoints, history and reports go; rerun to resume.")
@click.option("--model", "model_name", default="ds_cnn_s", show_default=True,
              help="ds_cnn_s, ds_cnn_m or ffn_stateless.")
@click.option("--epochs", "--epochs-per-stage", "epochs", default=20, show_default=True, type=click.IntRange(0),
              help="Epochs of each stage (0: no training; the run holds its starting weights).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", default=3e-3, show_default=True, type=FiniteRange(0, min_open=True))
@click.option("--policy", default="float", show_default=True,
              help="Precision policy: float, w8a8, w4a8, w4a8-tanh, mixed, w4a8-tanh-dw8 (the last two name "
                   "edgeasr's layers), or a policy JSON file.")
@click.option("--stages", default=1, show_default=True, type=click.IntRange(1, 2),
              help="2: quantised weights first (the policy's quantizer: tanh for w4a8-tanh), then inputs and "
                   "activations too.")
@click.option("--stage2-lr-scale", default=1.0, show_default=True, type=FiniteRange(0.0, 1.0, min_open=True),
              help="Stage 2's peak learning rate as a share of --learning-rate. Stage 2 starts from a "
                   "converged stage 1; on the FFN 0.1 kept 0.8 more validation points than 1.0.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Start from the weights of this trained run (QAT fine-tuning of a float model); it must "
                   "have the same classes, in the same order.")
@click.option("--mracos-weight", default=0.0, show_default=True, type=FiniteRange(0),
              help="Pull weights toward the grid (0: off; quantized policies only).")
@click.option("--distill-weight", default=0.0, show_default=True, type=FiniteRange(0.0, 1.0),
              help="Share of the loss that follows the --init-from model's softened posteriors "
                   "(knowledge distillation from the float model; 0: off). On DS-CNN-S at 0.5 it raised "
                   "the FRR on long streams (docs/recipe_pilots.md).")
@click.option("--frozen-bn-epochs", default=0, show_default=True, type=click.IntRange(0),
              help="Last epochs of the fully quantized stage (stage 2 of --stages 2) trained on the BatchNorm "
                   "moving statistics, the folded graph the converted model runs (0: batch statistics "
                   "throughout). At most --epochs.")
@click.option("--keywords", default=None, help="Comma-separated keywords (default: the 10 Speech Commands words).")
@click.option("--unknown-percentage", default=10.0, show_default=True, type=FiniteRange(0.0),
              help="Non-keyword clips kept, as a percentage of the keyword clips (per split).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@user_errors
def train(dataset, run_dir, model_name, epochs, batch_size, learning_rate, policy, stages, stage2_lr_scale,
          init_from, mracos_weight, distill_weight, frozen_bn_epochs, keywords, unknown_percentage, seed):
    """Train a keyword model on a Speech Commands-layout DATASET, float or quantization-aware.

    An interrupted run resumes from its last epoch when the same command is run again.

    \b
    Examples:
      edgeasr train data/kws --run-dir runs/ffn --model ffn_stateless --epochs 15
      edgeasr train data/kws --run-dir runs/ds4 --policy w4a8-tanh --stages 2 --epochs-per-stage 8
      edgeasr train data/kws --run-dir runs/ffn4 --model ffn_stateless --policy w4a8-tanh --stages 2 \\
          --init-from runs/ffn --learning-rate 1e-3 --stage2-lr-scale 0.1 --epochs-per-stage 10
      edgeasr train data/kws --run-dir runs/ds4ft --policy w4a8-tanh --init-from runs/ds_float --epochs 5
      edgeasr train data/kws --run-dir runs/ds4kd --policy w4a8-tanh --init-from runs/ds_float --epochs 5 \\
          --distill-weight 0.5                                     # the float model teaches the 4-bit one
      edgeasr train data/kws --run-dir runs/ds4bn --policy w4a8-tanh --init-from runs/ds_float --epochs 6 \\
          --frozen-bn-epochs 2                                     # last 2 epochs on the inference graph
      edgeasr train data/kws_speech --run-dir runs/ds_speech --unknown-percentage 30   # fewer false accepts
    """
    from edgeasr.data.speech_commands import DataConfig
    from edgeasr.eval.metrics import format_confusion
    from edgeasr.models.registry import ModelConfig
    from edgeasr.quant.policy import load_policy
    from edgeasr.train.fit import train as train_run
    from edgeasr.train.run_dir import RunConfig, TrainConfig

    data_config = DataConfig(seed=seed, unknown_percentage=unknown_percentage,
                             **({"keywords": _split_words(keywords)} if keywords else {}))
    training = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                           stages=stages, stage2_lr_scale=stage2_lr_scale, init_from=str(init_from or ""),
                           mracos_weight=mracos_weight, distill_weight=distill_weight,
                           frozen_bn_epochs=frozen_bn_epochs)
    config = RunConfig(dataset=str(dataset), model=ModelConfig(name=model_name), data=data_config,
                       train=training, policy=load_policy(policy))
    report = train_run(run_dir, config)
    click.echo(format_confusion(report))
    click.echo(f"test accuracy: {report['accuracy']:.2%} on {report['examples']} clips; run in {run_dir}")
    note_untrained(epochs, init_from)


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--policy", default=None,
              help="Float models: precision policy for post-training quantisation (w8a8 [default], w4a8, "
                   "w4a8-tanh, or a policy JSON file naming your layers; the presets mixed and w4a8-tanh-dw8 name "
                   "the layers of edgeasr's keyword models, conformer-mixed those of its Conformer). "
                   "QAT models keep their own.")
@click.option("--calibration", "calibration", default=None, type=click.Path(exists=True, path_type=Path),
              help="Dataset folder or .npy array of model inputs (default for run directories: the run's "
                   "training clips). Required for model files.")
@click.option("--io", type=click.Choice(["int8", "float"]), default="int8", show_default=True,
              help="Input and output tensor type.")
@click.option("--min-agreement", default=0.99, show_default=True, type=FiniteRange(0, 1),
              help="Fail when Keras-LiteRT argmax agreement (a share, 0-1) is below this: OUTPUT is not written, "
                   "the parity report goes to OUTPUT's name + .rejected.parity.md.")
@click.option("--conv-storage", type=click.Choice(["int8", "int4"]), default="int8", show_default=True,
              help="4-bit depthwise and non-pointwise conv filters: 4-bit levels (x 16) in INT8 containers "
                   "(XNNPACK runs them) or packed INT4 (smaller, builtin kernels only).")
@click.option("--fc-scales", type=click.Choice(["per-tensor", "per-channel"]), default="per-tensor",
              show_default=True, help="4-bit FULLY_CONNECTED weights quantized per tensor: keep one scale, or "
                                      "repeat it per channel (older XNNPACK builds delegate only that).")
@click.option("--scores", type=click.Choice(["auto", "logits", "probabilities"]), default="auto", show_default=True,
              help="Model output: logits (the model up to its final Softmax; the runtime applies the softmax in "
                   "float, no int8 saturation at 255/256), probabilities (the model's own output); auto: "
                   "logits when the model ends in a Softmax layer.")
@click.option("--labels", default=None,
              help="Model files: class names in output order, comma-separated or a text file with one per line "
                   "(with --frontend, eval-stream and rpi_kws.py can run the file).")
@click.option("--frontend", default=None,
              help="Model files: the input features, 'edgeasr' (the kit's log-mel defaults) or a JSON file of "
                   "FrontendConfig fields.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@user_errors
def convert(source, output, policy, calibration, io, min_agreement, conv_storage, fc_scales, scores, labels,
            frontend, force):
    """Convert a run directory or a tf_keras model file to a fully-integer LiteRT model.

    Weights whose policy is 4 bits or less are stored as INT4 (see --conv-storage); pointwise
    convolutions become FULLY_CONNECTED; the file carries an `edgeasr` metadata entry; parity
    with the Keras model is checked and written to OUTPUT.parity.json / .parity.md.

    A speech-recognition run (train-asr) takes --policy and --force only: it calibrates on its
    training utterances, converts a 4 s window with int8 input and output, and writes its parity
    (output frames and transcripts) to OUTPUT.parity.json; the other options are for keyword models.

    \b
    Examples:
      edgeasr convert runs/ds_cnn_s -o ds_cnn_s_int8.tflite
      edgeasr convert my_kws.keras -o my_kws_w4.tflite --policy w4a8-tanh --calibration inputs.npy
      edgeasr convert my_kws.keras -o my_kws_stream.tflite --policy w4a8-tanh --calibration inputs.npy \\
          --labels _silence_,_unknown_,yes,no --frontend edgeasr     # streamable: eval-stream, rpi_kws.py
    """
    from edgeasr.converters.convert import convert as convert_source
    from edgeasr.eval.parity import kernel_warnings, quantization_warnings
    from edgeasr.train.asr_fit import is_asr_run

    if is_asr_run(source):
        _refuse_keyword_options(click.get_current_context(), "a speech-recognition run (train-asr)")
        return _convert_asr(source, output, policy, force)
    result = convert_source(source, output, policy=policy, calibration=calibration, io=io, force=force,
                            min_agreement=min_agreement, conv_storage=conv_storage,
                            fc_per_channel=fc_scales == "per-channel", scores=scores, labels=labels,
                            frontend=frontend)
    parity = result["parity"]
    echo_warnings(parity["notes"])
    sizes = f"{result['bytes']:,} bytes"
    if result.get("float_bytes"):
        sizes += f" (float LiteRT: {result['float_bytes']:,} bytes, {result['float_bytes'] / result['bytes']:.1f}x)"
    click.echo(f"wrote {output}: {sizes}; INT4 weight share {result['int4_share'] or 0:.0%}; "
               f"argmax agreement {parity['argmax_agreement']:.2%} on {parity['examples']} examples "
               f"(report: {result['parity_md']})")
    for line in kernel_warnings(parity) + quantization_warnings(parity):
        click.echo(line, err=True)


ASR_WARNING_FRAME_AGREEMENT = 0.95   # docs/asr_results.md: 98.8-99.0% for the xs conversions

KEYWORD_CONVERT_OPTIONS = ("calibration", "io", "min_agreement", "conv_storage", "fc_scales", "scores", "labels",
                           "frontend")


def report_stem(value):
    """validate's --report: a file stem, not empty and not a folder (REPORT.parity.json goes beside it)."""
    if value is None:
        return None
    if not value.strip() or value.endswith(("/", "\\")) or Path(value).is_dir():
        raise click.BadParameter(f"{value!r}: give a file stem such as checks/recordings (the reports are "
                                 f"STEM.parity.json and STEM.parity.md)", param_hint="'--report'")
    return Path(value)


def echo_warnings(notes) -> None:
    """A report's notes on stderr, one 'Warning:' line each (convert and validate)."""
    for note in notes:
        click.echo(f"Warning: {note}", err=True)


def given_options(ctx, names) -> list:
    """The options of `names` the user gave (not left at their defaults)."""
    return [name for name in names if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]


def option_list(names) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _refuse_keyword_options(ctx, what: str) -> None:
    """Options of a keyword-model conversion given for `what`, which takes none of them."""
    given = given_options(ctx, KEYWORD_CONVERT_OPTIONS)
    if given:
        raise EdgeasrError(f"{option_list(given)}: not for {what}, "
                           f"whose conversion calibrates on its own training utterances, takes int8 input and "
                           f"output and writes its parity (frames and transcripts) to OUTPUT.parity.json")


def _convert_asr(source, output, policy, force):
    """`edgeasr convert` of a train-asr run: fixed 4 s window, vocabulary in the metadata."""
    from edgeasr.converters.asr import convert_asr_run

    result = convert_asr_run(source, output, policy=policy, force=force)
    parity = result["parity"]
    click.echo(f"wrote {output}: {result['bytes']:,} bytes (float LiteRT: {result['float_bytes']:,} bytes, "
               f"{result['float_bytes'] / result['bytes']:.1f}x); INT4 weight share {result['int4_share'] or 0:.0%}; "
               f"Keras-LiteRT frame agreement {parity['frame_argmax_agreement']:.2%}, same transcript "
               f"{parity['transcript_agreement']:.0%} of {parity['utterances']} utterances "
               f"(report: {result['parity_json']})")
    if parity["frame_argmax_agreement"] < ASR_WARNING_FRAME_AGREEMENT:
        click.echo(f"warning: LiteRT decides {1 - parity['frame_argmax_agreement']:.2%} of the output frames "
                   f"otherwise than Keras; compare their WER with `edgeasr eval-asr {source} {output} --manifest "
                   f"TEST.jsonl` before shipping it", err=True)


@main.command()
@click.argument("model", type=MODEL_FILE, callback=readable_models)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@user_errors
def inspect(model, as_json):
    """Show a .tflite: ops, dtypes, bytes per tensor, INT4 share, XNNPACK nodes, metadata.

    \b
    Example:
      edgeasr inspect ds_cnn_s_w4.tflite
    """
    from edgeasr.converters.inspect import format_inspection, inspect_model

    report = inspect_model(model)
    click.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))


@main.command()
@click.argument("model", type=MODEL_FILE, callback=readable_models)
@click.option("--source", required=True, type=click.Path(exists=True, path_type=Path),
              help="The run directory or Keras model file it was converted from.")
@click.option("--data", default=None, type=click.Path(exists=True, path_type=Path),
              help="Dataset folder (its test split) or .npy array of inputs (default: the run's test split).")
@click.option("--calibration", default=None, type=click.Path(exists=True, path_type=Path),
              help="Float SOURCE only: the --calibration given to convert (default: the run's training clips, or "
                   "for a model file the --data inputs).")
@click.option("--examples", default=500, show_default=True, type=click.IntRange(1),
              help="At most this many inputs of --data, spread over all of them.")
@click.option("--min-agreement", default=0.99, show_default=True, type=FiniteRange(0, 1))
@click.option("--report", "report_path", default=None, callback=lambda ctx, param, value: report_stem(value),
              help="Write REPORT.parity.json / .parity.md, passed or not, instead of MODEL's (which convert wrote).")
@user_errors
def validate(model, source, data, calibration, examples, min_agreement, report_path):
    """Parity of MODEL with its Keras SOURCE: agreement, LSB difference, XNNPACK vs reference, accuracy.

    Writes MODEL.parity.json and MODEL.parity.md, replacing convert's (--report keeps both); a
    check below the threshold writes MODEL.rejected.parity.* instead and exits 1.

    \b
    Example:
      edgeasr validate ds_cnn_s_w4.tflite --source runs/ds_w4 --data data/kws
      edgeasr validate ds_cnn_s_w4.tflite --source runs/ds_w4 --data my_recordings --report checks/recordings
      edgeasr validate my_kws_w4.tflite --source my_kws.keras --data test_inputs.npy --calibration inputs.npy
    """
    from edgeasr.converters.convert import validate as validate_model
    from edgeasr.eval.parity import kernel_warnings, quantization_warnings

    report = validate_model(model, source, data, examples=examples, min_agreement=min_agreement,
                            calibration=calibration, report_path=report_path)
    echo_warnings(report["notes"])
    reference = report.get("xnnpack_vs_reference_agreement")
    click.echo(f"argmax agreement {report['argmax_agreement']:.2%} on {report['examples']} examples; XNNPACK vs "
               f"reference kernels {'not compared' if reference is None else f'{reference:.2%}'}; "
               f"report {report['markdown']}")
    for line in kernel_warnings(report) + quantization_warnings(report):
        click.echo(line, err=True)
    if not report["passed"]:
        earlier = Path(model).with_name(Path(model).stem + ".parity.md")
        raise click.ClickException(f"parity below {min_agreement:.2%} (report {report['markdown']}"
                                   + (f"; {earlier} is an earlier check's" if earlier.is_file() and report_path is None
                                      else "") + ")")


@main.command()
@click.option("--out", default="demo_run", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_name", default="ds_cnn_s", show_default=True)
@click.option("--epochs", default=15, show_default=True, help="Float training epochs.")
@click.option("--qat-epochs", default=6, show_default=True, help="QAT epochs in all (two stages take half each).")
@click.option("--qat-stages", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: everything quantized from the start; 2: tanh weights first, then activations too.")
@click.option("--speakers", default=240, show_default=True, help="Synthetic voices; a tenth are held out for test.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@user_errors
def demo(out, model_name, epochs, qat_epochs, qat_stages, speakers, seed):
    """Synthesise data, train float, then 4-bit tanh QAT, convert both to LiteRT, compare.

    Prints accuracy (Keras and LiteRT, held-out voices) and file sizes: the float model as
    post-training int8, and the QAT model with INT4-packed weights.

    \b
    Example:
      edgeasr demo --out demo_run
      edgeasr demo --out demo_quick --speakers 60 --epochs 8 --qat-epochs 2 --qat-stages 2
    """
    from edgeasr.demo import run_demo

    run_demo(out, model=model_name, epochs=epochs, qat_epochs=qat_epochs, qat_stages=qat_stages, speakers=speakers,
             seed=seed)


@main.command("eval-stream")
@click.argument("model", type=MODEL_FILE, callback=readable_models)
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Synthetic dataset (edgeasr data synth-kws) whose --split builds the stream.")
@click.option("--split", type=click.Choice(["testing", "validation"]), default="testing", show_default=True,
              help="Voices of the built stream: choose thresholds on validation, report FRR on testing.")
@click.option("--wav", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Your own stream instead of --data (needs --labels).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Label file of --wav: one 'start_s end_s keyword' line per keyword occurrence.")
@click.option("--hours", default=1.0, show_default=True, type=FiniteRange(MIN_STREAM_HOURS),
              help="Length of the built stream (at least 0.01, 36 s). FRR at N FA/h rests on the "
                   "(N x hours + 1)-th best-scoring false accept, so one hour can swing by a few points on a "
                   "single event; 4 is steadier.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where built streams are kept (about 115 MB per hour; default: $XDG_CACHE_HOME/edgeasr/"
                   "streams, else ~/.cache/edgeasr/streams).")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Report and DET PNG folder (default: the model's folder).")
@click.option("--hop-ms", type=FiniteRange(0, min_open=True), default=None,
              help="Model run interval, whole frontend frames (default: metadata, else 20).")
@click.option("--smoothing-ms", type=FiniteRange(0, min_open=True), default=None,
              help="Posterior averaging (default: metadata, else 400).")
@click.option("--refractory-ms", type=FiniteRange(0), default=None,
              help="How long a keyword that fired stays silent; other keywords still fire (default: metadata, "
                   "else 1000).")
@click.option("--sharpening", type=FiniteRange(0, min_open=True), default=None,
              help="Raise each posterior to this power and renormalise before smoothing (default: metadata, "
                   "else 1, off). 2 lowered FRR at 1 FA/h for every DS-CNN-S run measured "
                   "(docs/posterior_sharpening.md); choose it with the thresholds on validation voices.")
@click.option("--target-fa-per-hour", default=1.0, show_default=True, type=FiniteRange(0, min_open=True),
              help="False accepts per hour the thresholds are chosen for.")
@click.option("--per-keyword", is_flag=True,
              help="Choose one threshold per keyword (each keyword's share of the target) instead of one for all; "
                   "needs a stream allowing each keyword one false accept (hours >= keywords / target). Only for "
                   "a stream of the voices and rooms the device will hear: chosen on other voices, they gave 3-6x "
                   "the target on held-out ones and missed more keywords than one threshold at that rate "
                   "(docs/keyword_thresholds.md).")
@click.option("--write-thresholds", is_flag=True, help="Write the thresholds and detector settings into MODEL.")
@click.option("--model-thresholds", is_flag=True,
              help="Score the thresholds already in MODEL (written on another stream) instead of "
                   "choosing them on this one, with the detector settings they were chosen with.")
@user_errors
def eval_stream(model, data, split, wav, labels, hours, seed, cache_dir, out, hop_ms, smoothing_ms, refractory_ms,
                sharpening, target_fa_per_hour, per_keyword, write_thresholds, model_thresholds):
    """False rejects at fixed false accepts per hour of MODEL on a long stream, DET curve, latency.

    \b
    Examples:
      edgeasr eval-stream kws.tflite --data data/kws --split validation --write-thresholds
      edgeasr eval-stream kws.tflite --data data/kws --split validation --sharpening 2 --write-thresholds
      edgeasr eval-stream kws.tflite --data data/kws --model-thresholds   # the test voices
      edgeasr eval-stream kws.tflite --wav kitchen.wav --labels kitchen.labels.txt
    """
    from edgeasr.eval import stream
    from edgeasr.runtime.metadata import read_metadata
    from edgeasr.runtime.streaming import (DetectorConfig, changed_detector_settings, frontend_config,
                                           hop_within_window, input_frames)

    metadata = read_metadata(model) or {}
    if (wav is None) == (data is None) or (wav is None) != (labels is None):
        raise click.UsageError("give either --data DATASET or --wav WAV with --labels LABELS")
    context = click.get_current_context()
    built_only = given_options(context, ("split", "hours", "seed", "cache_dir"))
    if wav is not None and built_only:
        raise click.UsageError(f"{option_list(built_only)}: for a stream built from --data, not for --wav")
    try:
        config = DetectorConfig.from_metadata(metadata, hop_ms=hop_ms, smoothing_ms=smoothing_ms,
                                              refractory_ms=refractory_ms, sharpening=sharpening)
        if isinstance(metadata.get("frontend"), dict):
            hop_within_window(config, frontend_config(model, metadata), input_frames(model, metadata))
    except ValueError as exc:
        raise EdgeasrError(f"detector settings (the options, else {model}'s metadata): {exc}") from exc
    if data is not None:
        wav, labels = stream.model_stream(data, metadata, cache_dir or stream.default_cache_dir(), hours=hours,
                                          seed=seed, split=split)
    thresholds = None
    if model_thresholds:
        thresholds = (metadata.get("detector") or {}).get("thresholds")
        if not thresholds:
            raise EdgeasrError(f"{model}: no thresholds in its metadata; write them first with "
                               f"`edgeasr eval-stream {model} --data DATASET --split validation --write-thresholds`")
        if write_thresholds or per_keyword:
            raise EdgeasrError("--model-thresholds scores the thresholds MODEL has; it cannot also choose new ones")
        changed = changed_detector_settings(metadata, hop_ms=hop_ms, smoothing_ms=smoothing_ms,
                                            refractory_ms=refractory_ms, sharpening=sharpening)
        if changed:
            raise EdgeasrError(f"{model}: its thresholds hold only for the detector settings they were chosen "
                               f"with: {', '.join(changed)}; choose new ones with --write-thresholds")
        if not given_options(context, ("target_fa_per_hour",)):       # judged against what they were chosen for
            target_fa_per_hour = metadata["detector"].get("target_fa_per_hour", target_fa_per_hour)
    report = stream.evaluate_stream(model, wav, labels, config, out or model.parent, target_fa_per_hour,
                                    thresholds=thresholds, per_keyword=per_keyword)
    click.echo(stream.format_report(report))
    if per_keyword and report["thresholds_rule"] != "per keyword":
        click.echo(f"Warning: {stream.duration_text(report['hours'])} do not allow each keyword one false accept at "
                   f"{target_fa_per_hour} FA/h: one common threshold was chosen instead of --per-keyword ones",
                   err=True)
    if write_thresholds:
        if not report["target_reached"]:
            raise EdgeasrError(f"thresholds not written: no threshold reaches {target_fa_per_hour} FA/h on this "
                               f"stream ({report['at_thresholds']['fa_per_hour']:.2f} FA/h at "
                               f"{max(report['thresholds'].values()):g}); the model fires on what the stream plays "
                               f"whatever the threshold: check the labels, or choose a higher --target-fa-per-hour")
        stream.write_thresholds(model, report)
        click.echo(f"thresholds for {target_fa_per_hour} FA/h written into {model}")
        if report["at_thresholds"]["frr"] == 1.0:
            click.echo("Warning: at these thresholds every keyword of the stream is missed (FRR 100%): check that "
                       "the labels' times are this WAV's, and the model", err=True)


@data.command("synth-asr")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--speakers", default=300, show_default=True, type=click.IntRange(3),
              help="Voice+variant pairs, split 80/10/10, disjoint.")
@click.option("--utterances", default=40, show_default=True, type=click.IntRange(1), help="Utterances per speaker.")
@click.option("--max-seconds", default=4.0, show_default=True, type=FiniteRange(2),
              help="Clip length limit, at least 2 (shorter clips fit too few of the texts); longer texts are "
                   "redrawn, never cropped.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Same seed, same bytes.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@user_errors
def synth_asr(out, speakers, utterances, max_seconds, seed, overwrite):
    """Synthesise a speech-recognition corpus (digit strings, commands, short sentences) with espeak-ng.

    Writes OUT/train.jsonl, validation.jsonl and test.jsonl; the test voices are held out.

    \b
    Example:
      edgeasr data synth-asr data/asr --speakers 300 --utterances 40
    """
    from edgeasr.data.asr_synth import AsrSynthConfig, synthesize_asr_corpus

    config = AsrSynthConfig(speakers=speakers, utterances_per_speaker=utterances, max_seconds=max_seconds, seed=seed)
    click.echo(json.dumps(synthesize_asr_corpus(out, config, overwrite=overwrite), indent=2))


@data.command("manifest")
@click.option("--librispeech", "librispeech", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A LibriSpeech-layout folder (SPEAKER/CHAPTER/*.trans.txt and audio).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-seconds", type=FiniteRange(0, min_open=True), default=None,
              help="Leave out longer utterances (seconds, above 0).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@user_errors
def manifest(librispeech, output, max_seconds, force):
    """Write the JSONL manifest (audio, text, duration) of a LibriSpeech-layout folder.

    Transcript lines are `ID TEXT` (a space or a tab after the id); text is lower-cased and runs of
    whitespace become one space. Lines with no spellable text and audio files that cannot be read or
    hold no samples are left out and counted in the summary (skipped_*), as are audio files the
    manifest does not use (unused_audio: no line names them, or X.wav lies beside X.flac), and so
    are texts that lose digits or letters outside a-z in training (texts_losing_words); a missing
    audio file, an id listed twice or a transcript that is not UTF-8 is an error.

    \b
    Example:
      edgeasr data manifest --librispeech LibriSpeech/dev-clean -o dev-clean.jsonl
    """
    from edgeasr.data.manifest import librispeech_manifest

    click.echo(json.dumps(librispeech_manifest(librispeech, output, max_seconds, force=force), indent=2))


@main.command("train-asr")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where config, tokenizer, checkpoints and reports go; rerun to resume.")
@click.option("--size", default="xs", show_default=True, help="Conformer size: tiny, xs or s.")
@click.option("--epochs", "--epochs-per-stage", "epochs", default=10, show_default=True, type=click.IntRange(0),
              help="Epochs of each stage (0: no training; the run holds its starting weights).")
@click.option("--batch-size", default=24, show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", default=2e-3, show_default=True, type=FiniteRange(0, min_open=True),
              help="Peak, after warm-up.")
@click.option("--policy", default="float", show_default=True,
              help="A precision preset (" + ", ".join(known_presets()) + ") or a policy JSON file. conformer-mixed keeps the Conformer's subsampling, depthwise "
                     "convolutions and CTC head at 8 bits (mixed only its CTC head); w4a8-tanh-dw8 names only "
                     "keyword-model layers, so train-asr refuses it.")
@click.option("--stages", default=1, show_default=True, type=click.IntRange(1, 2))
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Start from this trained ASR run (QAT fine-tuning of a float model).")
@click.option("--frozen-bn-epochs", default=0, show_default=True, type=click.IntRange(0),
              help="Last epochs of the fully quantized stage (stage 2 of --stages 2) trained on the convolution "
                   "modules' BatchNorm moving statistics, the folded graph the converted model runs (0: batch "
                   "statistics throughout). At most --epochs.")
@click.option("--tokenizer", type=click.Choice(["char", "sentencepiece"]), default="char", show_default=True)
@click.option("--noise/--no-noise", default=False, show_default=True, help="Mix coloured noise into training audio.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@user_errors
def train_asr(data_dir, run_dir, size, epochs, batch_size, learning_rate, policy, stages, init_from,
              frozen_bn_epochs, tokenizer, noise, seed):
    """Train a Conformer-CTC on DATA_DIR/{train,validation,test}.jsonl, float or quantization-aware.

    \b
    Examples:
      edgeasr train-asr data/asr --run-dir runs/asr_xs --size xs --epochs 10
      edgeasr train-asr data/asr --run-dir runs/asr_xs_w4 --policy w4a8-tanh --stages 2 \\
          --init-from runs/asr_xs --epochs-per-stage 2 --learning-rate 5e-4
      edgeasr train-asr data/asr --run-dir runs/asr_xs_w4bn --policy w4a8-tanh --init-from runs/asr_xs \\
          --epochs 6 --frozen-bn-epochs 1             # last epoch on the inference graph
    """
    from dataclasses import replace

    from edgeasr.quant.policy import load_policy
    from edgeasr.train.asr_fit import asr_run_config, train_asr as train_run

    config = asr_run_config(data_dir / "train.jsonl", data_dir / "validation.jsonl", data_dir / "test.jsonl", size)
    config = replace(config, policy=load_policy(policy),
                     train=replace(config.train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                   stages=stages, init_from=str(init_from or ""), seed=seed,
                                   frozen_bn_epochs=frozen_bn_epochs),
                     asr=replace(config.asr, tokenizer=tokenizer, noise=noise))
    report = train_run(run_dir, config)
    if report:
        click.echo(f"test WER {report['wer']:.2%}, CER {report['cer']:.2%} on {report['utterances']} utterances; "
                   f"run in {run_dir}")
    note_untrained(epochs, init_from)


def note_untrained(epochs: int, init_from) -> None:
    """--epochs 0 is allowed (a run directory to convert or test as it starts); say that nothing was trained."""
    if epochs == 0:
        start = f"{init_from}'s weights" if init_from else "random initial weights"
        click.echo(f"Warning: --epochs 0: nothing was trained; the run holds {start}", err=True)


@main.command()
@click.argument("model", type=MODEL_FILE, callback=readable_models)
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--beam", default=0, show_default=True, type=click.IntRange(0),
              help="Prefix beam search width (0 or 1: greedy); decoding time grows with it, in Python.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="LiteRT threads.")
@user_errors
def transcribe(model, audio, beam, threads):
    """Transcribe AUDIO files with a converted speech-recognition MODEL (.tflite), one line each:
    the path (quoted, as Python writes it, if it holds a tab or a line break), a tab, the text
    (lower case a-z, apostrophes and spaces).

    A file that cannot be read (or holds no samples) gets an 'Error:' line on stderr and the
    others are still transcribed; the exit status is then 1. Missing files are refused before
    any is transcribed. Audio longer than the model's window (4 s as converted) is transcribed
    window after window, each without the others' context.

    \b
    Example:
      edgeasr transcribe asr_xs_w4.tflite hello.wav --beam 8
    """
    from edgeasr.runtime.asr import Transcriber, TranscriberError

    try:
        transcriber = Transcriber(model, num_threads=threads, beam_width=beam)
    except TranscriberError as exc:
        raise EdgeasrError(str(exc)) from exc
    warn_upsampled(audio, transcriber.frontend)
    failed = 0
    for path in audio:
        try:
            shown = repr(str(path)) if any(c in str(path) for c in "\t\n\r") else path   # one line per file
            click.echo(f"{shown}\t{transcriber.transcribe_file(path)}")
        except EdgeasrError as exc:
            click.echo(f"Error: {exc}", err=True)
            failed += 1
    if failed:
        raise EdgeasrError(f"{failed} of {len(audio)} files could not be transcribed")


def warn_upsampled(paths, frontend) -> None:
    """One warning line for the files recorded below the model's rate (unreadable ones get their error later)."""
    from edgeasr.audio.io import upsampling_note

    note = upsampling_note(paths, frontend.sample_rate, frontend.fmax)
    if note:
        click.echo(f"Warning: {note}", err=True)


@main.command("eval-asr")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path),
                callback=readable_models)
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Test manifest (JSONL), e.g. data/asr/test.jsonl.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N utterances (N >= 1).")
@click.option("--beam", default=0, show_default=True, type=click.IntRange(0),
              help="Prefix beam search width (0 or 1: greedy).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the reports as JSON here, with every utterance's transcript.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a Markdown report here: the table and each model's worst utterances.")
@user_errors
def eval_asr(models, manifest, limit, beam, json_path, markdown_path):
    """WER and CER of MODELS (train-asr run directories: Keras; .tflite files: LiteRT, with
    single-thread real-time factor and size) on a manifest.

    \b
    Example:
      edgeasr eval-asr runs/asr_xs runs/asr_xs_w4 asr_xs_w8.tflite asr_xs_w4.tflite --manifest data/asr/test.jsonl
    """
    from edgeasr.eval.asr import evaluate_model, format_reports, markdown_reports
    from edgeasr.files import write_bytes_atomic, write_json_atomic

    reports = [evaluate_model(m, manifest, limit=limit, beam_width=beam, warn=i == 0) for i, m in enumerate(models)]
    click.echo(format_reports(reports))
    if json_path is not None:
        write_json_atomic(json_path, reports)
    if markdown_path is not None:
        write_bytes_atomic(markdown_path, markdown_reports(reports, manifest).encode())


@main.command("device-check")
@click.argument("model", type=MODEL_FILE, callback=readable_models)
@click.option("--ssh", "ssh_target", default=None, help="USER@HOST of a Raspberry Pi (or any Linux device).")
@click.option("--port", default=22, show_default=True, help="ssh port.")
@click.option("--identity", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ssh private key.")
@click.option("--ssh-option", "ssh_options", multiple=True, help="Extra ssh -o Key=value (repeatable).")
@click.option("--adb", "adb_serial", default=None,
              help="An Android device's adb serial ('-' for the only one) instead of --ssh; needs adb on PATH "
                   "here and Python on the phone (e.g. Termux) with numpy and ai-edge-litert.")
@click.option("--python", "python", default=None, help="Python command on the device (default: python3; "
              "adb: Termux's python3).")
@click.option("--wav", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Test audio (default: the model's keywords spoken by espeak).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the whole report here.")
@user_errors
def device_check(model, ssh_target, port, identity, ssh_options, adb_serial, python, wav, json_path):
    """Run keyword MODEL with scripts/rpi_kws.py on a device: latency, CPU, memory, parity with this machine.

    Copies the model and the script, runs them there and here on the same audio and input
    windows, and compares raw int8 outputs (within 1 LSB) and detections. Exits 1 when they differ.
    Where they differ, the report names the first layer that does (builtin kernels) and how far
    each op differs when both machines run it alone on the same inputs (XNNPACK and builtin).

    \b
    Examples:
      edgeasr device-check kws.tflite --ssh pi@raspberrypi.local
      edgeasr device-check kws.tflite --adb -
    """
    from edgeasr import device

    if (ssh_target is None) == (adb_serial is None):
        raise EdgeasrError("give one of --ssh USER@HOST or --adb SERIAL")
    if ssh_target is not None:
        transport = device.SshTransport(ssh_target, port, identity, python or "python3", ssh_options)
    else:
        transport = device.AdbTransport(None if adb_serial == "-" else adb_serial,
                                        **({"python": python} if python else {}))
    report = device.device_check(transport, model, wav)
    click.echo(device.format_check(report, ssh_target or f"adb {adb_serial}"))
    if json_path:
        from edgeasr.files import write_json_atomic

        write_json_atomic(json_path, report)
    if not report["passed"]:
        raise click.ClickException("the device's results differ from this machine's")


def _split_words(text: str) -> tuple:
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        raise EdgeasrError("no words given")
    twice = sorted({word for word in words if words.count(word) > 1})
    if twice:
        raise EdgeasrError(f"{', '.join(twice)}: given more than once in {text!r}")
    reserved = [word for word in words if word.startswith("_")]
    if reserved:
        raise EdgeasrError(f"{', '.join(reserved)}: names starting with '_' are the kit's own classes "
                           f"(_silence_, _unknown_) or folders (_background_noise_), not keywords")
    return words


if __name__ == "__main__":
    sys.exit(main())
