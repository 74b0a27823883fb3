"""CTC decoding (NumPy) on hand-made posteriors, against brute force over every alignment."""
import itertools

import numpy as np
import pytest

from edgeasr.runtime.ctc import decode, greedy_decode, log_softmax, prefix_beam_search


def _posteriors(rows):
    """Probabilities (T, V) -> log-probabilities, the decoders' input."""
    return np.log(np.asarray(rows, np.float64))


def _collapse(path):
    out, previous = [], 0
    for label in path:
        if label != previous and label != 0:
            out.append(label)
        previous = label
    return tuple(out)


def _best_labelling(log_probs):
    """The labelling with the highest probability summed over all its alignments (exhaustive)."""
    totals = {}
    frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=frames):
        p = float(np.exp(sum(log_probs[t, k] for t, k in enumerate(path))))
        key = _collapse(path)
        totals[key] = totals.get(key, 0.0) + p
    return max(totals.items(), key=lambda item: item[1])


def test_greedy_merges_repeats_and_drops_blanks():
    # best path: a a _ a b b _ c  ->  a a b c
    best = [1, 1, 0, 1, 2, 2, 0, 3]
    scores = np.full((len(best), 4), -5.0)
    scores[np.arange(len(best)), best] = 0.0
    assert greedy_decode(scores) == [1, 1, 2, 3]
    assert decode(scores, beam_width=0) == [1, 1, 2, 3]


