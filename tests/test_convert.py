"""`edgeasr convert` / `inspect` / `validate` on a foreign tf_keras file with .npy calibration:
PTQ to 4 bits, fully integer, byte-identical reruns, --force, and plain errors."""
import edgeasr  # noqa: F401

import json

import numpy as np
import pytest
import tf_keras as keras
from click.testing import CliRunner

from edgeasr.cli import main
from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.convert import check_fully_integer, float_tflite
from edgeasr.errors import EdgeasrError
from edgeasr.models.registry import ModelConfig, build_model
from edgeasr.runtime.metadata import read_metadata


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A small trained float DS-CNN saved as .keras, and a .npy of its inputs."""
    root = tmp_path_factory.mktemp("foreign")
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="ds_cnn_s", num_classes=4, options={"channels": 16, "blocks": 1}))
    x = np.random.default_rng(0).normal(size=(48, 98, 40)).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, np.arange(48) % 4, epochs=2, verbose=0)
    model.save(root / "kws.keras")
    np.save(root / "inputs.npy", x)
    return root


def _convert(foreign, out, *extra):
    return CliRunner().invoke(main, ["convert", str(foreign / "kws.keras"), "-o", str(out), "--calibration",
                                     str(foreign / "inputs.npy"), *extra])


def test_float_keras_file_converts_to_int4_fully_integer_with_metadata(foreign, tmp_path):
    out = tmp_path / "kws_w4.tflite"
    result = _convert(foreign, out, "--policy", "w4a8-tanh")
    assert result.exit_code == 0, result.output
    ops, tensors = fb.read_model(out.read_bytes())
    weights = {t.name: t for t in tensors if t.data is not None and len(t.shape) >= 2 and t.type != "INT32"}
    # Pointwise conv (now FULLY_CONNECTED) and logits packed; depthwise and first conv keep their
    # 4-bit levels (x 16, converters/int4.py) in INT8 containers, which XNNPACK takes.
    assert {name: t.type for name, t in weights.items()} == {
        "conv0/weight": "INT8", "dw1/weight": "INT8", "pw1/weight": "INT4", "logits/weight": "INT4"}
    for name in ("conv0/weight", "dw1/weight"):
        stored = weights[name].data.view(np.int8).astype(np.int32)
        assert np.all(stored % 16 == 0) and stored.min() >= -128 and stored.max() <= 112
    assert ops.count("FULLY_CONNECTED") == 2 and ops.count("CONV_2D") == 1
    assert not [t.name for t in tensors if t.type.startswith("FLOAT")]
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    meta = read_metadata(out)
    assert meta["policy"]["name"] == "w4a8-tanh" and meta["quantization"] == "post-training"
    assert meta["input"]["dtype"] == "int8" and meta["output"]["shape"] == [1, 4]
    assert len(meta["source"]["sha256"]) == 64
    assert meta["int4_weights"] == {"conv0": "INT8", "dw1": "INT8", "pw1": "INT4", "logits": "INT4"}
    parity = json.loads((tmp_path / "kws_w4.parity.json").read_text())
    assert parity["argmax_agreement"] >= 0.99 and (tmp_path / "kws_w4.parity.md").is_file()
    float_top = keras.models.load_model(foreign / "kws.keras").predict(np.load(foreign / "inputs.npy"), verbose=0)
    assert 0 < parity["float_vs_litert_agreement"] <= 1              # PTQ: the float model is compared too
    assert "float Keras vs LiteRT" in (tmp_path / "kws_w4.parity.md").read_text() and float_top.shape == (48, 4)

    again = _convert(foreign, out, "--policy", "w4a8-tanh")          # no overwrite without --force
    assert again.exit_code == 1 and "--force" in again.output
    second = tmp_path / "second.tflite"
    assert _convert(foreign, second, "--policy", "w4a8-tanh").exit_code == 0
    assert second.read_bytes() == out.read_bytes()                  # same inputs, same bytes

    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0 and "packed INT4" in shown.output and "w4a8-tanh" in shown.output
    checked = CliRunner().invoke(main, ["validate", str(out), "--source", str(foreign / "kws.keras"),
                                        "--data", str(foreign / "inputs.npy")])
    assert checked.exit_code == 0, checked.output
    assert "Warning" not in checked.output                           # same source, same calibration
    refused = CliRunner().invoke(main, ["validate", str(out), "--source", str(foreign / "kws.keras"),
                                        "--data", str(foreign / "inputs.npy"), "--min-agreement", "1.01"])
    assert refused.exit_code == 2 and "0<=x<=1" in refused.output    # a share, not a percentage

    other = keras.models.load_model(foreign / "kws.keras")           # another source: its classes rolled
    kernel, bias = other.get_layer("logits").get_weights()
    other.get_layer("logits").set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    other.save(tmp_path / "other.keras")
    wrong = CliRunner().invoke(main, ["validate", str(out), "--source", str(tmp_path / "other.keras"),
                                      "--data", str(foreign / "inputs.npy"), "--min-agreement", "0.99"])
    assert wrong.exit_code == 1 and "below" in wrong.output
    assert "not what the model was converted from" in wrong.output
    assert "other calibration inputs" not in wrong.output          # --data is what convert calibrated with
    assert json.loads((tmp_path / "kws_w4.parity.json").read_text())["passed"]   # the model's own report stays
    assert not json.loads((tmp_path / "kws_w4.rejected.parity.json").read_text())["passed"]


def test_conv_storage_int4_packs_every_4bit_weight(foreign, tmp_path):
    out = tmp_path / "kws_all_int4.tflite"
    assert _convert(foreign, out, "--policy", "w4a8-tanh", "--conv-storage", "int4").exit_code == 0
    _, tensors = fb.read_model(out.read_bytes())
    weights = [t for t in tensors if t.data is not None and len(t.shape) >= 2 and t.type != "INT32"]
    assert len(weights) == 4 and all(t.type == "INT4" for t in weights)


def test_float_io_keeps_only_the_boundary_in_float(foreign, tmp_path):
    out = tmp_path / "kws_float_io.tflite"
    assert _convert(foreign, out, "--io", "float").exit_code == 0
    ops, _ = fb.read_model(out.read_bytes())
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE" and ops.count("QUANTIZE") == 1
    assert read_metadata(out)["policy"]["name"] == "w8a8"


def test_logits_output_with_the_softmax_in_the_runtime(foreign, tmp_path):
    """--scores logits: int8 logits within 2 LSB of the fake-quant Keras logits; the runtime's softmax
    of them sums to 1 and follows Keras' probabilities. --scores probabilities keeps the int8 SOFTMAX."""
    from edgeasr.converters.convert import with_scores
    from edgeasr.converters.ptq import post_training_quantize
    from edgeasr.runtime.litert import LiteRTModel, quantize
    from edgeasr.runtime.streaming import softmax

    out, softmax_out = tmp_path / "logits.tflite", tmp_path / "probabilities.tflite"
    assert _convert(foreign, out, "--scores", "logits").exit_code == 0
    assert _convert(foreign, softmax_out, "--scores", "probabilities").exit_code == 0
    ops, _ = fb.read_model(out.read_bytes())
    assert "SOFTMAX" not in ops and "SOFTMAX" in fb.read_model(softmax_out.read_bytes())[0]
    meta = read_metadata(out)
    assert meta["scores"] == "logits" and read_metadata(softmax_out)["scores"] == "probabilities"
    output = meta["output"]                       # the logits' own range, not the softmax's fixed one
    assert output["dtype"] == "int8" and (output["scale"], output["zero_point"]) != (1 / 256, -128)
    x = np.load(foreign / "inputs.npy")
    quantized = post_training_quantize(keras.models.load_model(foreign / "kws.keras"), "w8a8", x)
    keras_logits = with_scores(quantized, "logits").predict(x, verbose=0)
    lite = LiteRTModel(out)
    raw = np.stack([lite.run_raw(quantize(example, lite.input_detail)) for example in x]).astype(np.int64)
    assert np.abs(raw - quantize(keras_logits, lite.output_detail)).max() <= 2
    probabilities = softmax(lite.predict(x))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)
    assert np.abs(probabilities - quantized.predict(x, verbose=0)).max() < 0.03
    parity = json.loads((tmp_path / "logits.parity.json").read_text())
    assert parity["argmax_agreement"] >= 0.99 and parity["output_lsb_difference"]["max"] <= 2
    checked = CliRunner().invoke(main, ["validate", str(out), "--source", str(foreign / "kws.keras"),
                                        "--data", str(foreign / "inputs.npy")])
    assert checked.exit_code == 0 and "100.00%" in checked.output, checked.output


