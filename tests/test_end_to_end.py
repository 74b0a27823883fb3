"""Tiny end to end: synthesise -> train a few seconds -> resume -> int8 LiteRT -> run it."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from click.testing import CliRunner

from edgeasr.cli import main
from edgeasr.data.pipeline import features_of
from edgeasr.data.speech_commands import UNKNOWN, index_files, load_split
from edgeasr.eval.parity import litert_accuracy
from edgeasr.runtime.litert import LiteRTModel
from edgeasr.train.numerics import describe, training_numerics
from edgeasr.train.run_dir import RunDir
from tests.conftest import TINY_KEYWORDS

pytestmark = pytest.mark.slow


def ds_cnn_args(dataset, run_dir) -> list:
    """The trained_run's command line, less --epochs."""
    return ["train", str(dataset), "--run-dir", str(run_dir), "--model", "ds_cnn_s",
            "--keywords", ",".join(TINY_KEYWORDS), "--batch-size", "16", "--learning-rate", "0.002",
            "--unknown-percentage", "30"]


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "ds_cnn"
    args = ds_cnn_args(tiny_dataset, run_dir)
    first = CliRunner().invoke(main, [*args, "--epochs", "2"])
    assert first.exit_code == 0, first.output
    resumed = CliRunner().invoke(main, [*args, "--epochs", "8"])
    assert resumed.exit_code == 0, resumed.output
    return run_dir


def test_run_directory_holds_config_history_checkpoints_and_report(trained_run):
    run = RunDir(trained_run)
    config = run.read_config()
    assert config.model.name == "ds_cnn_s" and config.model.input_shape == (98, 40)
    assert config.model.num_classes == 2 + len(TINY_KEYWORDS)
    assert [entry["epoch"] for entry in run.read_history()] == list(range(1, 9))
    assert any(p.name.startswith("ckpt-8") for p in (run.checkpoints / "float").iterdir())
    report = json.loads(run.test_report_path.read_text())
    assert np.asarray(report["confusion"]).sum() == report["examples"] > 0
    assert config.data.unknown_percentage == 30.0
    unknown = config.data.labels.index(UNKNOWN)
    expected = sum(label == unknown for _, label in index_files(Path(config.dataset), config.data)["test"])
    assert np.asarray(report["confusion"])[unknown].sum() == expected > 0
    assert run.confusion_plot_path.stat().st_size > 1000


def test_rerunning_a_finished_run_leaves_its_model_file_alone(trained_run, tiny_dataset):
    model_file = RunDir(trained_run).model_path
    before = (model_file.stat().st_mtime_ns, model_file.read_bytes())
    result = CliRunner().invoke(main, [*ds_cnn_args(tiny_dataset, trained_run), "--epochs", "8"])
    assert result.exit_code == 0, result.output
    assert (model_file.stat().st_mtime_ns, model_file.read_bytes()) == before
    assert len(RunDir(trained_run).read_history()) == 8
    assert "float: finished (8 epochs)" in result.output
    fewer = CliRunner().invoke(main, [*ds_cnn_args(tiny_dataset, trained_run), "--epochs", "3"])
    assert fewer.exit_code == 0, fewer.output
    assert "finished with 8 epochs, more than the 3 asked; a trained run is not shortened" in fewer.output
    assert (model_file.stat().st_mtime_ns, model_file.read_bytes()) == before


