"""What a run records about the numerics that decided its floating-point results."""
import pytest

from edgeasr.train import numerics
from edgeasr.train.run_dir import RunDir

AVX512_MACHINE = {"sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "amx_tile"}


@pytest.mark.parametrize("flags, isa", [
    (AVX512_MACHINE, "avx512_core"),
    (AVX512_MACHINE - {"avx512bw"}, "avx2"),          # Xeon Phi's AVX-512F without BW is not oneDNN's core class
    ({"sse4_1", "avx", "avx2"}, "avx"),                # AVX2 without FMA
    ({"sse4_1"}, "sse41"),
    (set(), "unknown"),
])
def test_the_isa_class_is_the_widest_whose_flags_the_cpu_has(flags, isa):
    assert numerics._x86_isa_class(flags) == isa


@pytest.mark.parametrize("cap, isa", [("AVX2", "avx2"), ("avx2_vnni", "avx2"), ("AVX512_CORE_AMX", "avx512_core"),
                                      ("ALL", "avx512_core"), ("", "avx512_core"), ("SSE41", "sse41"),
                                      ("AVX10_1_512", "avx512_core")])
def test_onednn_max_cpu_isa_narrows_the_class(cap, isa):
    assert numerics._capped("avx512_core", cap) == isa
    assert numerics._capped("avx2", "AVX512_CORE") == "avx2"         # a cap never widens


def test_a_run_under_onednn_off_or_other_threads_records_other_numerics(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    default = numerics.training_numerics()
    assert default["threads"] >= 1 and default["tensorflow"].count(".") >= 2 and default["cpu"]
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert numerics.training_numerics()["kernels"] == "eigen"
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", str(default["threads"] + 3))
    assert numerics.training_numerics()["threads"] == default["threads"] + 3
    assert f"eigen kernels, {default['threads'] + 3} threads, {default['cpu']}" in numerics.describe(
        numerics.training_numerics())


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86 kernel classes")
def test_the_kernels_are_eigen_wherever_tensorflow_leaves_onednn_off(monkeypatch):
    """TensorFlow decides by the CPU too (off under QEMU's AVX2 CPU), not only by TF_ENABLE_ONEDNN_OPTS."""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    kernels = numerics.training_numerics()["kernels"]
    assert kernels.startswith("onednn-") == numerics._tensorflow_uses_onednn()
    monkeypatch.setattr(numerics, "_tensorflow_uses_onednn", lambda: False)
    assert numerics.training_numerics()["kernels"] == "eigen"


def test_a_run_records_its_numerics_once_and_again_only_when_they_change(tmp_path):
    run = RunDir(tmp_path / "run")
    here = {"tensorflow": "2.21.0", "kernels": "onednn-avx512_core", "threads": 2, "cpu": "Intel(R) Xeon(R) Processor"}
    assert run.read_numerics() == [] and run.note_numerics(here, "float", 1) == {}
    assert run.note_numerics(here, "float", 4) == {}                         # resumed under the same ones
    elsewhere = {**here, "kernels": "onednn-avx2"}
    assert run.note_numerics(elsewhere, "float", 6) == here
    assert run.read_numerics() == [{"stage": "float", "from_epoch": 1, **here},
                                   {"stage": "float", "from_epoch": 6, **elsewhere}]
    # a fact recorded only since (the rsqrt fingerprint) is unknown for the earlier epochs, not a change
    assert run.note_numerics({**elsewhere, "rsqrt": "d1be6a9d"}, "float", 8) == {}
    assert len(run.read_numerics()) == 2


def _numpy_rsqrt(inputs):
    """1/sqrt in float64 rounded to float32: NumPy's IEEE square root and division, the same on any CPU."""
    import numpy as np

    return (1.0 / np.sqrt(inputs.astype(np.float64))).astype(np.float32)


def test_the_rsqrt_fingerprint_is_of_an_approximate_rsqrt():
    """TensorFlow's float32 rsqrt is not correctly rounded (an approximate instruction and a Newton step),
    so its bits may differ between CPU designs; the fingerprint is stable within one process."""
    import numpy as np
    import tensorflow as tf

    inputs = np.linspace(1.0, 4.0, 1 << 16, dtype=np.float32)
    exact = _numpy_rsqrt(inputs)
    ulps = np.abs(tf.math.rsqrt(inputs).numpy().view(np.int32).astype(np.int64) - exact.view(np.int32))
    assert 0 < ulps.max() <= 4
    fingerprint = numerics.rsqrt_fingerprint()
    assert len(fingerprint) == 8 and int(fingerprint, 16) >= 0 and fingerprint == numerics.rsqrt_fingerprint()
    assert f"rsqrt {fingerprint}" in numerics.describe(numerics.training_numerics())


def test_qat_batch_norm_computes_one_over_sqrt_exactly():
    """QAT's folded BatchNorm uses exact_rsqrt: bit-equal to NumPy's float64 1/sqrt rounded to float32,
    eagerly and traced (where Grappler rewrites divisions), so it cannot depend on the CPU; and a
    training step's graph has no float32 Rsqrt, the approximate op."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from edgeasr.models.registry import ModelConfig, build_model
    from edgeasr.quant import qat

    grid = numerics.floats_in_one_to_four(every=64)
    inputs = np.concatenate([grid * 1e-4, grid, grid * 1e4])
    exact = _numpy_rsqrt(inputs)
    assert np.array_equal(qat.exact_rsqrt(tf.constant(inputs)).numpy(), exact)
    assert np.array_equal(tf.function(qat.exact_rsqrt)(tf.constant(inputs)).numpy(), exact)
    assert not np.array_equal(tf.math.rsqrt(inputs).numpy(), exact)   # what it replaces is approximate
    assert "QAT rsqrt float64" in numerics.describe(numerics.training_numerics())   # runs record it

    model = qat.quantize_model(build_model(ModelConfig(name="ds_cnn_s", options={"channels": 8, "blocks": 1})),
                               "w4a8-tanh", stage="full")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())
    step = model.make_train_function()
    batch = (tf.zeros((2, 98, 40)), tf.zeros((2,), tf.int64))
    graph_def = step.get_concrete_function(iter(tf.data.Dataset.from_tensors(batch))).graph.as_graph_def()
    nodes = [*graph_def.node, *(node for function in graph_def.library.function for node in function.node_def)]

    def dtypes_of(op):
        return [tf.dtypes.as_dtype(node.attr["T"].type) for node in nodes if node.op == op]

    assert tf.float32 not in dtypes_of("Rsqrt")
    assert dtypes_of("Sqrt").count(tf.float64) >= 3     # conv0, dw1 and pw1 fold a BatchNorm each
