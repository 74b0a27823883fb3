"""scripts/recipe_pilots.py's report: gaps to float per seed, how they read together, the committed table."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import recipe_pilots as rp  # noqa: E402


def point(frr_own, frr_float, fa_float):
    return {"threshold": 0.9, "frr_at_own_threshold": frr_own, "frr_at_float_threshold": frr_float,
            "fa_per_hour_at_float_threshold": fa_float}


def seed(number, pilot, recipe=None, float_point=point(0.20, 0.20, 1.0)):
    return {"seed": number, "keras_accuracy": 0.97, "litert_accuracy": 0.97, "float": float_point,
            "pilot": pilot, "recipe": recipe}


def test_gaps_are_per_seed_differences_to_float_in_points_and_per_hour():
    seeds = [seed(0, point(0.23, 0.21, 1.5), recipe=point(0.22, 0.20, 1.0)),
             seed(1, point(0.25, 0.23, 2.5))]
    frr_float, fa_float, frr_own = rp.MEASURES
    assert rp.side_gaps(seeds, "pilot", frr_own) == pytest.approx([3.0, 5.0])
    assert rp.side_gaps(seeds, "pilot", fa_float) == pytest.approx([0.5, 1.5])
    assert rp.side_gaps(seeds, "recipe", frr_float) == pytest.approx([0.0])   # seed 1 has no recipe run
    assert rp.gap_text(rp.side_gaps(seeds, "pilot", frr_own), 2) == "+4.00 ± 1.00"
    assert rp.gap_text(rp.side_gaps(seeds, "recipe", frr_own), 2) == "+2.00 (1 seeds)"
    assert rp.gap_text([], 2) == "-"


def test_reading_counts_a_gap_within_one_standard_error_as_level():
    worse = [seed(0, point(0.3, 0.25, 2.0)), seed(1, point(0.3, 0.27, 2.2))]
    assert rp.reading(worse) == "worse than float on both"
    trade = [seed(0, point(0.3, 0.15, 2.0)), seed(1, point(0.3, 0.17, 3.0))]
    assert rp.reading(trade) == "fewer misses, more false accepts"
    noisy_fa = [seed(0, point(0.3, 0.25, 0.0)), seed(1, point(0.3, 0.27, 3.0))]   # FA gap +0.5 ± 1.5
    assert rp.direction(rp.side_gaps(noisy_fa, "pilot", rp.MEASURES[1])) == 0
    assert rp.reading(noisy_fa) == "more misses, as many false accepts"


def test_change_text_names_only_what_differs_from_the_recipe():
    pilot = {"model": "ds_cnn_s", "recipe_policy": "w4a8-tanh", "policy": "w4a8-tanh", "lr": 3e-4}
    assert rp.change_text(pilot) == "peak lr 0.0003"
    assert rp.change_text({"model": "ds_cnn_s", "recipe_policy": "w4a8-tanh"}) == "none"
    assert rp.label({"pilot": "x", "stream": "both"}) == "x (both 14 h)"
    assert rp.label({"pilot": "x"}) == "x"


def test_numerics_lines_count_each_run_once_and_group_unrecorded_pilots():
    amd = [{"stage": "stage1", "from_epoch": 0, "tensorflow": "2.21.0", "kernels": "onednn-avx512_core",
            "threads": 2, "cpu": "AMD EPYC"}]
    recorded = [seed(s, {**point(0.2, 0.2, 1.0), "numerics": amd}, recipe=point(0.2, 0.2, 1.0),
                     float_point={**point(0.2, 0.2, 1.0), "numerics": amd}) for s in (0, 1)]
    pilots = [{"pilot": "mixed", "stream": "test", "seeds": recorded},
              {"pilot": "mixed", "stream": "both", "seeds": recorded},   # the same runs on another stream
              {"pilot": "old", "seeds": [seed(0, point(0.2, 0.2, 1.0))]},
              {"pilot": "older", "seeds": [seed(0, point(0.2, 0.2, 1.0))]}]
    lines = rp.numerics_lines(pilots)
    # per seed: the pilot's and float's runs recorded, the recipe's run not
    assert ("- mixed: TensorFlow 2.21.0, onednn-avx512_core kernels, 2 threads, AMD EPYC: 4 runs; "
            "not recorded (trained before runs recorded them): 2 runs") in lines
    assert lines[-1] == "- old, older: trained before runs recorded their numerics"


def test_committed_table_is_what_its_json_renders():
    """docs/recipe_pilots.md is regenerated from docs/recipe_pilots.json by --markdown-only."""
    summary = rp.read_summary(REPO / "docs", "recipe_pilots")
    assert rp.markdown(summary) == (REPO / "docs" / "recipe_pilots.md").read_text()
