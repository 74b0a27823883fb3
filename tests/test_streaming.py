"""Streaming detector: incremental frontend, hop schedule, trigger, and the long-stream evaluation."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeasr.audio.frontend import FrontendConfig, numpy_log_mel
from edgeasr.runtime.streaming import DetectorConfig, KeywordSpotter, StreamingFrontend, fire_indices, run_ends

LABELS = ["_silence_", "_unknown_", "yes"]
RATE = 16000
BURSTS_S = (2.0, 5.0, 8.5)          # 0.4 s noise bursts: the "keyword" of the energy model
BURST_LENGTH_S = 0.4
BLOCK_TF = ("import sys\nfor name in ('tensorflow', 'tf_keras', 'tensorflow_model_optimization'):\n"
            "    sys.modules[name] = None\n")


def energy_model(path, extra_metadata=None, scores="probabilities", gain=5.0):
    """An int8 model on (98, 40) log-mel whose 'yes' score rises with the window's mean loudness.
    scores="logits": the model without its Softmax, as `edgeasr convert --scores logits` writes it."""
    import tf_keras as keras

    from edgeasr.converters.convert import int8_tflite, with_scores
    from edgeasr.converters.metadata import embed_metadata

    inputs = keras.Input((98, 40))
    pooled = keras.layers.AveragePooling2D((98, 1))(keras.layers.Reshape((98, 40, 1))(inputs))   # as ffn_stateless
    mean = keras.layers.Flatten()(pooled)
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, keras.layers.Softmax()(dense(mean)))
    weights = np.zeros((40, 3), np.float32)
    weights[:, 0], weights[:, 2] = -gain / 40, gain / 40
    dense.set_weights([weights, np.array([0.0, -1.0, 0.0], np.float32)])
    calibration = numpy_log_mel(np.stack([bursts_audio(seconds=1.0, bursts=(0.3,), seed=s) for s in range(8)]),
                                FrontendConfig())
    values = {"labels": LABELS, "frontend": FrontendConfig().__dict__, "input_frames": 98, "scores": scores,
              **(extra_metadata or {})}
    path.write_bytes(embed_metadata(int8_tflite(with_scores(model, scores), calibration), values))
    return path


def bursts_audio(seconds=10.0, bursts=BURSTS_S, seed=0):
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.001
    for start in (b for b in bursts if b + BURST_LENGTH_S <= seconds):
        begin = int(start * RATE)
        audio[begin:begin + int(BURST_LENGTH_S * RATE)] += rng.standard_normal(int(BURST_LENGTH_S * RATE)) * 0.3
    return np.clip(audio, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return energy_model(tmp_path_factory.mktemp("stream") / "energy.tflite")


def push_in_chunks(target, audio, sizes):
    outputs, start, index = [], 0, 0
    while start < len(audio):
        size = int(sizes[index % len(sizes)])
        outputs.append(target.push(audio[start:start + size]))
        start, index = start + size, index + 1
    return outputs


def test_incremental_frontend_equals_batch(speech_16k):
    config = FrontendConfig()
    whole = numpy_log_mel(speech_16k, config)
    sizes = np.random.default_rng(0).integers(1, 3000, size=50)
    for chunk_sizes in (sizes, [1], [160], [7, 1, 480, 2]):
        frontend = StreamingFrontend(config)
        audio = speech_16k if len(chunk_sizes) > 1 or chunk_sizes[0] > 1 else speech_16k[:12000]
        frames = np.concatenate(push_in_chunks(frontend, audio, chunk_sizes))
        assert frames.shape == (config.num_frames(len(audio)), 40)
        np.testing.assert_array_equal(frames, whole[:len(frames)])      # bit for bit, not allclose


def test_fire_indices_threshold_and_refractory():
    times = np.arange(0, 5, 0.02)
    scores = np.zeros_like(times)
    scores[(times >= 1.0) & (times < 1.3)] = 0.9        # one keyword: fires once
    scores[(times >= 2.0) & (times < 4.0)] = 0.7        # 2 s above 0.6: fires at 2.0, 3.0 (refractory 1 s)
    assert times[fire_indices(times, scores, 0.8, 1.0)].tolist() == pytest.approx([1.0])
    assert times[fire_indices(times, scores, 0.6, 1.0)].tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert times[fire_indices(times, scores, 0.6, 1.0, last_fire=1.5)].tolist() == pytest.approx([2.5, 3.5])
    assert len(fire_indices(times, scores, 0.95, 1.0)) == 0


def test_model_runs_once_per_hop(model_path):
    spotter = KeywordSpotter(model_path, DetectorConfig(hop_ms=20.0, smoothing_ms=20.0))
    calls = []
    run_raw = spotter.posteriors.model.run_raw
    spotter.posteriors.model.run_raw = lambda window: calls.append(window.shape) or run_raw(window)
    times = np.concatenate([spotter.posteriors.push(c)[0] for c in np.array_split(bursts_audio(3.0), 37)])
    # 3 s -> 298 frames; the first run needs 98 frames, then one every 2 frames
    assert len(calls) == (298 - 98) // 2 + 1 and set(calls) == {(98, 40)}
    np.testing.assert_allclose(np.diff(times), 0.02, atol=1e-9)
    assert times[0] == pytest.approx((97 * 160 + 480) / RATE)


def test_run_schedule_is_the_same_however_the_frames_arrive():
    whole = list(run_ends(98, 4, 0, 500))
    assert whole[0] == 98 and set(np.diff(whole)) == {4} and whole[-1] == 498
    cuts = [0, 1, 97, 98, 99, 150, 151, 152, 153, 300, 500]
    pieces = [end for start, stop in zip(cuts, cuts[1:]) for end in run_ends(98, 4, start, stop)]
    assert pieces == whole
    assert FrontendConfig().frames_end_seconds(np.array(whole[:2])) == pytest.approx([(97 * 160 + 480) / RATE,
                                                                                    (101 * 160 + 480) / RATE])


def test_detections_at_the_keywords(model_path):
    config = DetectorConfig(hop_ms=20.0, smoothing_ms=60.0, refractory_ms=1000.0, default_threshold=0.8)
    audio = bursts_audio()
    whole = KeywordSpotter(model_path, config).push(audio)
    assert [d.keyword for d in whole] == ["yes"] * len(BURSTS_S)
    for detection, start in zip(whole, BURSTS_S):
        assert start < detection.time_s < start + BURST_LENGTH_S + 1.0 and detection.score >= 0.8
    chunked = KeywordSpotter(model_path, config)
    streamed = sum(push_in_chunks(chunked, audio, [1, 333, 160, 4000, 17]), [])
    assert streamed == whole                              # chunking changes nothing
    strict = KeywordSpotter(model_path, DetectorConfig(default_threshold=0.999)).push(audio)
    assert strict == []


def test_logits_model_gets_its_softmax_in_the_runtime(tmp_path):
    """int8 logits out, softmax in NumPy: posteriors sum to 1, are not capped at the int8 softmax's
    255/256, and detect the same keywords as the model with the softmax inside."""
    logits_path = energy_model(tmp_path / "logits.tflite", scores="logits", gain=20.0)
    softmax_path = energy_model(tmp_path / "softmax.tflite", gain=20.0)
    config = DetectorConfig(hop_ms=20.0, smoothing_ms=20.0, default_threshold=0.8)
    audio = bursts_audio()
    logits_spotter, probability_spotter = KeywordSpotter(logits_path, config), KeywordSpotter(softmax_path, config)
    assert logits_spotter.posteriors.logits and not probability_spotter.posteriors.logits
    _, from_logits = logits_spotter.posteriors.push(audio)
    _, from_softmax = probability_spotter.posteriors.push(audio)
    np.testing.assert_allclose(from_logits.sum(-1), 1.0, atol=1e-6)
    assert from_softmax[:, 2].max() <= 255 / 256 < from_logits[:, 2].max()
    assert np.abs(from_logits - from_softmax).max() < 0.05            # int8 softmax vs float softmax of int8 logits
    assert [d.keyword for d in KeywordSpotter(logits_path, config).push(audio)] == ["yes"] * len(BURSTS_S)


def test_smoothed_posteriors_is_the_detectors_mean(model_path):
    from edgeasr.runtime.streaming import smoothed_posteriors

    audio = bursts_audio()
    _, raw = KeywordSpotter(model_path, DetectorConfig(hop_ms=20.0, smoothing_ms=20.0)).posteriors.push(audio)
    _, online = KeywordSpotter(model_path, DetectorConfig(hop_ms=20.0, smoothing_ms=100.0)).posteriors.push(audio)
    np.testing.assert_allclose(smoothed_posteriors(raw, 5), online, atol=1e-6)
    assert np.abs(smoothed_posteriors(raw, 5) - raw).max() > 0.1      # the window does smooth


def test_thresholds_from_metadata(tmp_path):
    detector = {"hop_ms": 40.0, "smoothing_ms": 80.0, "sharpening": 2.0, "thresholds": {"yes": 0.75}}
    spotter = KeywordSpotter(energy_model(tmp_path / "m.tflite", {"detector": detector}))
    assert spotter.config.threshold("yes") == 0.75 and spotter.posteriors.hop_frames == 4
    assert spotter.posteriors.smoothing_runs == 2 and spotter.posteriors.sharpening == 2.0
    older = {"detector": {"hop_ms": 40.0, "thresholds": {"yes": 0.75}}}       # written before sharpening existed
    assert DetectorConfig.from_metadata(older).sharpening == 1.0
    assert DetectorConfig.from_metadata(older, sharpening=2.0).sharpening == 2.0
    with pytest.raises(ValueError, match="sharpening must be positive"):     # rpi_kws.py and metadata alike
        DetectorConfig.from_metadata({"detector": {"sharpening": -1.0}})


def test_sharpening_is_a_softmax_temperature():
    from edgeasr.runtime.streaming import sharpened, softmax

    logits = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32) * 4
    probabilities = softmax(logits)
    np.testing.assert_array_equal(sharpened(probabilities, 1.0), probabilities)          # g = 1: untouched
    np.testing.assert_allclose(sharpened(probabilities, 2.0), softmax(2 * logits), atol=1e-6)
    np.testing.assert_allclose(sharpened(np.array([[0.6, 0.4]]), 2.0), [[0.36 / 0.52, 0.16 / 0.52]], rtol=1e-6)
    confident = sharpened(np.array([[1e-30, 1e-30, 1.0]], np.float32), 3.0)          # float32 powers would underflow
    assert confident.dtype == np.float32 and confident[0, 2] == 1.0 and np.isfinite(confident).all()


def test_detector_sharpens_each_run_before_smoothing(model_path):
    from edgeasr.runtime.streaming import sharpened, smoothed_posteriors

    audio = bursts_audio()
    _, raw = KeywordSpotter(model_path, DetectorConfig(hop_ms=20.0, smoothing_ms=20.0)).posteriors.push(audio)
    sharp = KeywordSpotter(model_path, DetectorConfig(hop_ms=20.0, smoothing_ms=100.0, sharpening=2.0))
    _, online = sharp.posteriors.push(audio)
    np.testing.assert_allclose(smoothed_posteriors(sharpened(raw, 2.0), 5), online, atol=1e-6)
    assert np.abs(online - smoothed_posteriors(raw, 5)).max() > 0.05             # it does change the scores


def test_threshold_grid_reaches_past_sharpened_scores():
    """A keyword at 0.999995 and a false accept at 0.99997: the grid's top has to lie between them to
    reject the false accept and keep the keyword (sharpened posteriors sit that close to 1)."""
    from edgeasr.eval.stream import evaluate, threshold_text

    times = np.round(np.arange(0, 60, 0.02), 2)
    scores = np.zeros((len(times), 3), np.float32)
    scores[(times >= 10.3) & (times < 10.8), 2] = 0.999995                             # "yes" at 10.0-10.5
    scores[(times >= 40.0) & (times < 40.2), 2] = 0.99997                              # a false accept
    report = evaluate(times, scores, LABELS, [(10.0, 10.5, "yes")], hours=1.0, config=DetectorConfig(),
                      target_fa_per_hour=0.5)
    point = report["frr_at_fa_per_hour"]["0.5"]
    assert point["frr"] == 0.0 and point["fa_per_hour"] == 0.0
    assert 0.99997 < point["threshold"] <= 0.999995
    assert threshold_text(point["threshold"]) != "1.000"                              # the report can tell it from 1
    assert (threshold_text(0.984), threshold_text(0.99985), threshold_text(1.0)) == ("0.984", "0.99985", "1.000")


def test_runtime_without_tensorflow(model_path):
    """The frontend imports TensorFlow only inside tf_log_mel; the runtime works with TF blocked."""
    code = BLOCK_TF + (
        "import numpy as np\n"
        "from edgeasr.runtime.streaming import KeywordSpotter, DetectorConfig\n"
        f"s = KeywordSpotter({str(model_path)!r}, DetectorConfig(default_threshold=0.8))\n"
        "rng = np.random.default_rng(0); a = rng.standard_normal(48000).astype(np.float32) * 0.001\n"
        "a[16000:22400] += rng.standard_normal(6400).astype(np.float32) * 0.3\n"
        "d = s.push(a); assert [x.keyword for x in d] == ['yes'], d\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'tf_keras') and sys.modules[n]]\n"
        "assert not bad, bad; print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---- long-stream evaluation ---------------------------------------------------------------

def test_count_errors_and_evaluate():
    from edgeasr.eval.stream import StreamError, count_errors, evaluate, false_accept_sources, false_accepts_by_kind

    times = np.round(np.arange(0, 100, 0.02), 2)
    scores = np.zeros((len(times), 3), np.float32)
    scores[:, 0] = 1.0
    for start, score in ((10.0, 0.9), (30.0, 0.6), (50.0, 0.9)):      # keyword ends at start + 0.5
        scores[(times >= start + 0.3) & (times < start + 0.8), 2] = score
    scores[(times >= 70.0) & (times < 70.2), 2] = 0.95                  # a false accept
    occurrences = [(10.0, 10.5, "yes"), (30.0, 30.5, "yes"), (50.0, 50.5, "yes"), (90.0, 90.5, "yes")]
    array = np.array([(s, e) for s, e, _ in occurrences])
    latencies, false_accepts, fired = count_errors(times, scores, 2, array, 0.8, 1.0)
    assert fired == 3 and false_accepts == 1 and latencies.tolist() == pytest.approx([-0.2, -0.2])
    report = evaluate(times, scores, LABELS, occurrences, hours=0.5, config=DetectorConfig(), target_fa_per_hour=2.0,
                      per_keyword=True)
    assert report["frr_at_fa_per_hour"]["2.0"]["frr"] == pytest.approx(0.25)    # any threshold: 3 of 4, 1 FA
    assert report["frr_at_fa_per_hour"]["1.0"]["frr"] == pytest.approx(1.0)     # 0 FA needs t above the FA score
    assert report["thresholds_rule"] == "per keyword"                        # 2 FA/h x 0.5 h: one allowed
    assert report["thresholds"]["yes"] == pytest.approx(0.05)
    assert report["at_thresholds"]["false_accepts"] == 1 and report["at_thresholds"]["misses"] == 1
    assert report["at_thresholds"]["latency_s"]["median"] == pytest.approx(-0.2)
    assert report["at_thresholds"]["keywords"] == {"yes": {"occurrences": 4, "misses": 1, "false_accepts": 1}}
    pieces = [(0.0, 60.0, "keyword"), (69.5, 71.0, "sentence"), (80.0, 100.0, "noise")]
    assert false_accepts_by_kind(times, scores, LABELS, occurrences, pieces, 0.8, 1.0) == {"sentence": 1}
    assert false_accepts_by_kind(times, scores, LABELS, occurrences, pieces, 0.5, 1.0) == {"sentence": 1}
    assert false_accepts_by_kind(times, scores, LABELS, occurrences, pieces, 0.96, 1.0) == {}
    unknown_too = scores.copy()
    unknown_too[(times >= 85.0) & (times < 85.2), 1] = 0.97             # "_unknown_" never counts
    assert false_accepts_by_kind(times, unknown_too, LABELS, occurrences, pieces, 0.8, 1.0) == {"sentence": 1}
    unknown_too[(times >= 85.0) & (times < 85.2), 2] = 0.97             # "yes" during the noise does
    assert false_accepts_by_kind(times, unknown_too, LABELS, occurrences, pieces, 0.8, 1.0) == {"noise": 1,
                                                                                               "sentence": 1}
    assert false_accept_sources(times, unknown_too, LABELS, occurrences, pieces, 0.8, 1.0) == [("yes", "sentence"),
                                                                                        ("yes", "noise")]
    strict = evaluate(times, scores, LABELS, occurrences, hours=0.5, config=DetectorConfig(), target_fa_per_hour=1.0)
    assert strict["thresholds_rule"] == "common"                             # half a false accept allowed
    assert strict["thresholds"]["yes"] == pytest.approx(strict["frr_at_fa_per_hour"]["1.0"]["threshold"])
    assert strict["thresholds"]["yes"] > 0.9 and strict["at_thresholds"]["misses"] == 4
    assert strict["at_thresholds"]["false_accepts"] == 0
    given = evaluate(times, scores, LABELS, occurrences, hours=0.5, config=DetectorConfig(), thresholds={"yes": 0.7})
    assert given["thresholds"] == {"yes": 0.7} and given["thresholds_rule"] == "given"
    assert given["at_thresholds"]["misses"] == 2 and given["at_thresholds"]["false_accepts"] == 1   # 0.6 missed
    with pytest.raises(StreamError, match="no threshold given for keywords"):
        evaluate(times, scores, LABELS, occurrences, hours=0.5, config=DetectorConfig(), thresholds={"no": 0.7})


def test_an_unreachable_false_accept_target_is_reported_and_not_written(tmp_path, model_path):
    """A false accept scoring 1.0 passes every threshold: the 1.0 put in for 'none' must not read
    as a threshold that meets the target, nor be written into a model."""
    from edgeasr.audio.io import write_wav
    from edgeasr.cli import main
    from edgeasr.eval.stream import evaluate, format_report

    times = np.round(np.arange(0, 60, 0.02), 2)
    scores = np.zeros((len(times), 3), np.float32)
    scores[:, 0] = 1.0
    scores[(times >= 10.3) & (times < 10.8), 2] = 0.9                     # "yes" at 10.0-10.5
    scores[(times >= 40.0) & (times < 40.2), 2] = 1.0                     # a false accept no threshold rejects
    report = evaluate(times, scores, LABELS, [(10.0, 10.5, "yes")], hours=0.5, config=DetectorConfig(),
                      target_fa_per_hour=1.0)
    assert report["frr_at_fa_per_hour"]["1.0"]["threshold"] is None and report["thresholds"] == {"yes": 1.0}
    assert not report["target_reached"] and report["at_thresholds"]["fa_per_hour"] == 2.0
    assert report["detector"]["thresholds"] == {"yes": 1.0}            # the detector the figures are of
    report.update(model="m.tflite", det_png="det.png")
    assert "NOT REACHED: 1.0 FA/h; these thresholds give 2.00 FA/h" in format_report(report)
    reachable = evaluate(times, scores, LABELS, [(10.0, 10.5, "yes")], hours=0.5, config=DetectorConfig(),
                         target_fa_per_hour=2.0)
    assert reachable["target_reached"]

    write_wav(tmp_path / "loud.wav", bursts_audio(), RATE)     # sharpened, every burst scores 1.0 in float32
    (tmp_path / "few.labels.txt").write_text(f"{BURSTS_S[0]} {BURSTS_S[0] + 0.4} yes\n")
    model = tmp_path / "energy.tflite"
    model.write_bytes(model_path.read_bytes())
    result = CliRunner().invoke(main, ["eval-stream", str(model), "--wav", str(tmp_path / "loud.wav"), "--labels",
                                       str(tmp_path / "few.labels.txt"), "--out", str(tmp_path / "out"),
                                       "--sharpening", "50", "--write-thresholds"])
    assert result.exit_code == 1 and "thresholds not written: no threshold reaches 1.0 FA/h" in result.output
    assert "NOT REACHED" in result.output and model.read_bytes() == model_path.read_bytes()


def test_per_keyword_thresholds_need_one_allowed_false_accept_each():
    from edgeasr.eval.stream import threshold_rule

    assert threshold_rule(keyword_count=10, hours=4.0, target_fa_per_hour=1.0, per_keyword=True) == "common"
    assert threshold_rule(keyword_count=10, hours=10.0, target_fa_per_hour=1.0, per_keyword=True) == "per keyword"
    assert threshold_rule(keyword_count=1, hours=1.0, target_fa_per_hour=1.0, per_keyword=True) == "per keyword"
    assert threshold_rule(keyword_count=1, hours=1.0, target_fa_per_hour=1.0) == "common"   # only when asked for


def test_per_keyword_thresholds_are_scored_keyword_by_keyword():
    """'yes' fires on other audio at 0.95, 'no' never does: a common threshold that rejects the false
    accept misses both keywords' 0.9 occurrences; per-keyword thresholds miss only 'yes'."""
    from edgeasr.eval.stream import evaluate

    times = np.round(np.arange(0, 60, 0.02), 2)
    scores = np.zeros((len(times), 4), np.float32)
    scores[:, 0] = 1.0
    occurrences = [(10.0, 10.5, "yes"), (20.0, 20.5, "no"), (30.0, 30.5, "no")]
    for (start, _, name), score in zip(occurrences, (0.9, 0.9, 0.99)):
        scores[(times >= start + 0.3) & (times < start + 0.8), 2 + (name == "no")] = score
    scores[(times >= 45.0) & (times < 45.2), 2] = 0.95                   # 'yes' during other audio
    labels, config = LABELS + ["no"], DetectorConfig()
    common = evaluate(times, scores, labels, occurrences, hours=1.0, config=config, thresholds={"yes": 0.96, "no": 0.96})
    assert common["at_thresholds"]["keywords"] == {"yes": {"occurrences": 1, "misses": 1, "false_accepts": 0},
                                                   "no": {"occurrences": 2, "misses": 1, "false_accepts": 0}}
    split = evaluate(times, scores, labels, occurrences, hours=1.0, config=config, thresholds={"yes": 0.96, "no": 0.5})
    assert split["at_thresholds"]["keywords"]["no"]["misses"] == 0
    assert (split["at_thresholds"]["misses"], split["at_thresholds"]["false_accepts"]) == (1, 0)