def test_plain_errors(foreign, tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["convert", str(bad), "-o", str(tmp_path / "x.tflite"),
                                       "--calibration", str(foreign / "inputs.npy")])
    assert result.exit_code == 1 and "not a readable tf_keras model" in result.output
    missing = CliRunner().invoke(main, ["convert", str(foreign / "kws.keras"), "-o", str(tmp_path / "x.tflite")])
    assert missing.exit_code == 1 and "needs --calibration" in missing.output
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 10, 40), np.float32))
    shaped = _convert(foreign, tmp_path / "x.tflite", "--calibration", str(wrong))
    assert shaped.exit_code == 1 and "shape (4, 10, 40)" in shaped.output
    holes = np.load(foreign / "inputs.npy")
    holes[[3, 7], 0, 0] = [np.nan, np.inf]          # the stock converter crashed or segfaulted on these
    np.save(tmp_path / "holes.npy", holes)
    broken = _convert(foreign, tmp_path / "x.tflite", "--calibration", str(tmp_path / "holes.npy"))
    assert broken.exit_code == 1 and "2 of 48 inputs hold NaN or infinite values (rows 3, 7)" in broken.output
    np.savez(tmp_path / "archive.npz", inputs=holes)
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    archive = _convert(foreign, tmp_path / "x.tflite", "--calibration", str(tmp_path / "archive.npy"))
    assert archive.exit_code == 1 and "an .npz archive" in archive.output
    np.save(tmp_path / "zeros.npy", np.zeros((50, 98, 40), np.float32))
    zeros = _convert(foreign, tmp_path / "x.tflite", "--calibration", str(tmp_path / "zeros.npy"))
    assert zeros.exit_code == 1 and "every value is 0" in zeros.output

    inputs = keras.Input((98, 40))
    odd = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.LayerNormalization(name="norm")(inputs)))
    odd.save(tmp_path / "odd.keras")
    unsupported = CliRunner().invoke(main, ["convert", str(tmp_path / "odd.keras"), "-o", str(tmp_path / "o.tflite"),
                                            "--calibration", str(foreign / "inputs.npy")])
    assert unsupported.exit_code == 1 and "'norm'" in unsupported.output and "LayerNormalization" in unsupported.output
    for layer, message in ((keras.layers.Conv1D(4, 3, name="c1"), "cannot quantize a Conv1D kernel per channel"),
                           (keras.layers.Activation("elu", name="act"), "'elu' has no int8 TFLite kernel")):
        keras.Model(inputs, keras.layers.Dense(4)(layer(inputs))).save(tmp_path / "odd.keras")
        refused = CliRunner().invoke(main, ["convert", str(tmp_path / "odd.keras"), "-o", str(tmp_path / "o.tflite"),
                                            "--calibration", str(foreign / "inputs.npy")])
        assert refused.exit_code == 1 and message in refused.output, refused.output
    keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Lambda(lambda t: 2 * t)(inputs))).save(tmp_path / "l.keras")
    lam = CliRunner().invoke(main, ["convert", str(tmp_path / "l.keras"), "-o", str(tmp_path / "o.tflite"),
                                    "--calibration", str(foreign / "inputs.npy")])
    assert lam.exit_code == 1 and "has a Lambda layer" in lam.output and "safe_mode" not in lam.output
    no_softmax = CliRunner().invoke(main, ["convert", str(tmp_path / "odd.keras"), "-o", str(tmp_path / "o.tflite"),
                                           "--calibration", str(foreign / "inputs.npy"), "--scores", "logits"])
    assert no_softmax.exit_code == 1 and "ending in a Softmax layer" in no_softmax.output
    assert not (tmp_path / "x.tflite").exists() and not (tmp_path / "o.tflite").exists()

    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\0\0\0\0TFL3" + b"\xff" * 20)
    shown = CliRunner().invoke(main, ["inspect", str(corrupt)])
    assert shown.exit_code == 1 and "corrupt TFLite model" in shown.output
    text = tmp_path / "notes.tflite"
    text.write_text("hello")
    assert "not a TFLite model" in CliRunner().invoke(main, ["inspect", str(text)]).output


