"""The docs scripts stop before writing anything when the training runs they score are missing
(stream_errors.py wrote empty tables over the committed ones, exit 0)."""
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import keyword_thresholds  # noqa: E402
import stream_errors  # noqa: E402


@pytest.mark.parametrize("script", [stream_errors, keyword_thresholds], ids=lambda s: s.__name__)
def test_a_run_without_seed_runs_stops_and_leaves_the_docs(script, tmp_path):
    name = script.__name__
    docs = tmp_path / "docs"
    docs.mkdir()
    for suffix in (".json", ".md"):
        shutil.copy(REPO / "docs" / f"{name}{suffix}", docs)
    (tmp_path / "runs" / "ds_cnn_s" / "float_seed0").mkdir(parents=True)      # never finished: no model.keras
    with pytest.raises(SystemExit, match=r"ds_cnn_s: no finished <policy>_seed<i> run; train them first"):
        script.main(["--models", "ds_cnn_s", "--runs", str(tmp_path / "runs"), "--docs", str(docs),
                     "--work", str(tmp_path / "work"), "--data", str(tmp_path / "data")])
    for suffix in (".json", ".md"):
        assert (docs / f"{name}{suffix}").read_bytes() == (REPO / "docs" / f"{name}{suffix}").read_bytes()


@pytest.mark.parametrize("name", ["asr_results", "convert_results", "qat_results"])
def test_re_rendering_without_a_saved_json_says_so_in_one_line(name, tmp_path):
    import importlib

    script = importlib.import_module(name)
    with pytest.raises(SystemExit, match=rf"{name}.json: missing; run the script without --report-only first"):
        script.main(["--report-only", "--docs", str(tmp_path)])