def test_fa_points_are_refined_between_grid_thresholds():
    """A false accept and a keyword scoring between two neighbouring grid thresholds: the grid alone
    must miss the keyword to reject the false accept; the refined threshold does not."""
    from edgeasr.eval.stream import THRESHOLDS, evaluate

    below, above = THRESHOLDS[-20], THRESHOLDS[-19]
    times = np.round(np.arange(0, 60, 0.02), 2)
    scores = np.zeros((len(times), 3), np.float32)
    scores[:, 0] = 1.0
    scores[(times >= 10.3) & (times < 10.8), 2] = below + 0.75 * (above - below)        # "yes" at 10.0-10.5
    scores[(times >= 40.0) & (times < 40.2), 2] = below + 0.25 * (above - below)        # a false accept
    report = evaluate(times, scores, LABELS, [(10.0, 10.5, "yes")], hours=1.0, config=DetectorConfig(),
                      target_fa_per_hour=0.5)
    assert report["det"]["frr"][list(THRESHOLDS).index(above)] == 1.0                   # the grid's answer
    point = report["frr_at_fa_per_hour"]["0.5"]
    assert point["frr"] == 0.0 and point["fa_per_hour"] == 0.0
    assert below + 0.25 * (above - below) < point["threshold"] <= below + 0.75 * (above - below)
    assert report["thresholds"]["yes"] == pytest.approx(point["threshold"])