def test_a_damaged_model_is_refused_by_name_by_every_command_that_reads_one(foreign, tmp_path):
    """One flipped byte in an index, a type or a name read as a traceback from LiteRT or the reader."""
    model = tmp_path / "good.tflite"
    assert _convert(foreign, model).exit_code == 0
    damages = {"type": lambda m: setattr(m.subgraphs[0].tensors[0], "type", 99),
               "opcode": lambda m: setattr(m.subgraphs[0].operators[0], "opcodeIndex", 1000),
               "tensor": lambda m: setattr(m.subgraphs[0].operators[0], "inputs", [5000]),
               "name": lambda m: setattr(m.subgraphs[0].tensors[0], "name", b"\xf2\x28")}
    for damage, apply in damages.items():
        tree = fb.load(model.read_bytes())
        apply(tree)
        damaged = tmp_path / f"{damage}.tflite"
        damaged.write_bytes(fb.dump(tree))
        for command in (["inspect", str(damaged)],
                        ["validate", str(damaged), "--source", str(foreign / "kws.keras")],
                        ["eval-stream", str(damaged), "--wav", str(model), "--labels", str(model)],
                        ["transcribe", str(damaged), str(foreign / "inputs.npy")],
                        ["eval-asr", str(damaged), "--manifest", str(foreign / "inputs.npy")],
                        ["device-check", str(damaged), "--ssh", "nobody@127.0.0.1"]):
            result = CliRunner().invoke(main, command)
            assert result.exit_code == 1 and "corrupt TFLite model" in result.output, (damage, command, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_model_litert_cannot_load_is_one_line_not_a_traceback(foreign, tmp_path):
    """An op version this LiteRT lacks passes the flatbuffer reader; the interpreter refuses it."""
    model = tmp_path / "good.tflite"
    assert _convert(foreign, model, "--labels", "_silence_,_unknown_,yes,no", "--frontend", "edgeasr").exit_code == 0
    tree = fb.load(model.read_bytes())
    tree.operatorCodes[0].version = 99
    newer = tmp_path / "newer.tflite"
    newer.write_bytes(fb.dump(tree))
    plain = tmp_path / "plain.tflite"
    assert _convert(foreign, plain).exit_code == 0
    unlabelled = CliRunner().invoke(main, ["device-check", str(plain), "--ssh", "nobody@127.0.0.1"])
    assert unlabelled.exit_code == 1 and "no edgeasr metadata with labels and frontend" in unlabelled.output
    for command in (["validate", str(newer), "--source", str(foreign / "kws.keras"), "--data",
                     str(foreign / "inputs.npy"), "--calibration", str(foreign / "inputs.npy")],
                    ["device-check", str(newer), "--ssh", "nobody@127.0.0.1"]):       # checked here first
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "LiteRT cannot load the model (Didn't find op" in result.output, \
            (command, result.output)
        assert "version '99'" in result.output


def test_a_quantization_that_changes_the_float_models_decisions_is_warned_about():
    from edgeasr.eval.parity import quantization_warnings

    assert quantization_warnings({"float_vs_litert_agreement": 0.95}) == [] == quantization_warnings({})
    [line] = quantization_warnings({"float_vs_litert_agreement": 0.64})
    assert "decides 36.0% of the examples otherwise than the float model" in line and "calibration" in line


def test_calibration_is_float_inputs_spread_over_the_whole_array(foreign, tmp_path):
    from edgeasr.converters.sources import load_calibration, spread_rows

    assert list(spread_rows(5, 10)) == [0, 1, 2, 3, 4] and list(spread_rows(5, None)) == [0, 1, 2, 3, 4]
    rows = spread_rows(1000, 300)
    assert len(rows) == 300 == len(set(rows)) and list(rows) == sorted(rows) and rows[-1] > 900   # not the first 300
    assert list(spread_rows(1000, 300)) == list(rows)                                             # seeded
    model = keras.models.load_model(foreign / "kws.keras")
    sorted_inputs = tmp_path / "sorted.npy"
    np.save(sorted_inputs, np.arange(600, dtype=np.float32)[:, None, None] * np.ones((1, 98, 40), np.float32))
    features, labels = load_calibration(sorted_inputs, model, limit=300)
    assert features.shape == (300, 98, 40) and labels is None and features[:, 0, 0].max() > 500
    quantized = tmp_path / "int8.npy"
    np.save(quantized, np.zeros((8, 98, 40), np.int8))
    refused = _convert(foreign, tmp_path / "q.tflite", "--calibration", str(quantized))
    assert refused.exit_code == 1 and "a int8 array" in refused.output and "float" in refused.output


def test_calibration_from_a_dataset_folder_samples_every_word(tiny_dataset):
    """The folder is read word by word: its first clips are all one word, a spread sample is not."""
    from edgeasr.converters.sources import load_calibration
    from edgeasr.data.speech_commands import DataConfig
    from tests.conftest import TINY_KEYWORDS

    model = build_model(ModelConfig(name="ds_cnn_s", num_classes=len(TINY_KEYWORDS) + 2,
                                    options={"channels": 8, "blocks": 1}))
    features, labels = load_calibration(tiny_dataset, model, limit=40)
    assert features.shape[0] == 40 and labels is not None
    assert len(set(labels.tolist())) >= len(DataConfig(keywords=TINY_KEYWORDS).labels) - 1


def test_validate_says_when_it_calibrates_a_float_source_on_other_inputs_than_convert(foreign, tmp_path):
    out = tmp_path / "kws.tflite"
    assert _convert(foreign, out).exit_code == 0
    recorded = read_metadata(out)["calibration"]
    assert recorded["examples"] == 48 and len(recorded["sha256"]) == 16
    other = tmp_path / "other.npy"
    np.save(other, np.load(foreign / "inputs.npy")[::-1] * 1.5)
    args = ["validate", str(out), "--source", str(foreign / "kws.keras"), "--data", str(foreign / "inputs.npy")]
    same = CliRunner().invoke(main, [*args, "--calibration", str(foreign / "inputs.npy")])
    assert same.exit_code == 0 and "Warning" not in same.output, same.output
    moved = CliRunner().invoke(main, [*args, "--calibration", str(other), "--min-agreement", "0"])
    assert moved.exit_code == 0 and "Warning: the float source was re-quantised with other calibration" in moved.output
    assert json.loads((tmp_path / "kws.parity.json").read_text())["notes"]


def test_a_dense_softmax_head_converts_like_a_softmax_layer(foreign, tmp_path):
    inputs = keras.Input((98, 40))
    fused = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="head")(
        keras.layers.Flatten()(inputs)))
    fused.save(tmp_path / "fused.keras")
    for scores in ("auto", "probabilities"):
        out = tmp_path / f"fused_{scores}.tflite"
        result = CliRunner().invoke(main, ["convert", str(tmp_path / "fused.keras"), "-o", str(out), "--calibration",
                                           str(foreign / "inputs.npy"), "--scores", scores])
        assert result.exit_code == 0, result.output
        ops, _ = fb.read_model(out.read_bytes())
        assert "QUANTIZE" not in ops and ops[-1] == ("FULLY_CONNECTED" if scores == "auto" else "SOFTMAX")
        assert read_metadata(out)["scores"] == ("logits" if scores == "auto" else "probabilities")


