import edgeasr  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)

import numpy as np
import pytest
import soxr


@pytest.fixture(scope="session")
def speech_16k():
    """Two seconds of real synthesised speech at 16 kHz, float32 in [-1, 1]."""
    from edgeasr.data.espeak import Espeak

    engine = Espeak()
    pcm = engine.synthesize("yes, stop, seven. Turn the light off.", voice="en-us", variant="f3")
    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, engine.sample_rate, 16000)
    return np.asarray(audio[:32000], dtype=np.float32)


TINY_KEYWORDS = ("yes", "no", "stop")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic Speech Commands-layout dataset: 3 keywords, 2 unknown words, 20 speakers."""
    from edgeasr.data.synth import SynthConfig, synthesize_kws_dataset

    root = tmp_path_factory.mktemp("kws") / "data"
    config = SynthConfig(words=TINY_KEYWORDS, unknown_words=("cat", "tree"), speakers=20, repeats=3,
                         noise_seconds=4.0, seed=3)
    synthesize_kws_dataset(root, config, progress=False)
    return root