def test_labels_file(tmp_path):
    from edgeasr.eval.stream import StreamError, read_labels, write_labels

    path = tmp_path / "l.txt"
    write_labels(path, [(3.0, 3.5, "no"), (1.25, 1.75, "yes")])
    path.write_text(path.read_text() + "# a comment\n\n")
    assert read_labels(path) == [(1.25, 1.75, "yes"), (3.0, 3.5, "no")]
    path.write_text("1.0 yes\n")
    with pytest.raises(StreamError, match="l.txt:1: expected 'start_s end_s keyword'"):
        read_labels(path)
    path.write_text("1.0 1.5 yes  # fine\n12.3 12.8 turn on\n")
    with pytest.raises(StreamError, match=r"l.txt:2: expected 'start_s end_s keyword' \(one word\)"):
        read_labels(path)
    path.write_text("1.0 1.5 yes\n3.0 3.5 no\n1.0 1.5 yes\n")
    with pytest.raises(StreamError, match=r"l.txt: lines 1 and 3 repeat each other \(1-1.5 yes, 1-1.5 yes\)"):
        read_labels(path)
    path.write_text("3.0 3.5 no\n1.0 1.5 yes\n1.4 1.9 no\n")
    with pytest.raises(StreamError, match=r"l.txt: lines 2 and 3 overlap \(1-1.5 yes, 1.4-1.9 no\)"):
        read_labels(path)
    path.write_text("1.0 1.5 yes\n1.5 2.0 no\n")                  # touching is not overlapping
    assert read_labels(path) == [(1.0, 1.5, "yes"), (1.5, 2.0, "no")]