@pytest.mark.parametrize("activation,op", [("sigmoid", "LOGISTIC"), ("tanh", "TANH")])
def test_a_fused_sigmoid_or_tanh_converts_to_its_fixed_scale_kernel(foreign, tmp_path, activation, op):
    """LOGISTIC and TANH have a fixed int8 output scale: a fake-quant after a fused one gave it a range
    of its own, and the converter added an int8-to-int8 QUANTIZE (refused as not fully integer)."""
    inputs = keras.Input((98, 40))
    hidden = keras.layers.Dense(8, name="hidden")(keras.layers.Flatten()(inputs))
    head = keras.Model(inputs, keras.layers.Dense(4, activation=activation, name="head")(hidden))
    head.save(tmp_path / "head.keras")
    out = tmp_path / "head.tflite"
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "head.keras"), "-o", str(out), "--calibration",
                                       str(foreign / "inputs.npy"), "--min-agreement", "0.9"])   # untrained: near ties
    assert result.exit_code == 0, result.output
    ops, _ = fb.read_model(out.read_bytes())
    assert "QUANTIZE" not in ops and ops[-2:] == ["FULLY_CONNECTED", op]

    gated = keras.layers.Dense(8, activation=activation, name="gate")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(4, name="logits")(gated)).save(tmp_path / "gated.keras")
    for io in ("int8", "float"):
        out = tmp_path / f"gated_{io}.tflite"
        result = CliRunner().invoke(main, ["convert", str(tmp_path / "gated.keras"), "-o", str(out), "--calibration",
                                           str(foreign / "inputs.npy"), "--io", io, "--min-agreement", "0.9"])
        assert result.exit_code == 0, (io, result.output)
        ops, _ = fb.read_model(out.read_bytes())
        assert ops.count("QUANTIZE") == (io == "float") and op in ops


