"""The `edgeasr` metadata entry: embedded by the converter, read back by the runtime without TensorFlow."""
import subprocess
import sys

import numpy as np
import pytest

from edgeasr.converters.metadata import embed_metadata, legacy_source_hash, source_hash
from edgeasr.runtime.metadata import MetadataError, _metadata_bytes, keyword_columns, keywords_of, read_metadata


def _tiny_tflite() -> bytes:
    import edgeasr  # noqa: F401
    import tf_keras as keras

    from edgeasr.converters.convert import float_tflite

    inputs = keras.Input((4,))
    return float_tflite(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "tiny.tflite"
    values = {"labels": ["_silence_", "yes"], "frontend": {"hop_ms": 10.0}, "window_ms": 30.0, "hop_ms": 10.0}
    path.write_bytes(embed_metadata(_tiny_tflite(), values))
    return path


def test_embed_read_replace(tiny):
    meta = read_metadata(tiny)
    assert meta["labels"] == ["_silence_", "yes"] and meta["format"] == 1 and meta["edgeasr_version"]
    replaced = embed_metadata(tiny.read_bytes(), {"labels": ["a"]})
    assert read_metadata(replaced)["labels"] == ["a"]
    assert len(replaced) < len(tiny.read_bytes()) + 64            # the old entry's buffer is emptied
    assert embed_metadata(tiny.read_bytes(), {"labels": ["a"]}) == replaced   # deterministic
    assert embed_metadata(replaced, {"labels": ["a"]}) == replaced                # idempotent: no buffer added
    assert len(embed_metadata(replaced, {"labels": ["b"]})) == len(replaced)
    assert read_metadata(_tiny_tflite()) is None
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=replaced)                 # still a valid model
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ones((1, 4), np.float32))
    interpreter.invoke()