def labelled_stream(folder, label_lines, seconds=10.0):
    """(WAV of bursts_audio, label file of `label_lines`) in `folder`."""
    from edgeasr.audio.io import write_wav

    wav, labels = folder / "s.wav", folder / "s.labels.txt"
    write_wav(wav, bursts_audio(seconds), RATE)
    labels.write_text("# start_s end_s keyword\n" + "".join(f"{line}\n" for line in label_lines))
    return wav, labels


def keyword_lines(word="yes"):
    return [f"{start:.3f} {start + BURST_LENGTH_S:.3f} {word}" for start in BURSTS_S]


def test_label_words_that_differ_from_a_keyword_only_by_case_are_refused(model_path, tmp_path, capsys):
    from edgeasr.eval.stream import StreamError, evaluate_stream

    for word in ("Yes", "YES", "yes\u200b"):                          # \u200b: a zero-width space, invisible
        wav, labels = labelled_stream(tmp_path, keyword_lines(word) + ["9.5 9.8 no"])
        with pytest.raises(StreamError) as raised:
            evaluate_stream(model_path, wav, labels, DetectorConfig(), tmp_path / "out", progress=False)
        message = str(raised.value)
        assert f"{word!r} (3 label lines) for 'yes'" in message and "only by case or spacing" in message
        assert str(labels) in message and str(model_path) in message and "keywords: yes" in message
        assert "'no'" not in message                                   # not a near miss: not named as one
    assert not (tmp_path / "out").exists()                             # nothing scored, nothing written
    assert "warning" not in capsys.readouterr().err