def test_a_policy_whose_rules_name_no_layer_is_refused(foreign, tmp_path):
    inputs = keras.Input((98, 40))
    theirs = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(4, name="classifier")(
        keras.layers.Flatten()(inputs))))
    theirs.save(tmp_path / "theirs.keras")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "theirs.keras"), "-o", str(tmp_path / "m.tflite"),
                                       "--calibration", str(foreign / "inputs.npy"), "--policy", "mixed"])
    assert result.exit_code == 1 and "none of its layer rules (conv0, dense1, logits)" in result.output
    assert "classifier" in result.output and not (tmp_path / "m.tflite").exists()

    policy = tmp_path / "bn.json"                      # the foreign DS-CNN's pointwise BNs: folded into pw1
    policy.write_text(json.dumps({"name": "bn4", "default": {"weight_bits": 8},
                                  "rules": [{"pattern": "bn_pw*", "precision": {"weight_bits": 4}}]}))
    folded = CliRunner().invoke(main, ["convert", str(foreign / "kws.keras"), "-o", str(tmp_path / "m.tflite"),
                                       "--calibration", str(foreign / "inputs.npy"), "--policy", str(policy)])
    assert folded.exit_code == 1 and "rule 'bn_pw*' matches only BatchNormalization layers (bn_pw1)" in folded.output
    assert "name pw1 instead" in folded.output


