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
