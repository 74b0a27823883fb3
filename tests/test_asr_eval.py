"""Paired CER comparisons: per-utterance character edits and the bootstrap standard error of a gap."""
import numpy as np
import pytest

from edgeasr.eval.asr import cer_difference_standard_error, character_edits, error_rates

REFERENCES = ["switch on the oven", "dial zero four eight", "set the speed to twenty", "olivia washed the soft"]


def test_character_edits_sum_to_the_corpus_cer():
    hypotheses = ["switch on the overn", "dial zero four eight", "sen the speed to twenty", "olvia washed the softf"]
    edits = character_edits(REFERENCES, hypotheses)
    assert edits.shape == (4, 2)
    assert edits[:, 0].tolist() == [1, 0, 1, 2]
    assert edits[:, 1].tolist() == [len(r) for r in REFERENCES]
    assert edits[:, 0].sum() / edits[:, 1].sum() == pytest.approx(error_rates(REFERENCES, hypotheses)["cer"])


def test_markdown_report_lists_every_model_and_its_worst_utterances():
    from edgeasr.eval.asr import markdown_reports

    hypotheses = ["switch on the overn", "dial zero four eight", "sen the speed to twenty", "olvia washed the softf"]
    edits = character_edits(REFERENCES, hypotheses)[:, 0]
    report = {"model": "w4.tflite", "kind": "litert", **error_rates(REFERENCES, hypotheses), "rtf": 0.0042,
              "bytes": 621_000,
              "transcripts": [{"audio": f"a{i}.wav", "reference": r, "hypothesis": h, "edits": int(e)}
                              for i, (r, h, e) in enumerate(zip(REFERENCES, hypotheses, edits))]}
    perfect = {**report, "model": "runs/xs", "kind": "keras float", "rtf": None, "bytes": None, "wer": 0.0, "cer": 0.0,
               "sentence_accuracy": 1.0, "transcripts": [{**t, "hypothesis": t["reference"], "edits": 0}
                                                         for t in report["transcripts"]]}
    text = markdown_reports([report, perfect], "test.jsonl")
    assert f"| w4.tflite | litert | 4 | {report['wer']:.2%} | {report['cer']:.2%} | 25.0% | 0.0042 | 621,000 |" in text
    assert "| runs/xs | keras float | 4 | 0.00% | 0.00% | 100.0% | - | - |" in text
    worst = text.split("## w4.tflite: the 3 utterance(s) with the most character edits")[1].split("##")[0]
    assert worst.index("a3.wav (2 edits)") < worst.index("a0.wav (1 edits)") and "a1.wav" not in worst
    assert "## runs/xs: every utterance right" in text


def test_standard_error_is_zero_for_the_same_transcripts_and_grows_with_uneven_errors():
    rng = np.random.default_rng(0)
    characters = rng.integers(10, 40, size=500)
    a = np.stack([rng.binomial(characters, 0.08), characters], axis=1)
    assert cer_difference_standard_error(a, a) == 0.0
    # b makes a's errors plus extra ones on a random fifth of the utterances
    extra = np.where(rng.random(500) < 0.2, rng.integers(1, 4, size=500), 0)
    b = np.stack([a[:, 0] + extra, characters], axis=1)
    gap = b[:, 0].sum() / characters.sum() - a[:, 0].sum() / characters.sum()
    error = cer_difference_standard_error(a, b)
    assert 0 < error < gap / 3        # the extra errors are spread over ~100 utterances: a clear gap
    assert cer_difference_standard_error(a, b, resamples=4000, seed=1) == pytest.approx(error, rel=0.15)


def test_standard_error_needs_the_same_utterances():
    with pytest.raises(ValueError, match="same utterances"):
        cer_difference_standard_error(np.ones((3, 2)), np.ones((4, 2)))


def test_evaluate_model_refuses_a_limit_below_one_and_a_keyword_model(tmp_path):
    from edgeasr.errors import EdgeasrError
    from edgeasr.eval.asr import evaluate_model
    from tests.test_streaming import energy_model

    manifest = tmp_path / "test.jsonl"
    manifest.write_text("")
    for limit in (0, -1):
        with pytest.raises(EdgeasrError, match=f"limit {limit}: need 1 or more"):
            evaluate_model(tmp_path / "model.tflite", manifest, limit=limit)
    keyword_model = energy_model(tmp_path / "kws.tflite")
    with pytest.raises(EdgeasrError, match="kws.tflite: no speech-recognition metadata"):
        evaluate_model(keyword_model, manifest)


def test_eval_asr_options_are_checked_before_anything_runs(tmp_path):
    from click.testing import CliRunner

    from edgeasr.cli import main

    (tmp_path / "m.tflite").write_bytes(b"x")
    (tmp_path / "test.jsonl").write_text("")
    base = ["eval-asr", str(tmp_path / "m.tflite"), "--manifest", str(tmp_path / "test.jsonl")]
    for option, value in (("--limit", "0"), ("--limit", "-1"), ("--beam", "-5")):
        result = CliRunner().invoke(main, base + [option, value])
        assert result.exit_code == 2 and f"'{option}'" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_format_reports_shows_the_utterances_scored():
    from edgeasr.eval.asr import format_reports

    table = format_reports([{"model": "runs/a", "kind": "litert", "utterances": 7, "wer": 0.5, "cer": 0.25,
                             "rtf": 0.01, "bytes": 1000},
                            {"model": "other/a", "kind": "keras w8a8", "utterances": 7, "wer": 0.5, "cer": 0.25,
                             "rtf": None, "bytes": None}])
    assert "utts" in table.splitlines()[0] and " 7 " in table.splitlines()[1]
    assert table.splitlines()[1].startswith("runs/a ") and table.splitlines()[2].startswith("other/a ")
    assert table.splitlines()[2].split()[-2:] == ["-", "-"]                  # Keras: no RTF, no file


def test_train_asr_policy_help_lists_every_preset():
    from click.testing import CliRunner

    from edgeasr.cli import main
    from edgeasr.quant.policy import known_presets

    help_text = " ".join(CliRunner().invoke(main, ["train-asr", "--help"]).output.split())
    assert all(name in help_text.replace("- ", "-") for name in known_presets())
