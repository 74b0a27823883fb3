"""Run directories: what config.json keeps so the run can be used from any folder, and when a
rerun may change it."""
from dataclasses import replace
from pathlib import Path

import pytest

from edgeasr.errors import EdgeasrError
from edgeasr.train.run_dir import RunConfig, RunDir, TrainConfig


def test_data_paths_are_stored_absolute_and_a_resume_from_the_same_folder_matches(tmp_path, monkeypatch):
    (tmp_path / "work" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    config = RunConfig(dataset="data", train=TrainConfig(epochs=2, init_from="runs/float"))
    run = RunDir(tmp_path / "run")
    assert run.claim(config) is False
    stored = run.read_config()
    assert stored.dataset == str(tmp_path / "work" / "data") and Path(stored.dataset).is_absolute()
    assert stored.train.init_from == str(tmp_path / "work" / "runs" / "float")
    run.append_history({"stage": "float", "epoch": 1})
    assert run.claim(RunConfig(dataset="data", train=TrainConfig(epochs=5, init_from="runs/float"))) is True
    monkeypatch.chdir(tmp_path)                    # the same relative path now names another folder
    with pytest.raises(EdgeasrError, match="different configuration"):
        run.claim(config)
    assert run.read_config().dataset == str(tmp_path / "work" / "data")


def test_a_run_that_trained_nothing_takes_the_corrected_config(tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(RunConfig(dataset=str(tmp_path), train=TrainConfig(epochs=3, batch_size=0)))
    fixed = RunConfig(dataset=str(tmp_path), train=TrainConfig(epochs=3, batch_size=16))
    assert run.claim(fixed) is False and run.read_config().train.batch_size == 16
    run.append_history({"stage": "float", "epoch": 1})
    with pytest.raises(EdgeasrError, match=r"different configuration \(train.batch_size: 16 -> 32\)"):
        run.claim(replace(fixed, train=replace(fixed.train, batch_size=32, epochs=9)))   # epochs may change


def test_a_finished_run_asked_for_fewer_epochs_keeps_the_epochs_it_trained(tmp_path):
    run = RunDir(tmp_path / "run")
    config = RunConfig(dataset=str(tmp_path), train=TrainConfig(epochs=4))
    run.claim(config)
    run.append_history({"stage": "float", "epoch": 4})
    run.model_path.write_bytes(b"trained")
    assert run.claim(replace(config, train=replace(config.train, epochs=2))) is True
    assert run.read_config().train.epochs == 4
    assert run.claim(replace(config, train=replace(config.train, epochs=6))) is True
    assert run.read_config().train.epochs == 6                # extending a run is still allowed


def test_an_interrupted_run_asked_for_fewer_epochs_records_the_epochs_it_trained(tmp_path):
    """No model file yet (interrupted), 5 epochs in its history: resumed with --epochs 3, the run
    finishes with its 5-epoch checkpoint, and config.json must say 5."""
    run = RunDir(tmp_path / "run")
    config = RunConfig(dataset=str(tmp_path), train=TrainConfig(epochs=12))
    run.claim(config)
    for epoch in range(1, 6):
        run.append_history({"stage": "float", "epoch": epoch})
    assert run.trained_epochs() == {"float": 5}
    assert run.claim(replace(config, train=replace(config.train, epochs=3))) is True
    assert run.read_config().train.epochs == 5


def test_init_from_a_run_with_other_classes_is_refused_before_anything_is_written(tmp_path):
    from edgeasr.data.speech_commands import DataConfig
    from edgeasr.train.fit import starting_model, train

    start = RunDir(tmp_path / "yes_no")
    start.claim(RunConfig(dataset=str(tmp_path), data=DataConfig(keywords=("yes", "no"))))
    swapped = RunConfig(dataset=str(tmp_path), data=DataConfig(keywords=("no", "yes")),
                        train=TrainConfig(init_from=str(start.path)))
    with pytest.raises(EdgeasrError, match="its classes are _silence_, _unknown_, yes, no; this run's are "
                                           "_silence_, _unknown_, no, yes"):
        starting_model(swapped)
    with pytest.raises(EdgeasrError, match="train trains keyword models: ds_cnn_s, ds_cnn_m, ffn_stateless"):
        train(tmp_path / "conformer", replace(swapped, model=replace(swapped.model, name="conformer")))
    with pytest.raises(EdgeasrError, match="--epochs must be 0 or more"):
        train(tmp_path / "negative", replace(swapped, train=TrainConfig(epochs=-1)))
    assert not (tmp_path / "conformer").exists() and not (tmp_path / "negative").exists()


def test_train_names_the_changed_setting_before_loading_any_data(tmp_path, monkeypatch):
    from edgeasr.train import fit

    config = RunConfig(dataset=str(tmp_path), train=TrainConfig(epochs=3)).with_model_shape()
    run = RunDir(tmp_path / "run")
    run.claim(config)
    run.append_history({"stage": "float", "epoch": 1})
    monkeypatch.setattr(fit, "load_training_data", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(EdgeasrError, match=r"train.learning_rate: 0.003 -> 0.01"):
        fit.train(run.path, replace(config, train=replace(config.train, learning_rate=0.01)), progress=False)


def test_a_run_being_trained_is_refused_to_a_second_process(tmp_path):
    import subprocess
    import sys

    run = RunDir(tmp_path / "run")
    code = ("import sys; from edgeasr.train.run_dir import RunDir\n"
            "try:\n    RunDir(sys.argv[1]).locked().__enter__()\n"
            "except Exception as exc:\n    print(exc); sys.exit(3)\n")
    with run.locked():
        second = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 3 and "another process is training this run" in second.stdout, second.stderr
        early = subprocess.run([sys.executable, "-c", code.replace(".locked().__enter__()", ".refuse_if_training_elsewhere()"),
                                str(run.path)], capture_output=True, text=True, timeout=120)
        assert early.returncode == 3 and "another process is training this run" in early.stdout, early.stderr
    after = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, timeout=120)
    assert after.returncode == 0, after.stdout + after.stderr


def test_training_writes_one_line_per_epoch_to_a_log_and_a_bar_to_a_terminal(monkeypatch):
    import io
    import sys

    from edgeasr.train.fit import keras_verbosity

    log = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log)
    assert keras_verbosity(1) == 2 and keras_verbosity(0) == 0
    monkeypatch.setattr(log, "isatty", lambda: True)
    assert keras_verbosity(1) == 1


def test_stage_epochs_that_would_be_lost_or_uneven_are_refused(tmp_path):
    from edgeasr.quant.policy import preset
    from edgeasr.train.fit import plan_stages, refuse_inconsistent_stage_epochs

    run = RunDir(tmp_path / "run")
    config = RunConfig(dataset=str(tmp_path), train=TrainConfig(epochs=4, stages=2), policy=preset("w4a8-tanh"))
    run.claim(config)
    for epoch in (1, 2, 3):                                   # interrupted in stage 1
        run.append_history({"stage": "stage1", "epoch": epoch})
    stages = lambda epochs: plan_stages(replace(config, train=replace(config.train, epochs=epochs)))
    refuse_inconsistent_stage_epochs(run, stages(4))                               # resuming: fine
    refuse_inconsistent_stage_epochs(run, stages(3))                               # stage 1 done at 3, stage 2 gets 3
    with pytest.raises(EdgeasrError, match="already trained 3 epochs; --epochs 2 would give its stages different"):
        refuse_inconsistent_stage_epochs(run, stages(2))
    run.append_history({"stage": "stage2", "epoch": 1})
    with pytest.raises(EdgeasrError, match=r"stage2 already trained from the end of stage1 \(3 epochs\)"):
        refuse_inconsistent_stage_epochs(run, stages(4))


def test_an_unfinished_run_names_the_command_that_finishes_it(tmp_path):
    from edgeasr.train.asr_fit import AsrRunDir

    with pytest.raises(EdgeasrError, match=r"no trained model \(model.keras\); finish `edgeasr train` first"):
        RunDir(tmp_path).load_model()
    with pytest.raises(EdgeasrError, match=r"finish `edgeasr train-asr` first"):
        AsrRunDir(tmp_path).load_model()