def test_label_words_that_are_not_keywords_are_left_out_with_a_warning(model_path, tmp_path, capsys):
    from edgeasr.eval.stream import evaluate_stream, format_report

    wav, labels = labelled_stream(tmp_path, keyword_lines())
    plain = evaluate_stream(model_path, wav, labels, DetectorConfig(), tmp_path / "plain", progress=False)
    assert capsys.readouterr().err == "" and "labels_not_keywords" not in plain     # keywords only: as before
    assert "not scored" not in format_report(plain)
    wav, labels = labelled_stream(tmp_path, keyword_lines() + ["0.5 0.9 maybe", "6.5 6.9 maybe", "9.2 9.6 _unknown_"])
    report = evaluate_stream(model_path, wav, labels, DetectorConfig(), tmp_path / "other", progress=False)
    err = capsys.readouterr().err
    assert f"warning: {labels}: 3 label lines name words that are not keywords of {model_path}" in err
    assert "(maybe 2, _unknown_ 1)" in err and "counts as a false accept" in err
    assert report["labels_not_keywords"] == {"_unknown_": 1, "maybe": 2}
    assert report["keyword_occurrences"] == 3 == plain["keyword_occurrences"]     # only the keyword lines scored
    assert report["at_thresholds"]["keywords"]["yes"]["occurrences"] == 3
    assert "not scored: 3 label lines of words that are not keywords (maybe 2, _unknown_ 1)" in format_report(report)
    saved = json.loads((tmp_path / "other" / "energy.stream.json").read_text())
    assert saved["labels_not_keywords"] == report["labels_not_keywords"]


