import librosa
import numpy as np
import pytest

from edgeasr.audio.frontend import FrontendConfig, hann_window, mel_weights, numpy_log_mel, tf_log_mel

CONFIG = FrontendConfig()


def test_one_second_gives_98_frames_of_40_mels():
    features = numpy_log_mel(np.zeros(16000, np.float32), CONFIG)
    assert features.shape == (98, 40)
    assert CONFIG.num_frames(16000) == 98
    assert CONFIG.num_frames(479) == 0


def test_mel_weights_equal_librosa():
    ours = mel_weights(CONFIG)
    theirs = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=20.0, fmax=7600.0)
    assert ours.shape == (40, 257)
    np.testing.assert_allclose(ours, theirs, atol=1e-7)


def test_hann_window_is_tensorflows_periodic_one():
    import tensorflow as tf

    np.testing.assert_allclose(hann_window(480), tf.signal.hann_window(480).numpy(), atol=1e-6)


def test_tensorflow_and_numpy_agree_on_speech(speech_16k):
    assert np.sqrt(np.mean(speech_16k**2)) > 0.01, "fixture must hold real speech"
    ours = numpy_log_mel(speech_16k, CONFIG)
    tf_features = tf_log_mel(speech_16k[None, :], CONFIG).numpy()[0]
    assert tf_features.shape == ours.shape == (CONFIG.num_frames(len(speech_16k)), 40)
    assert np.abs(tf_features - ours).max() < 1e-3


def test_numpy_agrees_with_librosa_melspectrogram(speech_16k):
    # librosa frames n_fft samples with the window centred in them: shift by (n_fft - window) / 2.
    offset = (CONFIG.n_fft - CONFIG.window_samples) // 2
    power = librosa.feature.melspectrogram(
        y=np.pad(speech_16k, (offset, offset)), sr=16000, n_fft=512, hop_length=160, win_length=480,
        window="hann", center=False, power=2.0, n_mels=40, fmin=20.0, fmax=7600.0,
    ).T
    ours = numpy_log_mel(speech_16k, CONFIG)
    assert power.shape == ours.shape
    expected = (np.log(np.maximum(power, CONFIG.log_floor)) - CONFIG.feature_mean) / CONFIG.feature_std
    assert np.abs(expected - ours).max() < 1e-3


def test_log_floor_bounds_silence():
    features = numpy_log_mel(np.zeros(16000, np.float32), CONFIG)
    floor = (np.log(CONFIG.log_floor) - CONFIG.feature_mean) / CONFIG.feature_std
    assert features.max() == pytest.approx(floor, rel=1e-6)


def test_batch_matches_single_clips(speech_16k):
    batch = np.stack([speech_16k[:16000], speech_16k[16000:]])
    features = numpy_log_mel(batch, CONFIG)
    np.testing.assert_array_equal(features[1], numpy_log_mel(speech_16k[16000:], CONFIG))


def test_settings_that_would_change_features_silently_are_refused():
    for bad, named in (({"n_fft": 256}, "n_fft 256 is shorter than the window (480 samples)"),
                       ({"fmax": 9000.0}, "fmax <= sample_rate / 2 (8000 Hz)"),
                       ({"n_mels": 0}, "n_mels must be at least 1"),
                       ({"hop_ms": 0.01}, "must each be at least one sample"),
                       ({"sample_rate": 0}, "sample_rate must be positive")):
        with pytest.raises(ValueError, match=rf"frontend: .*{named.replace('(', '.').replace(')', '.')}"):
            FrontendConfig(**bad)
    for bad in ({"fmax": None}, {"hop_ms": float("nan")}, {"n_mels": True}):
        with pytest.raises(ValueError, match=f"frontend: {next(iter(bad))} must be a finite number"):
            FrontendConfig(**bad)
    assert FrontendConfig(fmax=8000.0).fmax == 8000.0                 # up to Nyquist


def test_short_audio_has_no_frames_and_integer_pcm_is_refused(speech_16k):
    short = numpy_log_mel(np.zeros(CONFIG.window_samples - 1, np.float32), CONFIG)
    assert short.shape == (0, 40) == (CONFIG.num_frames(CONFIG.window_samples - 1), 40)
    assert numpy_log_mel(np.zeros((3, 100), np.float32), CONFIG).shape == (3, 0, 40)
    pcm = np.round(speech_16k * 32767).astype(np.int16)
    for frontend in (numpy_log_mel, tf_log_mel):
        with pytest.raises(ValueError, match="not int16; divide int16 PCM by 32768"):
            frontend(pcm, CONFIG)