def test_a_model_file_with_labels_and_frontend_runs_in_the_streaming_runtime(foreign, tmp_path):
    from edgeasr.runtime.streaming import KeywordSpotter

    out, names = tmp_path / "kws.tflite", tmp_path / "labels.txt"
    names.write_text("_silence_\n_unknown_\nyes\nno\n")
    result = _convert(foreign, out, "--labels", str(names), "--frontend", "edgeasr")
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["labels"] == ["_silence_", "_unknown_", "yes", "no"] and meta["frontend"]["n_mels"] == 40
    spotter = KeywordSpotter(out)
    assert spotter.push(np.zeros(16000, np.float32)) == [] and spotter.posteriors.input_frames == 98

    few = _convert(foreign, tmp_path / "few.tflite", "--labels", "yes,no", "--frontend", "edgeasr")
    assert few.exit_code == 1 and "2 names" in few.output and "4 output classes" in few.output
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"n_mels": 64}))
    mismatch = _convert(foreign, tmp_path / "wide.tflite", "--labels", "a,b,c,d", "--frontend", str(wide))
    assert mismatch.exit_code == 1 and "(frames, 64)" in mismatch.output
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"n_mel": 40}))
    assert "unknown field" in _convert(foreign, tmp_path / "t.tflite", "--frontend", str(typo)).output


def test_a_qat_model_file_refuses_another_policy_like_a_qat_run(foreign, tmp_path):
    from edgeasr.quant.qat import quantize_model

    quantize_model(keras.models.load_model(foreign / "kws.keras"), "w4a8-tanh").save(tmp_path / "qat.keras")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "qat.keras"), "-o", str(tmp_path / "q.tflite"),
                                       "--calibration", str(foreign / "inputs.npy"), "--policy", "w8a8"])
    assert result.exit_code == 1 and "its own precision" in result.output and "without --policy" in result.output

    converted = tmp_path / "qat.tflite"
    assert CliRunner().invoke(main, ["convert", str(tmp_path / "qat.keras"), "-o", str(converted), "--calibration",
                                     str(foreign / "inputs.npy")]).exit_code == 0
    validate = ["validate", str(converted), "--source", str(tmp_path / "qat.keras")]
    ignored = CliRunner().invoke(main, [*validate, "--data", str(foreign / "inputs.npy"),
                                        "--calibration", str(foreign / "inputs.npy")])
    assert ignored.exit_code == 1 and "--calibration: " in ignored.output and "takes no calibration" in ignored.output
    np.save(tmp_path / "transposed.npy", np.load(foreign / "inputs.npy").transpose(0, 2, 1))
    shape = CliRunner().invoke(main, [*validate, "--data", str(tmp_path / "transposed.npy")])
    assert shape.exit_code == 1 and "--data " in shape.output and "calibration" not in shape.output, shape.output


def test_a_rejected_conversion_leaves_the_model_and_reports_already_there(foreign, tmp_path):
    out = tmp_path / "kws.tflite"
    assert _convert(foreign, out).exit_code == 0
    model_bytes, report = out.read_bytes(), (tmp_path / "kws.parity.md").read_text()
    original = keras.models.load_model(foreign / "kws.keras")       # another model under the same name
    kernel, bias = original.get_layer("logits").get_weights()
    original.get_layer("logits").set_weights([-kernel, -bias])
    original.save(tmp_path / "flipped.keras")
    from edgeasr.converters.convert import convert

    with pytest.raises(EdgeasrError, match="not written"):
        convert(tmp_path / "flipped.keras", out, calibration=foreign / "inputs.npy", force=True, min_agreement=1.01)
    assert out.read_bytes() == model_bytes and (tmp_path / "kws.parity.md").read_text() == report
    assert (tmp_path / "kws.rejected.parity.md").is_file()
    checked = CliRunner().invoke(main, ["validate", str(out), "--source", str(tmp_path / "flipped.keras"),
                                        "--data", str(foreign / "inputs.npy"), "--calibration",
                                        str(foreign / "inputs.npy")])
    assert checked.exit_code == 1 and f"{tmp_path / 'kws.parity.md'} is an earlier check's" in checked.output, \
        checked.output
    assert (tmp_path / "kws.parity.md").read_text() == report                # a failed check replaces nothing