def test_runtime_reads_metadata_with_python_alone(tiny):
    """No TensorFlow, no LiteRT package, no flatbuffers module: tflite_runtime ships no schema, and a
    device may not have its runtime installed yet."""
    code = ("import sys; sys.modules.update(dict.fromkeys(['ai_edge_litert', 'tflite_runtime', 'flatbuffers', "
            "'tensorflow'])); from edgeasr.runtime.metadata import read_metadata; "
            f"m = read_metadata({str(tiny)!r}); assert m['labels'][1] == 'yes'; "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'tf_keras') and sys.modules[n]]; "
            "assert not bad, bad; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_the_reader_finds_the_entry_the_schema_finds_among_the_converters_own(tiny):
    from edgeasr.converters import flatbuffer as fb

    data = tiny.read_bytes()
    root = fb.schema().Model.GetRootAsModel(data, 0)
    names = [root.Metadata(i).Name().decode() for i in range(root.MetadataLength())]
    assert "edgeasr" in names and len(names) > 1            # min_runtime_version, CONVERSION_METADATA too
    for i, name in enumerate(names):
        buffer = root.Buffers(root.Metadata(i).Buffer())
        assert _metadata_bytes(data, name) == bytes(buffer.DataAsNumpy())
    assert read_metadata(data, "no such entry") is None
    with pytest.raises(MetadataError, match="corrupt TFLite model"):
        read_metadata(data[: len(data) // 2])
    moved_root = (int.from_bytes(data[:4], "little") + 8).to_bytes(4, "little") + data[4:]
    with pytest.raises(MetadataError, match="corrupt TFLite model"):     # not "no metadata"
        read_metadata(moved_root)


def test_keywords_of_leaves_out_the_underscore_classes():
    labels = ["_silence_", "_unknown_", "yes", "no", "stop"]
    assert keywords_of({"labels": labels}) == ["yes", "no", "stop"]
    assert keywords_of({"labels": ["_silence_"]}) == [] and keywords_of(None) == [] and keywords_of({}) == []
    assert keyword_columns(["yes", "_unknown_", "no", "_silence_"]) == [(0, "yes"), (2, "no")]   # output columns


def test_not_a_model(tmp_path):
    path = tmp_path / "x.tflite"
    path.write_bytes(b"hello world")
    with pytest.raises(MetadataError, match="not a TFLite model"):
        read_metadata(path)


def test_tflite_runtime_failing_on_int4_weights_says_which_runtime_to_install(tiny, monkeypatch):
    """tflite_runtime 2.14 refuses INT4 FULLY_CONNECTEDs at prepare with a kernel check; the runtime
    names the packed layers (from the metadata) and ai-edge-litert instead. Its interpreter is faked:
    the project does not install tflite_runtime."""
    import types

    from edgeasr.runtime import litert

    class Refusing:
        def __init__(self, **options):
            raise RuntimeError("tensorflow/lite/kernels/fully_connected.cc:360 filter->type == kTfLiteInt8 was not true.")

    fake = types.SimpleNamespace(__name__="tflite_runtime.interpreter", Interpreter=Refusing)
    monkeypatch.setattr(litert, "_interpreter_module", lambda: fake)
    packed = embed_metadata(tiny.read_bytes(), {"int4_weights": {"dense1": "INT4", "dw1": "INT8", "logits": "INT4"}})
    with pytest.raises(RuntimeError, match=r"dense1, logits as INT4.*pip install ai-edge-litert.*kTfLiteInt8"):
        litert.LiteRTModel(packed)
    with pytest.raises(litert.ModelLoadError, match=r"^tensorflow/lite/kernels"):   # no INT4 weights: its words
        litert.LiteRTModel(tiny.read_bytes())


def test_a_runtime_whose_xnnpack_fails_to_prepare_runs_the_builtin_kernels(tiny, monkeypatch):
    """ai-edge-litert 2.1 (Python 3.9) fails to prepare edgeasr's FULLY_CONNECTEDs on XNNPACK; the
    builtin kernels run them. Faked here: the failing release is not installable on this Python."""
    import types

    from ai_edge_litert import interpreter as real

    from edgeasr.runtime import litert

    def interpreter(**options):
        if "experimental_op_resolver_type" not in options:
            raise RuntimeError("failed to delegate FULLY_CONNECTED node #0\nNode number 1 (TfLiteXNNPackDelegate) "
                               "failed to prepare.")
        return real.Interpreter(**options)

    fake = types.SimpleNamespace(__name__="ai_edge_litert.interpreter", Interpreter=interpreter,
                                 OpResolverType=real.OpResolverType)
    monkeypatch.setattr(litert, "_interpreter_module", lambda: fake)
    with pytest.warns(RuntimeWarning, match="XNNPACK cannot run the model .*builtin kernels"):
        model = litert.LiteRTModel(tiny)
    assert model.kernels == "builtin" and model.run_raw(np.ones(4, np.float32)).shape == (2,)
    assert litert.LiteRTModel(tiny, kernels="builtin").kernels == "builtin"


def test_no_litert_package_says_which_to_install(monkeypatch):
    from edgeasr.runtime import litert

    for package in ("ai_edge_litert", "tflite_runtime", "tensorflow.lite.python", "tensorflow"):
        monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(litert.NoRuntimeError, match="pip install ai-edge-litert"):
        litert._interpreter_module()


def test_inspect_says_when_the_metadata_is_there_but_unreadable(tiny, tmp_path):
    from edgeasr.converters.inspect import format_inspection, inspect_model

    data = tiny.read_bytes()
    assert data.count(b'"labels"') == 1
    broken, plain = tmp_path / "broken.tflite", tmp_path / "plain.tflite"
    broken.write_bytes(data.replace(b'"labels"', b'{labels"'))
    plain.write_bytes(_tiny_tflite())
    with pytest.raises(MetadataError, match="not valid JSON"):
        read_metadata(broken)
    text = format_inspection(inspect_model(broken))
    assert "metadata: present but unreadable" in text and "not valid JSON" in text
    assert "metadata: none (not written by edgeasr)" in format_inspection(inspect_model(plain))


def test_a_run_directory_hashes_only_the_files_that_define_its_model(tmp_path):
    """A report, plot or .tflite written into a run later leaves its hash; a retrained model changes it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"model": {}}')
    (run / "model.keras").write_bytes(b"weights")
    (run / "history.json").write_text("[]")
    before = source_hash(run)
    converted_with_old_kit = legacy_source_hash(run)

    (run / "test_report.json").write_text("{}")
    (run / "model.tflite").write_bytes(b"TFL3")
    (run / "checkpoints" / "ckpt-1.index").write_bytes(b"state")
    assert source_hash(run) == before
    assert legacy_source_hash(run) != converted_with_old_kit

    (run / "model.keras").write_bytes(b"retrained")
    assert source_hash(run) != before


def test_a_saved_model_directory_hashes_all_its_files(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    (tmp_path / "variables" / "variables.data").write_bytes(b"a")
    before = source_hash(tmp_path)
    (tmp_path / "variables" / "variables.data").write_bytes(b"b")
    assert source_hash(tmp_path) != before
