import json
import re

import pytest
from click.testing import CliRunner

from edgeasr.cli import main
from tests.conftest import TINY_KEYWORDS

COMMANDS = [[], ["data"], ["data", "synth-kws"], ["train"], ["convert"], ["inspect"], ["validate"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgeasr")
def test_every_help_shows_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "edgeasr " in result.output


def test_continued_example_lines_stay_on_lines_of_their_own():
    """A docstring line ending in a single backslash is joined to the next by Python itself."""
    import click

    def commands(group, path=()):
        for name, command in group.commands.items():
            yield path + (name,), command
            if isinstance(command, click.Group):
                yield from commands(command, path + (name,))

    for path, _ in commands(main):
        text = CliRunner().invoke(main, [*path, "--help"]).output
        examples = text.split("Example", 1)[-1].split("Options:", 1)[0]
        assert not re.search(r"\S {4,}--", examples), (path, examples)      # "... inputs.npy     --labels"


def test_synth_kws_writes_a_dataset_and_reports_counts(tmp_path):
    out = tmp_path / "kws"
    args = ["data", "synth-kws", str(out), "--words", "yes,no", "--speakers", "4", "--repeats", "1", "--seed", "7"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    clips = [p for p in out.glob("*/*.wav") if p.parent.name != "_background_noise_"]
    assert sum(summary["clips"].values()) == len(clips)
    assert {"_background_noise_", "no", "yes"} <= {p.name for p in out.iterdir() if p.is_dir()}


def test_synth_kws_near_words_adds_one_unknown_folder_per_near_word(tmp_path):
    from edgeasr.data.synth import DEFAULT_UNKNOWN_WORDS, NEAR_WORDS
    from edgeasr.data.speech_commands import SPEECH_COMMANDS_KEYWORDS

    assert not set(NEAR_WORDS) & set(DEFAULT_UNKNOWN_WORDS + SPEECH_COMMANDS_KEYWORDS)
    out = tmp_path / "kws"
    args = ["data", "synth-kws", str(out), "--words", "stop,up", "--speakers", "3", "--repeats", "1", "--near-words"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    folders = {p.name: len(list(p.glob("*.wav"))) for p in out.iterdir() if p.is_dir()}
    assert all(folders.get(word) == 3 for word in NEAR_WORDS + DEFAULT_UNKNOWN_WORDS), folders
    written = json.loads((out / "synth_config.json").read_text())["config"]["unknown_words"]
    assert written == list(DEFAULT_UNKNOWN_WORDS + NEAR_WORDS)


def test_synth_kws_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "kws").mkdir()
    (tmp_path / "kws" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["data", "synth-kws", str(tmp_path / "kws"), "--speakers", "3"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "kws" in result.output
    assert (tmp_path / "kws" / "keep.txt").read_text() == "mine"


def test_train_on_a_folder_without_words_fails_clearly(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "Speech Commands layout" in result.output


def test_unknown_model_lists_the_known_ones(tiny_dataset, tmp_path):
    args = ["train", str(tiny_dataset), "--run-dir", str(tmp_path / "run"), "--model", "resnet9000",
            "--keywords", ",".join(TINY_KEYWORDS)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "ds_cnn_s" in result.output and "ffn_stateless" in result.output


def test_convert_needs_a_run_directory(tmp_path):
    result = CliRunner().invoke(main, ["convert", str(tmp_path), "-o", str(tmp_path / "m.tflite")])
    assert result.exit_code == 1
    assert "not an edgeasr run directory" in result.output
    assert not (tmp_path / "m.tflite").exists()


def test_demo_refuses_qat_epochs_the_stages_cannot_share_before_any_work(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--qat-stages", "2", "--qat-epochs", "5"])
    assert result.exit_code == 1
    assert "5 epochs cannot be split evenly into 2 stage(s)" in result.output
    assert not out.exists()


@pytest.mark.parametrize("command", [["eval-stream", "{model}", "--wav", "{wav}", "--labels", "{labels}"],
                                     ["transcribe", "{model}", "{wav}"]], ids=lambda c: c[0])
def test_a_file_that_is_no_model_is_a_plain_error(tmp_path, command):
    import numpy as np
    import soundfile as sf

    paths = {"model": tmp_path / "random.tflite", "wav": tmp_path / "a.wav", "labels": tmp_path / "a.labels.txt"}
    paths["model"].write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    sf.write(paths["wav"], np.zeros(16000, np.int16), 16000)
    paths["labels"].write_text("0.2 0.6 yes\n")
    result = CliRunner().invoke(main, [part.format(**paths) for part in command])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
    assert "Error:" in result.output and "not a TFLite model" in result.output


def test_demo_refuses_a_data_folder_it_did_not_make_or_made_with_other_settings(tmp_path):
    data = tmp_path / "demo" / "data"
    data.mkdir(parents=True)
    (data / "precious.txt").write_text("mine")
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--speakers", "6"])
    assert result.exit_code == 1 and "not empty and not a demo's data" in result.output
    assert (data / "precious.txt").read_text() == "mine"
    (data / "precious.txt").unlink()
    (data / "synth_config.json").write_text(json.dumps({"config": {"speakers": 3, "seed": 0}}))
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--speakers", "6"])
    assert result.exit_code == 1 and "--speakers 6 (it has 3)" in result.output


def test_a_path_the_system_refuses_is_a_plain_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(main, ["data", "synth-kws", str(tmp_path / "afile" / "sub"), "--speakers", "3"])
    assert result.exit_code == 1 and result.output.startswith("Error:") and "afile" in result.output


def test_demo_table_gives_the_int4_share_of_weight_bytes_and_tensors():
    from edgeasr.demo import format_summary

    row = {"keras_test_accuracy": 0.97, "litert_test_accuracy": 0.965, "tflite_bytes": 25952,
           "int4_weight_share": 8576 / 13440, "int4_weight_tensors": 5, "weight_tensors": 10}
    table = format_summary({"model": "ds_cnn_s", "parameters": 24332, "float_tflite_bytes": 92856,
                            "test_clips": 581, "seconds": 493.0, "models": {"w4a8-tanh": row}})
    w4 = next(line for line in table.splitlines() if line.startswith("w4a8-tanh"))
    assert w4.split()[1:] == ["97.00%", "96.50%", "25,952", "3.6x", "64%", "(5/10", "tensors)"]


def test_number_options_refuse_nan_inf_and_out_of_range_values_as_usage_errors(tmp_path):
    """click.FloatRange lets nan and inf through its comparisons: --learning-rate nan trained to a nan
    loss and wrote NaN into config.json."""
    for command in (["train", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--learning-rate", "nan"],
                    ["train", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--learning-rate", "inf"],
                    ["train", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--mracos-weight", "-1"],
                    ["data", "synth-kws", str(tmp_path / "d"), "--speakers", "0"],
                    ["data", "synth-kws", str(tmp_path / "d"), "--repeats", "0"],
                    ["data", "synth-kws", str(tmp_path / "d"), "--sentence-windows", "-1"],
                    ["data", "synth-asr", str(tmp_path / "d"), "--utterances", "0"],
                    ["data", "manifest", "--librispeech", str(tmp_path), "-o", str(tmp_path / "m"),
                     "--max-seconds", "nan"],
                    ["train-asr", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--learning-rate", "nan"],
                    ["train-asr", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--learning-rate", "1e-320"],
                    ["train-asr", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--batch-size", "0"],
                    ["train-asr", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--epochs", "-1"],
                    ["data", "synth-asr", str(tmp_path / "d"), "--max-seconds", "1"],
                    ["train", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--seed", "-1"],
                    ["data", "synth-kws", str(tmp_path / "d"), "--seed", str(2**32)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "Invalid value for" in result.output, (command, result.output)
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_train_refuses_a_dataset_without_held_out_clips_and_repeated_keywords(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    for name in ("testing_list.txt", "validation_list.txt"):
        (root / name).unlink()
    args = ["train", str(root), "--run-dir", str(tmp_path / "run"), "--keywords", ",".join(TINY_KEYWORDS)]
    unlisted = CliRunner().invoke(main, args)
    assert unlisted.exit_code == 1 and "no validation or test clips" in unlisted.output, unlisted.output
    assert "Traceback" not in unlisted.output
    twice = CliRunner().invoke(main, [*args[:-1], "yes,no,yes"])
    assert twice.exit_code == 1 and "yes: given more than once in 'yes,no,yes'" in twice.output
    reserved = CliRunner().invoke(main, [*args[:-1], "yes,_unknown_"])
    assert reserved.exit_code == 1 and "_unknown_: names starting with '_' are the kit's own" in reserved.output


def test_train_warns_when_the_dataset_has_no_background_noise(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    shutil.rmtree(root / "_background_noise_")
    result = CliRunner().invoke(main, ["train", str(root), "--run-dir", str(tmp_path / "run"), "--keywords",
                                       ",".join(TINY_KEYWORDS), "--epochs", "0", "--model", "ffn_stateless"])
    assert result.exit_code == 0, result.output
    assert "no _background_noise_ recordings: the _silence_ clips are digital silence" in result.output
    assert "Warning: --epochs 0: nothing was trained; the run holds random initial weights" in result.output


def test_frozen_bn_epochs_are_refused_for_a_model_without_batch_norm(tiny_dataset, tmp_path):
    result = CliRunner().invoke(main, ["train", str(tiny_dataset), "--run-dir", str(tmp_path / "run"), "--keywords",
                                       ",".join(TINY_KEYWORDS), "--model", "ffn_stateless", "--policy", "w4a8-tanh",
                                       "--epochs", "2", "--frozen-bn-epochs", "1"])
    assert result.exit_code == 1 and "ffn_stateless has no BatchNormalization layers to freeze" in result.output
    assert not (tmp_path / "run" / "config.json").exists()


def test_validate_report_must_be_a_file_stem(tmp_path):
    from tests.test_streaming import energy_model

    model = energy_model(tmp_path / "m.tflite")
    (tmp_path / "folder").mkdir()
    for value in ("", "checks/", str(tmp_path / "folder")):
        result = CliRunner().invoke(main, ["validate", str(model), "--source", str(tmp_path), "--report", value])
        assert result.exit_code == 2 and "give a file stem such as checks/recordings" in result.output, result.output
