"""The docs scripts stop before writing anything when the training runs they score are missing
(stream_errors.py wrote empty tables over the committed ones, exit 0), and say which figures an
earlier run took the old way."""
import shutil
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("name", ["asr_results", "convert_results", "qat_results", "layernorm_int8",
                                  "asr_gap_parts", "attention_leak"])
def test_re_rendering_without_a_saved_json_says_so_in_one_line(name, tmp_path):
    import importlib

    script = importlib.import_module(name)
    with pytest.raises(SystemExit, match=rf"{name}.json: missing; run the script without --report-only first"):
        script.main(["--report-only", "--docs", str(tmp_path)])


def test_stream_results_names_which_validation_figures_predate_their_own_layout():
    import stream_results

    def summary(layout, options, rows, spread):
        return {"protocol": {"validation_layout": layout} if layout else {}, "options": options,
                "minutes_for": ["ffn_stateless", "ds_cnn_s"], "results": rows, "seed_spread": spread}

    row, tagged = {"model": "ds_cnn_s"}, {"model": "ds_cnn_s", "validation_layout": "own"}
    assert stream_results.old_validation_caveat(summary("own", "--seed-spread", [row], [row])) == ""
    before = stream_results.old_validation_caveat(summary(None, "--seed-spread", [row], [row]))
    assert before.startswith("**These validation figures predate") and "rerun of this script builds" in before
    kept = stream_results.old_validation_caveat(summary("own", "", [row], [row]))   # main pass, seed rows kept
    assert kept.startswith("**The validation figures of the seed lines below") and "with --seed-spread" in kept
    assert stream_results.old_validation_caveat(summary(None, "", [tagged], [tagged])) == ""
    assert stream_results.old_validation_caveat(summary("own", "", [{"model": "ffn_stateless"}], [])) == ""


def test_qat_results_says_which_numerics_trained_its_runs():
    import qat_results

    here = {"stage": "float", "from_epoch": 1, "tensorflow": "2.21.0", "kernels": "onednn-avx512_core", "threads": 2}
    resumed = [here, {**here, "from_epoch": 4, "kernels": "onednn-avx2"}]
    text = qat_results.numerics_text([{"numerics": [here]}, {"numerics": [here]}, {"numerics": resumed}, {}])
    assert "TensorFlow 2.21.0, onednn-avx512_core kernels, 2 threads: 2 runs;" in text
    assert "avx512_core kernels, 2 threads then TensorFlow 2.21.0, onednn-avx2 kernels, 2 threads: 1 run;" in text
    assert qat_results.numerics_text([{"numerics": [{**here, "cpu": "Xeon"}]}]).endswith(" 2 threads, Xeon: 1 run.")
    assert text.endswith("not recorded (trained before runs recorded them): 1 run.")


def test_asr_results_says_which_numerics_trained_its_runs(tmp_path):
    import asr_results
    from edgeasr.train.asr_fit import AsrRunDir

    here = {"tensorflow": "2.21.0", "kernels": "onednn-avx512_core", "threads": 2, "cpu": "Xeon"}
    trained, old = tmp_path / "xs_float", tmp_path / "xs_w8a8"
    AsrRunDir(trained).note_numerics(here, "float", 1)
    AsrRunDir(trained).append_history({"loss": 0.5, "val_loss": 0.7})
    record = asr_results._training_record(trained)
    assert record == {"epochs": 1, "final_loss": 0.5, "final_val_loss": 0.7,
                      "numerics": [{"stage": "float", "from_epoch": 1, **here}]}
    results = {**asr_results.read_summary(REPO / "docs", "asr_results", "--report-only"),
               "training": {"float": record, "w8a8": asr_results._training_record(old)}}
    asr_results.write_markdown(results, tmp_path)
    text = (tmp_path / "asr_results.md").read_text()
    assert ("TensorFlow 2.21.0, onednn-avx512_core kernels, 2 threads, Xeon: 1 run; "
            "not recorded (trained before runs recorded them): 1 run.") in text
    assert "| w8a8 | 0 | - | - |" in text


