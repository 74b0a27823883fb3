"""The whole ASR path on a tiny corpus: synth-asr -> train-asr (4-bit QAT) -> convert
-> transcribe and eval-asr, through the CLI. Checks that it runs and that the pieces agree,
not accuracy (a few steps of a tiny model learn little)."""
import json

import pytest
from click.testing import CliRunner

from edgeasr.cli import main


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_synth_train_convert_transcribe(tmp_path, monkeypatch):
    from edgeasr.converters import flatbuffer as fb
    from edgeasr.runtime.metadata import read_metadata
    from edgeasr.train.asr_fit import AsrRunDir

    data = tmp_path / "asr"
    _invoke("data", "synth-asr", data, "--speakers", 6, "--utterances", 4, "--max-seconds", 3, "--seed", 2)
    qat_run = tmp_path / "w4"
    output = _invoke("train-asr", data, "--run-dir", qat_run, "--size", "tiny", "--epochs", 1, "--batch-size", 8,
                     "--policy", "w4a8-tanh")
    assert "test WER" in output and (qat_run / "test_report.json").is_file()
    too_many = CliRunner().invoke(main, ["train-asr", str(data), "--run-dir", str(tmp_path / "w4bn"), "--size",
                                         "tiny", "--epochs", "1", "--policy", "w4a8-tanh", "--frozen-bn-epochs", "2"])
    assert too_many.exit_code != 0 and "--frozen-bn-epochs 2" in too_many.output
    assert not (tmp_path / "w4bn").exists()

    model = tmp_path / "tiny_w4.tflite"
    output = _invoke("convert", qat_run, "-o", model)
    assert "INT4 weight share" in output
    metadata = read_metadata(model)
    tokenizer = AsrRunDir(qat_run).read_tokenizer()
    assert metadata["asr"]["tokens"] == tokenizer.tokens and metadata["input_frames"] == 400
    assert metadata["quantization"] == "qat" and metadata["policy"]["name"] == "w4a8-tanh"
    storage = fb.weight_storage(model.read_bytes())
    assert storage["INT4"]["tensors"] > 0, storage
    ops, tensors = fb.read_model(model.read_bytes())           # the attention masks are 2-D constants, not weights
    masks = [t for t in tensors if t.data is not None and t.shape == (100, 100)]
    assert masks and sum(e["tensors"] for e in storage.values()) == sum(op in fb.WEIGHTED_OPS for op in ops)
    agreement = float(output.split("frame agreement ")[1].split("%")[0]) / 100
    assert agreement >= 0.9
    report = json.loads((tmp_path / "tiny_w4.parity.json").read_text())
    assert report["frame_argmax_agreement"] == pytest.approx(agreement, abs=5e-5) and report["utterances"] == 4
    ignored = CliRunner().invoke(main, ["convert", str(qat_run), "-o", str(tmp_path / "x.tflite"), "--io", "float",
                                        "--min-agreement", "1"])
    assert ignored.exit_code == 1 and "--io, --min-agreement: not for a speech-recognition run" in ignored.output
    other = CliRunner().invoke(main, ["convert", str(qat_run), "-o", str(tmp_path / "x.tflite"), "--policy", "w8a8"])
    assert other.exit_code == 1 and "convert it without --policy" in other.output
    assert "calibrating" not in other.output                        # refused before any work
    checked = CliRunner().invoke(main, ["validate", str(model), "--source", str(qat_run)])
    assert checked.exit_code == 1 and "eval-asr" in checked.output and "Traceback" not in checked.output

    wavs = sorted((data / "audio").rglob("*.wav"))[:2]
    lines = _invoke("transcribe", model, *wavs, "--beam", 4).strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(w) for w in wavs]
    import numpy as np
    import soundfile

    from edgeasr.runtime.asr import Transcriber

    transcriber, pcm = Transcriber(model), soundfile.read(wavs[0], dtype="int16")[0]
    np.testing.assert_allclose(transcriber.scores(pcm), transcriber.scores(pcm / 32768.0), atol=1e-5)
    # long audio: window after window; a tail under one output frame (4 frames) is not run on padding
    long = np.resize(pcm, 64000 + 480 + 3 * 160)                       # the second window holds 4 frames
    assert len(transcriber.scores(long)) == 101 and len(transcriber.scores(long[:-160])) == 100
    assert len(transcriber.scores(long[:transcriber.window_samples])) == 100
    assert transcriber.scores(pcm[:640]).shape == (0, len(transcriber.tokens)) and transcriber.transcribe(pcm[:1]) == ""
    with pytest.raises(ValueError, match="one channel"):
        transcriber.scores(np.stack([pcm, pcm], axis=1))
    with pytest.raises(ValueError, match="no samples"):
        transcriber.scores(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="peaks at .*pass the int16 array"):
        transcriber.scores(pcm.astype(np.float32))                      # int16 values as floats
    from edgeasr.data.asr_pipeline import load_asr_split
    from edgeasr.data.manifest import Utterance, write_manifest

    one = write_manifest(tmp_path / "one.jsonl", [Utterance(wavs[0], "x", 1.0)])
    loaded = load_asr_split(one, None, transcriber.frontend).waves[0]      # what eval-asr transcribes
    assert transcriber.transcribe_file(wavs[0]) == transcriber.transcribe(loaded.astype(np.float32) / 32768.0)

    other = CliRunner().invoke(main, ["train-asr", str(data), "--run-dir", str(tmp_path / "xs"), "--init-from",
                                      str(qat_run), "--epochs", "1"])
    assert other.exit_code == 1 and "--size tiny (this run: xs)" in other.output, other.output
    assert not (tmp_path / "xs").exists()

    float_run = tmp_path / "float"
    _invoke("train-asr", data, "--run-dir", float_run, "--size", "tiny", "--epochs", 1, "--batch-size", 8)
    unknown = CliRunner().invoke(main, ["convert", str(float_run), "-o", str(tmp_path / "f.tflite"), "--policy",
                                        "w4a8-tanh-dw8"])
    assert unknown.exit_code == 1 and "policy 'w4a8-tanh-dw8'" in unknown.output, unknown.output
    assert "calibrating" not in unknown.output
    import edgeasr.converters.asr as asr_converter

    def stop(*args):
        raise RuntimeError("stopped after calibration data loaded")

    monkeypatch.setattr(asr_converter, "model_to_convert", stop)
    few = CliRunner().invoke(main, ["convert", str(float_run), "-o", str(tmp_path / "f.tflite")])
    trained_on = len((data / "train.jsonl").read_text().splitlines())
    assert f"calibrating on {trained_on} training utterances" in few.output
    assert f"warning: {trained_on} training utterances to calibrate on" in few.output
    monkeypatch.undo()

    report_path = tmp_path / "eval.json"
    _invoke("eval-asr", qat_run, model, "--manifest", data / "test.jsonl", "--json", report_path,
            "--markdown", tmp_path / "eval.md")
    keras_report, litert_report = json.loads(report_path.read_text())
    assert keras_report["utterances"] == litert_report["utterances"] == 4
    tested = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    assert [t["audio"] for t in litert_report["transcripts"]] == [str(data / u["audio"]) for u in tested]
    assert sum(t["edits"] for t in litert_report["transcripts"]) == sum(e for e, _ in litert_report["character_edits"])
    assert f"| {model} | litert | 4 |" in (tmp_path / "eval.md").read_text()
    assert litert_report["rtf"] > 0 and litert_report["bytes"] == model.stat().st_size
    assert 0 <= litert_report["cer"] and 0 <= keras_report["cer"]

    # Keras fed as the file is: the same windows (a long clip too), logits that differ by the integer arithmetic
    from edgeasr.converters.asr import fixed_window_model
    from edgeasr.eval.asr import evaluate_model, windowed_keras_scores

    _, keras_model = fixed_window_model(AsrRunDir(qat_run), transcriber.window_frames)
    keras_scores = windowed_keras_scores(keras_model, transcriber, [pcm, long])
    assert [s.shape for s in keras_scores] == [transcriber.scores(pcm).shape, (101, len(transcriber.tokens))]
    agreement = np.mean(np.argmax(keras_scores[1], -1) == np.argmax(transcriber.scores(long), -1))
    assert agreement >= 0.9, agreement
    fed = evaluate_model(qat_run, data / "test.jsonl", windows_of=model)
    assert fed["kind"] == "keras w4a8-tanh (tiny_w4.tflite's windows)" and fed["utterances"] == 4
