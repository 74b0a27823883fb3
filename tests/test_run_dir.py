"""Run directories: what config.json keeps so the run can be used from any folder."""
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
    assert run.claim(RunConfig(dataset="data", train=TrainConfig(epochs=5, init_from="runs/float"))) is True
    monkeypatch.chdir(tmp_path)                    # the same relative path now names another folder
    with pytest.raises(EdgeasrError, match="different configuration"):
        run.claim(config)
    assert run.read_config().dataset == str(tmp_path / "work" / "data")