def test_float_ops_are_named_with_their_layers(foreign):
    model = keras.models.load_model(foreign / "kws.keras")
    names = [layer.name for layer in model.layers]
    with pytest.raises(EdgeasrError, match=r"not fully integer: .*CONV_2D \(layer conv0: FLOAT32"):
        check_fully_integer(float_tflite(model), names)


def test_a_requantize_between_integer_ops_is_refused_with_either_io():
    """A range of its own before an op that keeps its input's scale (RESHAPE): the stock converter
    adds an int8 -> int8 QUANTIZE, which XNNPACK runs as an extra op and edgeasr refuses."""
    import tensorflow as tf

    from edgeasr.converters.integer_check import REQUANTIZING, float_ops

    def ranged(low, name):
        return keras.layers.Lambda(lambda t: tf.quantization.fake_quant_with_min_max_args(t, low, -low), name=name)

    inputs = keras.Input((8,))
    x = keras.layers.Dense(8, name="first")(ranged(-1.0, "in_range")(inputs))
    x = keras.layers.Reshape((2, 4), name="pairs")(ranged(-2.0, "first_range")(x))
    x = keras.layers.Dense(4, name="second")(keras.layers.Flatten()(ranged(-8.0, "pairs_range")(x)))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, ranged(-4.0, "out_range")(x)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    model_bytes = converter.convert()
    assert [op for op, _, _ in float_ops(model_bytes)] == ["QUANTIZE"]
    for io in ("int8", "float"):
        found = float_ops(model_bytes, ["first", "pairs", "second"], io=io)
        assert [(op, layer, reason) for op, layer, reason in found] == [("QUANTIZE", "first", REQUANTIZING)]
        with pytest.raises(EdgeasrError, match=r"QUANTIZE \(layer first: requantizing integer tensors"):
            check_fully_integer(model_bytes, ["first", "pairs", "second"], io=io)


def test_16bit_activation_policy_converts_to_a_16x8_model_with_parity(tmp_path):
    """Policy with 16-bit activations: int16 activations and I/O, int8 weights, int64 biases."""
    from edgeasr.converters.convert import convert_keras, uses_int16_activations
    from edgeasr.converters.ptq import post_training_quantize
    from edgeasr.eval.parity import parity_report
    from edgeasr.quant.policy import LayerPrecision, PrecisionPolicy

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 6, 1))
    x = keras.layers.ReLU(name="relu0")(keras.layers.Conv2D(8, (3, 3), padding="same", name="conv0")(inputs))
    x = keras.layers.ReLU(name="relu1")(keras.layers.Dense(12, name="hidden")(keras.layers.Flatten()(x)))
    model = keras.Model(inputs, keras.layers.Softmax(name="probs")(keras.layers.Dense(4, name="logits")(x)))
    features = np.random.default_rng(0).normal(size=(64, 8, 6, 1)).astype(np.float32)
    policy = PrecisionPolicy("w8a16", LayerPrecision(weight_bits=8, activation_bits=16))
    assert uses_int16_activations(policy)
    quantized = post_training_quantize(model, policy, features)
    model_bytes, report = convert_keras(quantized, features, int16_activations=True, float_model=model)
    assert report == []
    ops, tensors = fb.read_model(model_bytes)
    by_name = {t.name: t for t in tensors}
    assert {by_name[f"{layer}/weight"].type for layer in ("conv0", "hidden", "logits")} == {"INT8"}
    biases = [t for t in tensors if t.name.endswith("/bias")]   # zero Dense biases are left out
    assert "conv0/bias" in by_name and {t.type for t in biases} == {"INT64"}
    activations = [t for t in tensors if t.data is None]
    assert activations and {t.type for t in activations} == {"INT16"}
    path = tmp_path / "w8a16.tflite"
    path.write_bytes(model_bytes)
    scores = quantized.predict(features, verbose=0)
    parity = parity_report(path, scores, features, scores.argmax(-1), min_agreement=0.95)
    assert parity["passed"] and parity["litert_accuracy"] >= 0.95
    assert parity["xnnpack_vs_reference_agreement"] == 1.0
    # 16-bit activations: LiteRT within 0.005 of the float model (measured 0.0015; int8: 0.04).
    against_float = parity_report(path, model.predict(features, verbose=0), features, min_agreement=0.95)
    assert against_float["passed"] and against_float["output_max_abs_difference"] < 0.005
    # the same policy as a QAT graph (built through the API: a model file carries no policy) is refused
    from edgeasr.quant.qat import quantize_model

    quantize_model(model, policy).save(tmp_path / "w8a16_qat.keras")
    np.save(tmp_path / "features.npy", features)
    refused = CliRunner().invoke(main, ["convert", str(tmp_path / "w8a16_qat.keras"), "-o", str(tmp_path / "q.tflite"),
                                        "--calibration", str(tmp_path / "features.npy")])
    assert refused.exit_code == 1 and "a QAT model with 16-bit activations (quantize_input" in refused.output
    assert not (tmp_path / "q.tflite").exists()