def test_beam_search_sums_alignments_where_greedy_does_not():
    # Two frames, p(blank) = 0.6, p(a) = 0.4: the best path is "" (0.36) but "a" has three
    # alignments (a a, a _, _ a) worth 0.16 + 0.24 + 0.24 = 0.64.
    log_probs = _posteriors([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(log_probs) == []
    assert prefix_beam_search(log_probs, beam_width=4) == [1]
    assert list(_best_labelling(log_probs)[0]) == [1]


def test_beam_search_keeps_a_doubled_letter_only_with_a_blank_between():
    # "a _ a" is two a's, "a a a" is one.
    separated = _posteriors([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    held = _posteriors([[0.05, 0.9, 0.05]] * 3)
    assert prefix_beam_search(separated, beam_width=8) == [1, 1]
    assert prefix_beam_search(held, beam_width=8) == [1]


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_finds_the_most_probable_labelling(seed):
    rng = np.random.default_rng(seed)
    log_probs = log_softmax(rng.normal(0.0, 1.5, size=(5, 3)))
    best, _ = _best_labelling(log_probs)
    assert tuple(prefix_beam_search(log_probs, beam_width=64, prune=-np.inf)) == best


def test_logits_and_log_probabilities_decode_alike():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, size=(12, 5))
    assert prefix_beam_search(logits, 8) == prefix_beam_search(log_softmax(logits) - 3.0, 8)
    assert greedy_decode(logits) == greedy_decode(log_softmax(logits))


def test_transcriber_side_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, edgeasr.runtime.asr, edgeasr.runtime.ctc; "
            "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_beam_width_zero_and_one_are_greedy_and_negative_is_refused():
    logits = np.random.default_rng(2).normal(0.0, 2.0, size=(10, 4))
    assert decode(logits, 0) == decode(logits, 1) == greedy_decode(logits)
    for bad in (-1, -5, 2.5, True):
        with pytest.raises(ValueError, match="beam width"):
            decode(logits, bad)


def test_transcriber_refuses_bad_settings_before_loading(tmp_path):
    from edgeasr.runtime.asr import Transcriber, TranscriberError

    with pytest.raises(TranscriberError, match="num_threads 0: need 1 or more"):
        Transcriber(tmp_path / "absent.tflite", num_threads=0)
    with pytest.raises(TranscriberError, match="beam width -1"):
        Transcriber(tmp_path / "absent.tflite", beam_width=-1)


class _FakeTranscriber:
    """Stands in for the runtime's Transcriber: reads no model, fails on files named bad*."""

    def __init__(self, model_path, num_threads=1, beam_width=0):
        from edgeasr.audio.frontend import FrontendConfig

        self.frontend = FrontendConfig()

    def transcribe_file(self, path):
        from edgeasr.audio.io import AudioError

        if path.name.startswith("bad"):
            raise AudioError(f"{path}: cannot read audio (Format not recognised)")
        return f"text of {path.name}"


def test_transcribe_goes_on_past_a_bad_file_and_exits_1(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import edgeasr.runtime.asr
    from edgeasr.cli import main

    from tests.test_streaming import energy_model

    monkeypatch.setattr(edgeasr.runtime.asr, "Transcriber", _FakeTranscriber)
    files = [tmp_path / name for name in ("model.tflite", "a.wav", "bad.wav", "c.wav", "two\nlines.wav")]
    for path in files[1:]:
        path.write_bytes(b"x")
    energy_model(files[0])                         # a readable .tflite: the command checks its MODEL first
    result = CliRunner().invoke(main, ["transcribe", *map(str, files)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output    # no traceback
    assert f"{files[1]}\ttext of a.wav" in result.output and f"{files[3]}\ttext of c.wav" in result.output
    assert f"Error: {files[2]}: cannot read audio" in result.output
    assert "Error: 1 of 4 files could not be transcribed" in result.output
    assert f"{str(files[4])!r}\ttext of two\nlines.wav" in result.output          # the name quoted: one line


def test_transcribe_warns_once_about_files_recorded_below_the_models_rate(tmp_path, monkeypatch):
    import soundfile
    from click.testing import CliRunner

    import edgeasr.runtime.asr
    from edgeasr.cli import main

    from tests.test_streaming import energy_model

    monkeypatch.setattr(edgeasr.runtime.asr, "Transcriber", _FakeTranscriber)
    energy_model(tmp_path / "model.tflite")
    for name, rate in (("phone.wav", 8000), ("low.wav", 1000), ("fine.wav", 16000), ("wide.wav", 44100)):
        soundfile.write(str(tmp_path / name), np.zeros(rate // 10, np.int16), rate)
    files = [str(tmp_path / name) for name in ("phone.wav", "low.wav", "fine.wav", "wide.wav")]
    result = CliRunner().invoke(main, ["transcribe", str(tmp_path / "model.tflite"), *files])
    assert result.exit_code == 0, result.output
    assert result.output.count("Warning:") == 1
    assert ("Warning: 2 of 4 files are recorded below the model's 16000 Hz (lowest 1000 Hz) and upsampled: they hold "
            "nothing above 500 Hz, and the frontend's mel bands reach 7600 Hz") in result.output
    soundfile.write(str(tmp_path / "phone.wav"), np.zeros(1600, np.int16), 16000)
    quiet = CliRunner().invoke(main, ["transcribe", str(tmp_path / "model.tflite"), files[0], files[2]])
    assert "Warning" not in quiet.output


def test_transcribe_checks_beam_and_threads(tmp_path):
    from click.testing import CliRunner

    from edgeasr.cli import main

    for path in ("model.tflite", "a.wav"):
        (tmp_path / path).write_bytes(b"x")
    for option, value in (("--beam", "-5"), ("--threads", "0")):
        result = CliRunner().invoke(main, ["transcribe", str(tmp_path / "model.tflite"), str(tmp_path / "a.wav"),
                                           option, value])
        assert result.exit_code == 2 and f"'{option}'" in result.output, result.output


def test_decoders_refuse_a_batch_a_single_frame_and_nan():
    frames = np.eye(3)[[1, 0, 2]]
    assert greedy_decode(frames) == [1, 2] == prefix_beam_search(frames)
    for bad in (frames[None], frames[0]):
        for decoder in (greedy_decode, prefix_beam_search):
            with pytest.raises(ValueError, match=r"one utterance's scores, shape \(frames, vocabulary"):
                decoder(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        greedy_decode(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="NaN or infinite"):
        prefix_beam_search(np.where(np.eye(3) > 0, np.inf, 0.0))
    assert greedy_decode(np.zeros((0, 3))) == [] == prefix_beam_search(np.zeros((0, 3)))