def test_labels_past_the_audio_and_audio_shorter_than_a_window_are_refused(model_path, tmp_path, monkeypatch):
    from edgeasr.eval import stream

    wav, labels = labelled_stream(tmp_path, keyword_lines() + ["500 501 yes", "600 601 yes"])
    monkeypatch.setattr(stream, "stream_posteriors", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(stream.StreamError) as raised:
        stream.evaluate_stream(model_path, wav, labels, DetectorConfig(), tmp_path / "out", progress=False)
    message = str(raised.value)
    assert str(labels) in message and "'500.000 501.000 yes' ends after the audio" in message
    assert f"{wav} (10.000 s long)" in message and "2 of its 5 labels" in message
    wav, labels = labelled_stream(tmp_path, ["0.1 0.3 yes"], seconds=0.5)
    with pytest.raises(stream.StreamError, match=r"s.wav: 0.500 s of audio is shorter than the model's input window "
                                                 r"\(1.000 s\)"):
        stream.evaluate_stream(model_path, wav, labels, DetectorConfig(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    with pytest.raises(stream.StreamError, match="shorter than the model's input window"):   # scripts call it too
        stream.stream_posteriors(model_path, bursts_audio(0.5), DetectorConfig(), progress=False)
    wav, labels = labelled_stream(tmp_path, keyword_lines() + ["9.6 10.005 yes"])   # ms rounding: still inside
    report = stream.evaluate_stream(model_path, wav, labels, DetectorConfig(), tmp_path / "edge", progress=False)
    assert report["keyword_occurrences"] == 4
    labels.write_text("-0.5 0.2 yes\n")
    with pytest.raises(stream.StreamError, match="s.labels.txt:1: times must be seconds from the start"):
        stream.read_labels(labels)


def test_model_without_labels_or_frontend_is_refused_before_audio_is_read(model_path, tmp_path, monkeypatch):
    """A model converted from a plain tf_keras file has "labels": null and "frontend": null."""
    from edgeasr.converters.metadata import embed_metadata
    from edgeasr.eval import stream
    from edgeasr.runtime.metadata import read_metadata

    monkeypatch.setattr(stream, "load_audio", lambda *a, **k: pytest.fail("audio was read"))
    wav, labels = labelled_stream(tmp_path, keyword_lines())
    metadata = {k: v for k, v in read_metadata(model_path).items() if k not in ("format", "edgeasr_version")}
    for nulls in ({"frontend": None, "labels": None}, {"frontend": None}, {"labels": None}):
        model = tmp_path / "plain.tflite"
        model.write_bytes(embed_metadata(model_path.read_bytes(), {**metadata, **nulls}))
        with pytest.raises(stream.StreamError, match="plain.tflite: no edgeasr metadata with labels and frontend"):
            stream.evaluate_stream(model, wav, labels, DetectorConfig(), tmp_path / "out", progress=False)
        if nulls.get("labels", True) is None:                          # the stream is built for its keywords
            with pytest.raises(stream.StreamError, match="names no keywords to build a stream for"):
                stream.model_stream(tmp_path, read_metadata(model), tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    asr = tmp_path / "asr.tflite"
    asr.write_bytes(embed_metadata(model_path.read_bytes(), {**metadata, "asr": {"tokens": ["_", "a"]}}))
    with pytest.raises(ValueError, match="a speech-recognition model; .*edgeasr transcribe"):
        KeywordSpotter(asr)
    newer = tmp_path / "newer.tflite"          # a field of a future FrontendConfig, a wrong label count
    newer.write_bytes(embed_metadata(model_path.read_bytes(),
                                     {**metadata, "frontend": {**metadata["frontend"], "pre_emphasis": 0.97}}))
    with pytest.raises(ValueError, match="not one this runtime reads .*pre_emphasis"):
        KeywordSpotter(newer)
    short = tmp_path / "short_labels.tflite"
    short.write_bytes(embed_metadata(model_path.read_bytes(), {**metadata, "labels": metadata["labels"][:-1]}))
    with pytest.raises(ValueError, match=f"names {len(metadata['labels']) - 1} labels for"):
        KeywordSpotter(short)


def test_built_stream_needs_a_positive_length(tiny_dataset, tmp_path):
    from edgeasr.eval.stream import StreamError, build_test_stream

    for hours in (0, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(StreamError, match="length must be a positive number of hours, got"):
            build_test_stream(tiny_dataset, ["yes"], tmp_path / "cache", hours=hours, progress=False)
    assert not (tmp_path / "cache").exists()                           # no empty stream left in the cache


@pytest.mark.slow
def test_built_stream_and_cli(tiny_dataset, tmp_path, model_path):
    from edgeasr.audio.io import load_audio
    from edgeasr.cli import main
    from edgeasr.eval.stream import build_test_stream, model_stream, pieces_path, read_labels
    from edgeasr.runtime.metadata import read_metadata

    wav, labels = build_test_stream(tiny_dataset, ["yes", "no", "stop"], tmp_path / "cache", hours=0.02,
                                    seed=1, progress=False)
    again = build_test_stream(tiny_dataset, ["yes", "no", "stop"], tmp_path / "cache2", hours=0.02, seed=1,
                              progress=False)
    assert wav.read_bytes() == again[0].read_bytes() and labels.read_text() == again[1].read_text()
    labelled = {"labels": ["_silence_", "_unknown_", "stop", "yes", "no"]}      # a model's: the same stream
    assert model_stream(tiny_dataset, labelled, tmp_path / "cache", hours=0.02, seed=1, progress=False) == (wav, labels)
    audio, occurrences = load_audio(wav, RATE), read_labels(labels)
    pieces = read_labels(pieces_path(labels))
    assert [(s, e) for s, e, k in pieces if k == "keyword"] == [(s, e) for s, e, _ in occurrences]
    assert {k for _, _, k in pieces} <= {"keyword", "other", "sentence", "noise", "silence"}
    assert all(a[1] <= b[0] for a, b in zip(pieces, pieces[1:]))        # in order, never overlapping
    assert len(audio) == int(0.02 * 3600 * RATE) and len(occurrences) >= 8
    assert {k for _, _, k in occurrences} <= {"yes", "no", "stop"}
    for start, end, _ in occurrences:                      # labelled spans hold the loud speech
        inside = audio[int(start * RATE):int(end * RATE)]
        assert np.max(np.abs(inside)) > 0.2
    model = tmp_path / "energy.tflite"
    model.write_bytes(model_path.read_bytes())
    result = CliRunner().invoke(main, ["eval-stream", str(model), "--wav", str(wav), "--labels", str(labels),
                                       "--out", str(tmp_path / "out"), "--write-thresholds"])
    assert result.exit_code == 0, result.output
    assert "FRR at <= 1.0 FA/h" in result.output and (tmp_path / "out" / "energy.det.png").stat().st_size > 5000
    assert "are not keywords of" in result.output and "(no " in result.output    # the stream has 'no' and 'stop' too
    report = json.loads((tmp_path / "out" / "energy.stream.json").read_text())
    for point, counts in report["false_accepts_by_kind"].items():          # every false accept has a kind
        entry = report["frr_at_fa_per_hour"][point]
        assert sum(counts.values()) == round(entry["fa_per_hour"] * report["hours"])
        by_keyword = report["false_accepts_by_keyword"][point]                # ... and a keyword that fired
        assert sum(by_keyword.values()) == sum(counts.values()) and set(by_keyword) <= {"yes"}
    assert "by what the stream played" in result.output
    detector = read_metadata(model)["detector"]
    assert detector["thresholds"] == report["thresholds"] and detector["hop_ms"] == 20.0
    assert read_metadata(model)["labels"] == LABELS                       # the rest is kept
    again = CliRunner().invoke(main, ["eval-stream", str(model), "--wav", str(wav), "--labels", str(labels),
                                      "--out", str(tmp_path / "again"), "--model-thresholds"])
    assert again.exit_code == 0, again.output
    scored = json.loads((tmp_path / "again" / "energy.stream.json").read_text())
    assert scored["thresholds_rule"] == "given" and scored["thresholds"] == report["thresholds"]
    assert scored["at_thresholds"] == report["at_thresholds"]           # the same thresholds, the same errors
    assert "given (not chosen on this stream)" in again.output
    bad = CliRunner().invoke(main, ["eval-stream", str(model), "--wav", str(wav)])
    assert bad.exit_code == 2 and "--labels" in bad.output
    both = CliRunner().invoke(main, ["eval-stream", str(model), "--wav", str(wav), "--labels", str(labels),
                                     "--model-thresholds", "--per-keyword"])
    assert both.exit_code == 1 and "cannot also choose new ones" in both.output
    sharp = tmp_path / "sharp.tflite"
    sharp.write_bytes(model_path.read_bytes())
    written = CliRunner().invoke(main, ["eval-stream", str(sharp), "--wav", str(wav), "--labels", str(labels),
                                        "--out", str(tmp_path / "sharp"), "--sharpening", "2", "--write-thresholds"])
    assert written.exit_code == 0, written.output
    assert json.loads((tmp_path / "sharp" / "sharp.stream.json").read_text())["detector"]["sharpening"] == 2.0
    assert read_metadata(sharp)["detector"]["sharpening"] == 2.0            # the device runs what was measured
    zero = CliRunner().invoke(main, ["eval-stream", str(sharp), "--wav", str(wav), "--labels", str(labels),
                                     "--sharpening", "0"])
    assert zero.exit_code == 2 and "Invalid value for '--sharpening'" in zero.output
    for option, value in (("--hop-ms", "0"), ("--smoothing-ms", "-5"), ("--refractory-ms", "-1"), ("--hours", "0.001")):
        bad_value = CliRunner().invoke(main, ["eval-stream", str(sharp), "--wav", str(wav), "--labels", str(labels),
                                              option, value])
        assert bad_value.exit_code == 2 and f"Invalid value for '{option}'" in bad_value.output, bad_value.output
    built_only = CliRunner().invoke(main, ["eval-stream", str(sharp), "--wav", str(wav), "--labels", str(labels),
                                           "--split", "validation", "--seed", "7"])
    assert built_only.exit_code == 2 and "--split, --seed: for a stream built from --data, not for --wav" in \
        built_only.output
    other = CliRunner().invoke(main, ["eval-stream", str(sharp), "--wav", str(wav), "--labels", str(labels),
                                      "--model-thresholds", "--sharpening", "1"])
    assert other.exit_code == 1 and "--sharpening 1 (chosen with 2)" in other.output
    longer = CliRunner().invoke(main, ["eval-stream", str(sharp), "--wav", str(wav), "--labels", str(labels),
                                       "--model-thresholds", "--refractory-ms", "3000"])
    assert longer.exit_code == 1 and "--refractory-ms 3000 (chosen with 1000)" in longer.output
    fresh = tmp_path / "fresh.tflite"
    fresh.write_bytes(model_path.read_bytes())
    none = CliRunner().invoke(main, ["eval-stream", str(fresh), "--wav", str(wav), "--labels", str(labels),
                                     "--model-thresholds"])
    assert none.exit_code == 1 and "no thresholds in its metadata" in none.output
    assert "--data DATASET --split validation --write-thresholds" in none.output


def test_stream_leaves_out_the_connected_speech_windows(tiny_dataset, tmp_path):
    import shutil

    from edgeasr.data.synth import SENTENCES_FOLDER
    from edgeasr.eval.stream import build_test_stream

    with_windows = tmp_path / "data"
    shutil.copytree(tiny_dataset, with_windows)
    listed = (with_windows / "testing_list.txt").read_text().split()
    (with_windows / SENTENCES_FOLDER).mkdir()
    for index, relative in enumerate(listed[:5]):      # loud test clips, listed as connected speech
        shutil.copy(with_windows / relative, with_windows / SENTENCES_FOLDER / f"00000000_nohash_{index}.wav")
    windows = [f"{SENTENCES_FOLDER}/00000000_nohash_{index}.wav" for index in range(5)]
    (with_windows / "testing_list.txt").write_text("".join(f"{p}\n" for p in sorted(listed + windows)))
    streams = [build_test_stream(root, ["yes", "no", "stop"], tmp_path / name, hours=0.01, seed=2, progress=False)
               for root, name in ((tiny_dataset, "plain"), (with_windows, "windows"))]
    assert streams[0][0].read_bytes() == streams[1][0].read_bytes()
    assert streams[0][1].read_text() == streams[1][1].read_text()


def test_stream_cache_rebuilds_for_an_edited_copy_of_the_dataset(tiny_dataset, tmp_path):
    """The cache key covers the synthesis settings only; a copy with other clips shares the key."""
    import shutil

    from edgeasr.eval.stream import build_test_stream

    edited = tmp_path / "edited"
    shutil.copytree(tiny_dataset, edited)
    keyword_clips = [p for p in (edited / "testing_list.txt").read_text().split() if p.startswith("yes/")]
    other_word = next((edited / "no").glob("*.wav"))
    for relative in keyword_clips:                     # every 'yes' of the copy is now another word's clip
        shutil.copy(other_word, edited / relative)
    build = lambda root, cache: build_test_stream(root, ["yes", "no", "stop"], cache, hours=0.01, seed=2,
                                                  progress=False)
    original, _ = build(tiny_dataset, tmp_path / "cache")
    original_bytes = original.read_bytes()
    shared, _ = build(edited, tmp_path / "cache")
    fresh, _ = build(edited, tmp_path / "fresh")
    assert shared == original                             # the same key ...
    assert shared.read_bytes() == fresh.read_bytes() != original_bytes        # ... but the copy's stream
    mtime = shared.stat().st_mtime_ns
    assert build(edited, tmp_path / "cache")[0].stat().st_mtime_ns == mtime    # unchanged sources: cached


def test_validation_stream_plays_only_validation_voices(tiny_dataset, tmp_path, monkeypatch):
    from edgeasr.eval import stream
    from edgeasr.files import read_json

    played = {"clips": set(), "voices": set()}
    real_load, real_sentence = stream.load_audio, stream._sentence
    monkeypatch.setattr(stream, "load_audio", lambda path, rate: played["clips"].add(Path(path)) or real_load(path, rate))
    monkeypatch.setattr(stream, "_sentence",
                        lambda voice, rng, rate: played["voices"].add(voice) or real_sentence(voice, rng, rate))
    speakers = read_json(tiny_dataset / "synth_config.json")["speakers"]
    wavs = {}
    for split in ("validation", "testing"):
        played["clips"].clear(), played["voices"].clear()
        wavs[split], _ = stream.build_test_stream(tiny_dataset, ["yes", "no", "stop"], tmp_path, hours=0.01, seed=2,
                                                  progress=False, split=split)
        listed = {tiny_dataset / p for p in (tiny_dataset / f"{split}_list.txt").read_text().split()}
        clips = {p for p in played["clips"] if "_background_noise_" not in p.parts}
        assert clips and clips <= listed, split
        assert played["voices"] and played["voices"] <= set(speakers[split]), split
    assert wavs["validation"] != wavs["testing"]
    from edgeasr.audio.io import load_audio

    audio = {split: load_audio(path, RATE) for split, path in wavs.items()}
    # Each split draws its own layout: with one seed the noise bed and bursts were the same samples
    same = np.mean(audio["validation"] == audio["testing"])
    assert same < 0.01, same
    kinds = {split: [kind for _, _, kind in stream.read_labels(stream.pieces_path(path.with_suffix(".labels.txt")))]
             for split, path in wavs.items()}
    assert kinds["validation"] != kinds["testing"]
    with pytest.raises(stream.StreamError, match="split must be one of testing, validation"):
        stream.build_test_stream(tiny_dataset, ["yes"], tmp_path, hours=0.01, split="training")


def test_eval_stream_needs_synthetic_dataset(tmp_path):
    from edgeasr.eval.stream import StreamError, build_test_stream

    (tmp_path / "yes").mkdir()
    with pytest.raises(StreamError, match="not a synthetic dataset"):
        build_test_stream(tmp_path, ["yes"], tmp_path / "cache", hours=0.01)


@pytest.mark.slow
def test_ffn_cpu_per_second_of_audio(tmp_path):
    """The stateless FFN (real architecture, int8) at a 20 ms hop costs well under 2% of a core."""
    import time

    import edgeasr  # noqa: F401
    from edgeasr.converters.convert import int8_tflite
    from edgeasr.converters.metadata import embed_metadata
    from edgeasr.models.kws import ffn_stateless

    model = ffn_stateless((98, 40), len(LABELS))
    calibration = numpy_log_mel(np.stack([bursts_audio(1.0, (0.3,), seed=s) for s in range(8)]), FrontendConfig())
    path = tmp_path / "ffn.tflite"
    path.write_bytes(embed_metadata(int8_tflite(model, calibration),
                                    {"labels": LABELS, "frontend": FrontendConfig().__dict__, "input_frames": 98}))
    spotter = KeywordSpotter(path, DetectorConfig(hop_ms=20.0))
    audio = bursts_audio(30.0, bursts=np.arange(1, 29, 3))
    started = time.process_time()
    push_in_chunks(spotter, audio, [320])
    share = (time.process_time() - started) / 30.0
    assert share < 0.02, f"{share:.2%} of one core per second of audio"


def test_detector_settings_that_cannot_work_are_refused():
    for bad in ({"refractory_ms": -1.0}, {"hop_ms": 0.0}, {"smoothing_ms": -20.0}, {"default_threshold": 1.5},
                {"thresholds": {"yes": float("nan")}}, {"sharpening": float("inf")}):
        with pytest.raises(ValueError, match="must be"):
            DetectorConfig(**bad)


def test_a_hop_that_is_not_whole_frames_is_refused_not_rounded(model_path, tmp_path):
    from click.testing import CliRunner

    from edgeasr.cli import main

    frontend = FrontendConfig()
    assert DetectorConfig(hop_ms=40.0).hop_frames(frontend) == 4
    for hop in (15.0, 5.0):
        with pytest.raises(ValueError, match=f"hop_ms {hop:g} is not a multiple of the frontend's 10 ms"):
            KeywordSpotter(model_path, DetectorConfig(hop_ms=hop))
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["eval-stream", str(model_path), "--data", str(tmp_path / "empty"),
                                       "--hop-ms", "15"])
    assert result.exit_code == 1 and "not a multiple" in result.output     # before any stream is built


def test_refractory_zero_fires_on_every_run_above_threshold_and_ends():
    times = np.arange(6) * 0.02
    scores = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.9], np.float32)
    assert list(fire_indices(times, scores, 0.5, 0.0)) == [0, 1, 3, 4, 5]
    assert list(fire_indices(times, scores, 0.5, 0.03)) == [0, 3, 5]


def test_large_sharpening_stays_a_distribution():
    from edgeasr.runtime.streaming import sharpened

    sharp = sharpened(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], np.float32), 500.0)
    assert np.isfinite(sharp).all() and np.allclose(sharp.sum(-1), 1) and list(sharp.argmax(-1)) == [0, 2]