def test_convert_warns_about_calibration_inputs_parity_cannot_judge(foreign, tmp_path):
    """Float, fake-quant and LiteRT models all see the same calibration inputs, so parity passes on
    inputs in other units or on a handful of rows; convert says so from the model's BatchNorm
    statistics and the row count."""
    from edgeasr.converters.sources import SCALE_WARNING_FACTOR, training_scale_ratio

    inputs = np.load(foreign / "inputs.npy")
    model = keras.models.load_model(foreign / "kws.keras")
    own = training_scale_ratio(model, inputs)[1]        # 0.4: four training steps barely moved its statistics
    assert 1 / SCALE_WARNING_FACTOR < own < SCALE_WARNING_FACTOR
    assert training_scale_ratio(model, inputs * 1e4)[1] == pytest.approx(
        1e4 * training_scale_ratio(model, inputs)[1], rel=0.01)
    np.save(tmp_path / "scaled.npy", inputs * 1e4)
    np.save(tmp_path / "few.npy", inputs[:5])
    plain = _convert(foreign, tmp_path / "plain.tflite")
    assert plain.exit_code == 0 and "Warning" not in plain.output, plain.output
    times = f"{own * 1e4:,.0f}"[:-2]                     # 4,0..: the ratio's leading digits
    for name, expected in (("scaled", (f"the inputs are about {times}", "times the scale the model was trained on")),
                           ("few", ("5 inputs to calibrate on", "give a few hundred"))):
        out = tmp_path / f"{name}.tflite"
        result = CliRunner().invoke(main, ["convert", str(foreign / "kws.keras"), "-o", str(out), "--calibration",
                                           str(tmp_path / f"{name}.npy")])
        assert result.exit_code == 0 and all(e in result.output for e in expected), result.output
        assert any(expected[0] in note for note in json.loads(out.with_suffix(".parity.json").read_text())["notes"])
        assert "Warnings:" in out.with_suffix(".parity.md").read_text()


def test_the_python_api_names_arguments_that_must_be_paths_and_takes_labels_as_a_list(foreign, tmp_path):
    from edgeasr.converters.convert import convert, validate
    from edgeasr.converters.sources import described_inputs

    model = keras.models.load_model(foreign / "kws.keras")
    with pytest.raises(EdgeasrError, match=r"source: a path is needed, not a Functional; save the model first"):
        convert(model, tmp_path / "m.tflite")
    with pytest.raises(EdgeasrError, match=r"calibration: a path is needed, not a ndarray; np.save\(\) the inputs"):
        convert(foreign / "kws.keras", tmp_path / "m.tflite", calibration=np.load(foreign / "inputs.npy"))
    with pytest.raises(EdgeasrError, match=r"data: a path is needed, not a ndarray"):
        validate(tmp_path / "m.tflite", foreign / "kws.keras", data=np.zeros(3))
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(EdgeasrError, match=r"output: a path is needed, not a NoneType"):
        convert(foreign / "kws.keras", None)
    assert described_inputs(model, labels=["a", "b", "c", "d"])[0] == ["a", "b", "c", "d"]
    assert described_inputs(model, labels=np.array(["a", "b", "c", "d"]))[0] == ["a", "b", "c", "d"]
    for few in (("a", "b"), []):
        with pytest.raises(EdgeasrError, match=f"--labels: {len(few)} names"):
            described_inputs(model, labels=few)
    with pytest.raises(EdgeasrError, match="--labels: b named more than once"):
        described_inputs(model, labels="a,b,c,b")


def test_the_float_reference_is_sized_as_a_trained_model(foreign):
    """An untrained model's zero biases and unit scales are stored once by the converter: its float
    file is smaller than the trained model's, and every "x smaller than float" would understate."""
    from edgeasr.converters.stock import float_tflite_bytes

    trained = keras.models.load_model(foreign / "kws.keras")
    untrained = build_model(ModelConfig(name="ds_cnn_s", num_classes=4, options={"channels": 16, "blocks": 1}))
    weights = [w.copy() for w in untrained.get_weights()]
    assert len(float_tflite(untrained)) < len(float_tflite(trained)) == float_tflite_bytes(untrained)
    assert float_tflite_bytes(trained) == len(float_tflite(trained))
    assert all(np.array_equal(a, b) for a, b in zip(weights, untrained.get_weights()))      # left untouched
