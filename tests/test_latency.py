"""edgeasr.eval.latency: side-by-side medians on every kernel set that can load a model."""
import numpy as np

from edgeasr.eval.latency import interleaved_latency
from edgeasr.runtime.litert import KERNELS
from tests.test_streaming import energy_model


def test_interleaved_latency_times_every_model_on_every_kernel_set(tmp_path):
    paths = [str(energy_model(tmp_path / "a.tflite")), str(energy_model(tmp_path / "b.tflite", gain=9.0))]
    medians = interleaved_latency(paths, rounds=3, invokes=4)
    assert set(medians) == {(path, kernels) for path in paths for kernels in KERNELS}
    assert all(0 < ms < 50 for ms in medians.values())           # one invoke of a 3-class Dense: well under 50 ms
    only = interleaved_latency(paths[:1], rounds=1, invokes=2, kernel_sets=("xnnpack",))
    assert list(only) == [(paths[0], "xnnpack")] and np.isfinite(only[(paths[0], "xnnpack")])