def test_asr_results_fine_tunes_another_seed_from_the_same_float_run(tmp_path):
    import asr_results

    seed0, _ = asr_results.plan_runs(asr_results.parse_args(["--work", str(tmp_path)]))
    runs, configs = asr_results.plan_runs(asr_results.parse_args(["--work", str(tmp_path), "--finetune-seed", "3"]))
    assert runs["float"] == seed0["float"] == tmp_path / "xs_float"
    assert runs["w4a8-tanh"] == tmp_path / "xs_w4a8_tanh_seed3" and seed0["w4a8-tanh"] == tmp_path / "xs_w4a8_tanh"
    assert configs["float"].train.seed == 0
    assert asr_results.parse_args(["--finetune-seed", "3"]).docs == REPO / "docs" / "asr_seed3"
    assert asr_results.parse_args([]).docs == REPO / "docs"
    for name in ("float-ft", "w4a8-tanh", "w8a8"):
        assert configs[name].train.seed == 3 and configs[name].train.init_from == str(runs["float"])


def test_asr_results_judges_the_4_bit_gap_on_the_mean_over_seeds(tmp_path):
    import json

    import asr_results

    saved = asr_results.read_summary(REPO / "docs", "asr_results", "--report-only")

    def write_seed(seed: int, folder: Path, w4a8_cer: float, validation_points: float) -> None:
        evaluations = [{**e, "cer": w4a8_cer} if e["model"] == "litert w4a8-tanh" else e for e in saved["evaluations"]]
        float_ft = next(e["cer"] for e in evaluations if e["model"] == "keras float-ft")
        gap = {**saved["targets"]["w4a8_cer_gap_points"], "value": 100 * (w4a8_cer - float_ft)}
        results = {**saved, "evaluations": evaluations, "recipe": {**saved["recipe"], "finetune_seed": seed},
                   "targets": {**saved["targets"], "w4a8_cer_gap_points": gap},
                   "validation": {**saved["validation"], "points": validation_points}}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "asr_results.json").write_text(json.dumps(results))

    float_ft = next(e["cer"] for e in saved["evaluations"] if e["model"] == "keras float-ft")
    write_seed(0, tmp_path, float_ft + 0.009, 0.8)
    write_seed(2, tmp_path / "asr_seed2", float_ft - 0.001, 0.2)
    write_seed(1, tmp_path / "asr_seed1", float_ft + 0.002, 0.5)
    asr_results.write_seed_summary(tmp_path)
    text = (tmp_path / "asr_seeds.md").read_text()
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 0", "| 1", "| 2"]
    assert "| +0.90 ± " in text and "| -0.10 ± " in text
    assert "Mean test gap over 3 seeds: +0.33 ± 0.30 points; target <= 0.5: met (within two" in text
    assert "Mean validation gap over 3 seeds: +0.50 ± 0.17 points; target <= 0.5: met (within two" in text
    args = asr_results.parse_args(["--docs", str(tmp_path / "asr_seed2"), "--finetune-seed", "2"])
    assert asr_results.seeds_root(args) == tmp_path
    assert asr_results.seeds_root(asr_results.parse_args(["--docs", str(tmp_path)])) == tmp_path


def test_layernorm_int8_chain_is_the_models_layer_norm_and_rounds_the_steps_it_is_given():
    import layernorm_int8
    from edgeasr.models.conformer import LayerNorm

    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (5, 16))
    gamma, beta = rng.normal(1.0, 0.2, 16), rng.normal(0.0, 0.5, 16)
    layer = LayerNorm(16)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    reference = layernorm_int8.float_chain(x, layer.epsilon, gamma, beta, {})
    np.testing.assert_allclose(reference, layer(x.astype(np.float32)).numpy(), atol=1e-5)
    grid = {"quantization": (0.25, 0), "dtype": np.int8}
    centred = layernorm_int8.float_chain(x, layer.epsilon, gamma, beta, {"centred": grid})
    assert 0.01 < layernorm_int8.relative_rms(centred, reference) < 0.1
    on_output = layernorm_int8.float_chain(x, layer.epsilon, gamma, beta, {"output": grid})
    assert np.all(np.abs(on_output - reference) <= 0.125 + 1e-9)
    np.testing.assert_allclose(on_output / 0.25, np.round(on_output / 0.25), atol=1e-9)   # on the grid
    every_step = {step: grid for step in layernorm_int8.STEPS}
    with layernorm_int8.layer_norms_rounding({layer.name: every_step}):    # the Keras twin used for CER
        rounded = layer(x.astype(np.float32)).numpy()
    same = np.abs(rounded - layernorm_int8.float_chain(x, layer.epsilon, gamma, beta, every_step)) < 1e-4
    assert same.mean() > 0.95 and layernorm_int8.relative_rms(rounded, reference) > 0.05
    np.testing.assert_allclose(layer(x.astype(np.float32)).numpy(), reference, atol=1e-5)   # restored after