def test_resuming_with_another_configuration_is_refused(trained_run, tiny_dataset):
    args = ["train", str(tiny_dataset), "--run-dir", str(trained_run), "--model", "ffn_stateless", "--epochs", "9",
            "--keywords", ",".join(TINY_KEYWORDS)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "different configuration" in result.output


def test_int8_model_runs_in_litert_and_matches_keras_accuracy(trained_run, tmp_path):
    out = tmp_path / "ds_cnn_int8.tflite"
    result = CliRunner().invoke(main, ["convert", str(trained_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    model = LiteRTModel(out)
    assert model.input_detail["dtype"] == np.int8 and model.output_detail["dtype"] == np.int8
    assert list(model.input_detail["shape"][1:]) == [98, 40]

    run = RunDir(trained_run)
    config = run.read_config()
    test = load_split(config.dataset, config.data, "test", progress=False)
    lite = litert_accuracy(out, features_of(test.waves, config.frontend), test.labels)
    keras_accuracy = json.loads(run.test_report_path.read_text())["accuracy"]
    chance = 1 / len(config.data.labels)
    assert lite > 2 * chance
    assert abs(lite - keras_accuracy) <= 0.1

    again = CliRunner().invoke(main, ["convert", str(trained_run), "-o", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


def test_a_model_written_into_its_run_validates_on_the_runs_test_split(trained_run, tiny_dataset):
    """The run's source hash covers its config and model only: the .tflite, its reports and a rerun's
    rewritten test report do not make the model look converted from something else."""
    out = trained_run / "model.tflite"
    try:
        assert CliRunner().invoke(main, ["convert", str(trained_run), "-o", str(out)]).exit_code == 0
        rerun = CliRunner().invoke(main, [*ds_cnn_args(tiny_dataset, trained_run), "--epochs", "8"])
        assert rerun.exit_code == 0, rerun.output
        checked = CliRunner().invoke(main, ["validate", str(out), "--source", str(trained_run)])
        assert checked.exit_code == 0, checked.output
        assert "not what the model was converted from" not in checked.output
        assert json.loads(out.with_suffix(".parity.json").read_text())["examples"] > 0
        converted = out.with_suffix(".parity.json").read_bytes()
        elsewhere = trained_run / "model.check"
        kept = CliRunner().invoke(main, ["validate", str(out), "--source", str(trained_run), "--examples", "7",
                                         "--report", str(elsewhere)])
        assert kept.exit_code == 0 and "model.check.parity.md" in kept.output, kept.output
        assert json.loads((trained_run / "model.check.parity.json").read_text())["examples"] == 7
        assert out.with_suffix(".parity.json").read_bytes() == converted           # the model's own stays
    finally:
        for made in trained_run.glob("model.*"):
            if made.name != "model.keras":
                made.unlink()


def test_two_stage_w4_tanh_fine_tuning_converts_to_int4_and_keeps_accuracy(trained_run, tiny_dataset, tmp_path):
    from edgeasr.converters.flatbuffer import read_model

    qat_dir = tmp_path / "w4"
    args = ["train", str(tiny_dataset), "--run-dir", str(qat_dir), "--model", "ds_cnn_s",
            "--keywords", ",".join(TINY_KEYWORDS), "--batch-size", "16", "--learning-rate", "0.0005",
            "--policy", "w4a8-tanh", "--stages", "2", "--epochs-per-stage", "2", "--init-from", str(trained_run)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = RunDir(qat_dir)
    assert [(e["stage"], e["epoch"]) for e in run.read_history()] == [
        ("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2)]
    assert run.read_config().policy.name == "w4a8-tanh"
    longer = CliRunner().invoke(main, [*args[:-4], "--epochs-per-stage", "3", *args[-2:]])
    assert longer.exit_code == 1 and "stage2 already trained from the end of stage1 (2 epochs)" in longer.output, \
        longer.output
    assert [(e["stage"], e["epoch"]) for e in run.read_history()][-1] == ("stage2", 2)     # nothing trained

    out = tmp_path / "w4.tflite"
    assert CliRunner().invoke(main, ["convert", str(qat_dir), "-o", str(out)]).exit_code == 0
    ops, tensors = read_model(out.read_bytes())
    weights = [t for t in tensors if t.data is not None and t.type not in ("INT32",) and len(t.shape) >= 2]
    # Pointwise convs (as FULLY_CONNECTED) and logits packed INT4; first conv and depthwise keep their
    # 4-bit levels in INT8 containers, which XNNPACK runs (converters/int4.py, conv_storage).
    stored = {t.name: t.type for t in weights}
    assert len(weights) == 10 and all(kind == ("INT8" if name.startswith(("conv0", "dw")) else "INT4")
                                      for name, kind in stored.items()), stored
    assert not [t.name for t in tensors if t.type == "FLOAT32"]

    config = run.read_config()
    test = load_split(config.dataset, config.data, "test", progress=False)
    lite = litert_accuracy(out, features_of(test.waves, config.frontend), test.labels)
    float_accuracy = json.loads(RunDir(trained_run).test_report_path.read_text())["accuracy"]
    assert lite >= float_accuracy - 0.15


def test_frozen_bn_fine_tuning_keeps_the_float_runs_moving_statistics(trained_run, tiny_dataset, tmp_path):
    """--frozen-bn-epochs: those epochs train the folded graph on the moving statistics, so a run
    frozen throughout ends with its float start's statistics while its kernels move."""
    from edgeasr.quant.qat import transfer_weights

    args = [*ds_cnn_args(tiny_dataset, tmp_path / "w4bn"), "--policy", "w4a8-tanh", "--epochs", "1",
            "--init-from", str(trained_run), "--frozen-bn-epochs", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "1 epochs, BatchNorm statistics frozen for the last 1," in result.output
    start = RunDir(trained_run).load_model()
    trained = keras.models.clone_model(start)
    transfer_weights(RunDir(tmp_path / "w4bn").load_model(), trained)
    batch_norms = [layer.name for layer in start.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) >= 3
    for name in batch_norms:
        for variable in ("moving_mean", "moving_variance"):
            np.testing.assert_array_equal(getattr(trained.get_layer(name), variable).numpy(),
                                          getattr(start.get_layer(name), variable).numpy())
    assert any(not np.array_equal(a, b) for a, b in zip(trained.get_weights(), start.get_weights()))

    too_many = CliRunner().invoke(main, [*args[:-1], "2"])
    assert too_many.exit_code != 0 and "--frozen-bn-epochs 2" in too_many.output


def test_distilled_w4_fine_tuning_learns_from_the_float_run(trained_run, tiny_dataset, tmp_path):
    """--distill-weight: the float --init-from run teaches the 4-bit student; the run logs label
    accuracy as usual and ends near the float model."""
    args = [*ds_cnn_args(tiny_dataset, tmp_path / "w4kd"), "--learning-rate", "0.0005", "--policy", "w4a8-tanh",
            "--epochs", "2", "--init-from", str(trained_run), "--distill-weight", "0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "w4kd")
    assert run.read_config().train.distill_weight == 0.5
    history = run.read_history()
    assert [e["epoch"] for e in history] == [1, 2]
    assert all(np.isfinite(e["loss"]) and 0.0 <= e["val_accuracy"] <= 1.0 for e in history)
    float_accuracy = json.loads(RunDir(trained_run).test_report_path.read_text())["accuracy"]
    assert json.loads(run.test_report_path.read_text())["accuracy"] >= float_accuracy - 0.15

    no_teacher = CliRunner().invoke(main, [*ds_cnn_args(tiny_dataset, tmp_path / "kd_alone"), "--policy", "w4a8-tanh",
                                           "--epochs", "1", "--distill-weight", "0.5"])
    assert no_teacher.exit_code != 0 and "--init-from" in no_teacher.output


@pytest.mark.slow
def test_a_terminated_training_says_where_it_stopped_and_resumes(tiny_dataset, tmp_path):
    """SIGTERM (a scheduler, kill) stops train as Ctrl-C does: it names the last epoch and the
    same command resumes from it."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "edgeasr.cli", *ds_cnn_args(tiny_dataset, run_dir), "--epochs", "40"]
    here = training_numerics()
    other_threads = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(here["threads"] + 1)}   # numerics of their own
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=other_threads)
    deadline = time.monotonic() + 300
    while not RunDir(run_dir).read_history() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    trained = len(RunDir(run_dir).read_history())
    assert process.returncode != 0 and 1 <= trained < 40, output
    assert re.search(r"interrupted after float epoch \d+; run the same command to resume", output), output
    resumed = CliRunner().invoke(main, [*ds_cnn_args(tiny_dataset, run_dir), "--epochs", str(trained + 1)])
    assert resumed.exit_code == 0 and re.search(r"== float: .*\nfloat: resuming after epoch \d+ of",
                                                resumed.output), resumed.output
    assert f"trained its earlier epochs with {describe({**here, 'threads': here['threads'] + 1})}" in resumed.output
    first = {"stage": "float", "from_epoch": 1, **here, "threads": here["threads"] + 1}
    assert RunDir(run_dir).read_numerics() == [first, {"stage": "float", "from_epoch": trained + 1, **here}]