def test_spotter_takes_int16_and_refuses_stereo(model_path):
    audio = bursts_audio()
    floats = KeywordSpotter(model_path, DetectorConfig(default_threshold=0.8)).push(audio)
    pcm = np.round(audio * 32768).clip(-32768, 32767).astype(np.int16)
    from_pcm = KeywordSpotter(model_path, DetectorConfig(default_threshold=0.8)).push(pcm)
    assert [(d.time_s, d.keyword) for d in from_pcm] == [(d.time_s, d.keyword) for d in floats] != []
    with pytest.raises(ValueError, match="one channel"):
        KeywordSpotter(model_path).push(np.stack([audio, audio], axis=1))
    broken = audio.copy()
    broken[100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KeywordSpotter(model_path).push(broken)
    with pytest.raises(ValueError, match="float audio must be in \\[-1, 1\\]"):
        KeywordSpotter(model_path).push(pcm.astype(np.float32))
    # the evaluation's scoring takes the same input as the spotter (it read int16 as floats)
    from edgeasr.eval import stream

    scaled = (pcm / np.float32(32768)).astype(np.float32)
    _, scores, _ = stream.stream_posteriors(model_path, scaled, DetectorConfig(), progress=False)
    assert np.array_equal(stream.stream_posteriors(model_path, pcm, DetectorConfig(), progress=False)[1], scores)
    with pytest.raises(stream.StreamError, match="the stream: float audio must be in"):
        stream.stream_posteriors(model_path, pcm.astype(np.float32), DetectorConfig(), progress=False)
    from edgeasr.runtime.streaming import mono_samples

    overshoot = np.array([0.5, 1.5, -1.2], np.float32)           # clipped, as a file read through int16 is
    assert mono_samples(overshoot).tolist() == [0.5, 1.0, -1.0] and overshoot[1] == 1.5


def test_a_long_chunk_is_scored_piece_by_piece_with_the_same_runs(model_path):
    from edgeasr.runtime.streaming import PIECE_SECONDS

    audio = np.tile(bursts_audio(), 3)[: int(2.5 * PIECE_SECONDS * RATE)]
    whole = KeywordSpotter(model_path)
    seen = []
    push = whole.posteriors.frontend.push
    whole.posteriors.frontend.push = lambda chunk: seen.append(len(chunk)) or push(chunk)
    times, scores = whole.posteriors.push(audio)
    assert max(seen) <= PIECE_SECONDS * RATE and len(seen) == 3
    pieces = KeywordSpotter(model_path)
    parts = [pieces.posteriors.push(chunk) for chunk in np.array_split(audio, 25)]
    np.testing.assert_array_equal(times, np.concatenate([t for t, _ in parts]))
    np.testing.assert_allclose(scores, np.concatenate([s for _, s in parts]), atol=1e-6)


def test_a_threshold_for_a_word_the_model_lacks_is_refused(model_path):
    with pytest.raises(ValueError, match="not keywords of .*: Yes"):
        KeywordSpotter(model_path, DetectorConfig(thresholds={"yes": 0.7, "Yes": 0.9}))


def test_built_streams_go_to_the_users_cache_not_the_current_folder(monkeypatch, tmp_path):
    from edgeasr.eval.stream import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgeasr" / "streams"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "edgeasr" / "streams"


def test_labels_without_any_keyword_are_refused_before_the_model_runs(model_path, tmp_path, monkeypatch):
    from edgeasr.cli import main
    from edgeasr.eval import stream

    monkeypatch.setattr(stream, "stream_posteriors", lambda *a, **k: pytest.fail("the model ran"))
    for name, lines in (("empty", []), ("others", ["2.0 2.4 dog"])):
        folder = tmp_path / name
        folder.mkdir()
        wav, labels = labelled_stream(folder, lines)
        result = CliRunner().invoke(main, ["eval-stream", str(model_path), "--wav", str(wav), "--labels", str(labels),
                                           "--out", str(folder)])
        assert result.exit_code == 1 and f"{labels}: no occurrence of the model's keywords (yes)" in result.output
        assert f"rpi_kws.py MODEL --wav {wav}" in result.output


def test_model_thresholds_are_judged_against_the_target_they_were_written_for(model_path, tmp_path):
    from edgeasr.cli import main

    model = tmp_path / "energy.tflite"
    model.write_bytes(model_path.read_bytes())
    wav, labels = labelled_stream(tmp_path, keyword_lines()[:2])         # the third burst is a false accept
    common = ["eval-stream", str(model), "--wav", str(wav), "--labels", str(labels), "--out", str(tmp_path / "o")]
    written = CliRunner().invoke(main, [*common, "--target-fa-per-hour", "400", "--write-thresholds"])
    assert written.exit_code == 0, written.output
    scored = CliRunner().invoke(main, [*common, "--model-thresholds"])
    assert scored.exit_code == 0 and "NOT REACHED" not in scored.output, scored.output
    assert json.loads((tmp_path / "o" / "energy.stream.json").read_text())["target_fa_per_hour"] == 400
    assert "too short to resolve" not in scored.output                # 10 s resolve 400 FA/h (one is 360)


def test_a_hop_longer_than_the_window_is_refused(model_path, tmp_path):
    from edgeasr.cli import main

    with pytest.raises(ValueError, match="hop_ms 5000 is longer than the model's window of 98 frames"):
        KeywordSpotter(model_path, DetectorConfig(hop_ms=5000.0))
    wav, labels = labelled_stream(tmp_path, keyword_lines())
    result = CliRunner().invoke(main, ["eval-stream", str(model_path), "--wav", str(wav), "--labels", str(labels),
                                       "--hop-ms", "5000", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "longer than the model's window" in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)                                        # no traceback


def test_the_stream_reads_split_lists_as_training_does(tiny_dataset, tmp_path):
    """'./'-prefixed entries were read as other paths: their keyword clips played unlabelled."""
    import shutil

    from edgeasr.eval.stream import build_test_stream

    edited = tmp_path / "edited"
    shutil.copytree(tiny_dataset, edited)
    listing = edited / "testing_list.txt"
    listing.write_text("".join(f"./{line}\n" if i % 2 else f"{line}\r\n"
                               for i, line in enumerate(listing.read_text().split())))
    build = lambda root, cache: build_test_stream(root, ["yes", "no", "stop"], cache, hours=0.01, seed=2,
                                                  progress=False)
    original, edited_stream = build(tiny_dataset, tmp_path / "a"), build(edited, tmp_path / "b")
    assert original[0].read_bytes() == edited_stream[0].read_bytes()
    assert original[1].read_text() == edited_stream[1].read_text()