def test_asr_gap_parts_names_the_seed_that_has_no_tables(tmp_path):
    import asr_gap_parts

    with pytest.raises(SystemExit, match="seed 7: no asr_results.json in .*--finetune-seed 7` first"):
        asr_gap_parts.main(["--seeds", "0", "7", "--docs", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_asr_gap_parts_rescored_the_same_litert_transcripts_as_asr_results():
    """The LiteRT w4a8 CER asr_gap_parts.py measured again is asr_results.py's, seed by seed, so its
    parts (feeding + QAT + integer) add up to asr_results.py's gap."""
    import asr_gap_parts

    parts = asr_gap_parts.read_summary(REPO / "docs", "asr_gap_parts")
    for row in parts["rows"]:
        for split in asr_gap_parts.SPLITS:
            measured = row[split]
            assert measured["litert_w4a8"] - measured["float_ft"] == pytest.approx(measured["published_gap"], abs=1e-6)
            assert measured["gap"] == pytest.approx(measured["litert_w4a8"] - measured["float_ft_fed"], abs=1e-6)
    assert [row["seed"] for row in parts["rows"]] == list(range(5))


def test_convert_results_reads_the_conversions_accuracy_change_over_seeds():
    import convert_results

    def row(seed, keras_clips, litert_clips, **extra):
        return {"model": "ds_cnn_s", "policy": "w4a8-tanh", "seed": seed, "keras_accuracy": keras_clips / 968,
                "litert_accuracy": litert_clips / 968, "argmax_agreement": 0.995 - seed / 1000, "examples": 968,
                **extra}

    main = row(0, 940, 942, mode="QAT")
    summary = {"rows": [main, {**main, "mode": "PTQ", "litert_accuracy": 0.0}],
               "seed_rows": [row(2, 930, 929), row(1, 950, 950)]}
    assert [r["seed"] for r in convert_results.seed_groups(summary)[("ds_cnn_s", "w4a8-tanh")]] == [0, 1, 2]
    table_row = convert_results.seed_spread_lines(summary)[-1]
    clips = [2, 0, -1]
    points = [100 * c / 968 for c in clips]
    mean, error = sum(points) / 3, float(np.std(points, ddof=1) / np.sqrt(3))
    assert table_row == (f"| ds_cnn_s | w4a8-tanh | 3 | +2, +0, -1 | {mean:+.3f} ± {error:.3f} | "
                         f"{sum(map(abs, points)) / 3:.3f} | 2 of 3 | 99.30% |")
    assert convert_results.seed_spread_lines({"rows": [main]}) == []


def test_training_numerics_names_the_settings_that_train_other_weights():
    import training_numerics

    def result(setting, differing, policy="w8a8"):
        return {"setting": setting, "environment": training_numerics.SETTINGS[setting], "policy": policy,
                "numerics": [], "arrays": 154, "arrays_differing": differing, "first_epoch_loss": 0.2238,
                "validation_accuracy": 0.99, "keras_accuracy": 0.977, "litert_accuracy": 0.977}

    summary = {"model": "ds_cnn_s", "machine": "TensorFlow 2.21.0, onednn-avx512_core kernels, 2 threads",
               "minutes": 3.0, "rows": [result("default", 0), result("repeat", 0), result("avx2", 118),
                                        result("default", 0, "float"), result("eigen", 107, "float")]}
    text = training_numerics.markdown(summary)
    assert "| w8a8 | avx2 | `ONEDNN_MAX_CPU_ISA=AVX2` | - | 118 of 154 | 0.22380 |" in text
    assert "- w8a8: bit-identical to the default run: repeat; other weights: avx2." in text
    assert "- float: bit-identical to the default run: none; other weights: eigen." in text
