"""A train-asr run directory -> a fully-integer LiteRT Conformer-CTC with its vocabulary inside.

LiteRT takes a fixed input, so the model is rebuilt for a window of `window_frames` frames
(batch 1) and given the trained weights (a chunk size other than the trained one is the same
weights in a rebuilt model). A QAT run keeps its learned ranges; a float run is quantised
post-training (w8a8 unless told otherwise). Conversion is the kit's (edgeasr.converters:
stock converter, fully-integer check, INT4 packing, trimming); on top, the `edgeasr` metadata
carries what the transcriber needs: frontend, window, subsampling and the tokens (`asr`).

Parity is measured on test utterances: the share of output frames whose argmax (the greedy CTC
path) is the same in Keras and LiteRT, and the share of identical transcripts.

Calibration and parity utterances are spread over their manifest, not its first lines: a manifest
lists each speaker's utterances together, and the first 100 were three voices. Calibrated on
those, the LayerNorm variances of other voices overflowed their int8 range (94 LSB off in block 1);
spread over the training voices, the conversion's share of the 4-bit CER gap fell from +0.20 to
+0.13 points (docs/asr_results.md).
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from edgeasr.configs import to_dict
from edgeasr.converters.convert import convert_keras, model_to_convert, post_training_policy, refuse_policy_for_qat
from edgeasr.converters.int4 import int4_metadata, int4_share
from edgeasr.converters.metadata import embed_metadata, source_hash, tensor_io
from edgeasr.converters.sources import FEW_CALIBRATION_INPUTS, is_qat
from edgeasr.converters.stock import float_tflite_bytes
from edgeasr.data.asr_pipeline import load_asr_split, padded_features
from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic, write_json_atomic
from edgeasr.models.conformer import SUBSAMPLING, build_conformer
from edgeasr.quant.qat import adopt_weight_quantizers, quantize_model, transfer_weights
from edgeasr.runtime.ctc import greedy_decode
from edgeasr.runtime.litert import LiteRTModel
from edgeasr.train.asr_fit import AsrRunDir

WINDOW_FRAMES = 400        # 4.0 s of 10 ms frames
CALIBRATION_UTTERANCES = 100
PARITY_UTTERANCES = 50


def fixed_window_model(run: AsrRunDir, window_frames: int, chunk_frames: Optional[int] = None):
    """(float model, Keras model to convert) for a fixed window, with the run's trained weights."""
    config, tokenizer = run.read_config(), run.read_tokenizer()
    model_config = config.model if chunk_frames is None else replace(config.model, chunk_frames=int(chunk_frames))
    trained = run.load_model()
    float_model = build_conformer(model_config, tokenizer.vocab_size, time_frames=window_frames)
    if not is_qat(trained):
        transfer_weights(trained, float_model)
        return float_model, None
    quantized = quantize_model(float_model, config.policy, stage="full")
    transfer_weights(trained, quantized)
    adopt_weight_quantizers(trained, quantized)
    return float_model, quantized


def convert_asr_run(run_dir, output, policy=None, window_frames: int = WINDOW_FRAMES,
                    chunk_frames: Optional[int] = None, force: bool = False) -> dict:
    """Convert, check parity, write OUTPUT; returns sizes, INT4 share and parity."""
    output = Path(output)
    if output.exists() and not force:
        raise EdgeasrError(f"{output} already exists; pass --force to overwrite it")
    run = AsrRunDir(run_dir)
    config, tokenizer = run.read_config(), run.read_tokenizer()
    float_model, quantized = fixed_window_model(run, window_frames, chunk_frames)
    refuse_policy_for_qat(float_model if quantized is None else quantized, config, policy, run.path)
    trained = float_model if quantized is None else quantized
    if quantized is None:
        post_training_policy(trained, policy)            # refused before any audio is read
    train = load_asr_split(config.train_manifest, tokenizer, config.frontend, CALIBRATION_UTTERANCES,
                           spread=True)
    calibration = padded_features(train, range(len(train)), config.frontend, window_frames)
    if quantized is None:             # a QAT run keeps its learned ranges: calibration only feeds the converter
        _say(f"calibrating on {len(train)} training utterance{'s' if len(train) != 1 else ''}")
        if len(train) < FEW_CALIBRATION_INPUTS:
            print(f"warning: {len(train)} training utterances to calibrate on; ranges taken from so few clip "
                  f"other speech's activations (convert takes up to {CALIBRATION_UTTERANCES})", file=sys.stderr)
    _say("converting (a minute or two)")
    quantized, used_policy, mode = model_to_convert(trained, config, policy, calibration, run.path)
    model_bytes, int4_report = convert_keras(quantized, calibration)
    values = _metadata(config, tokenizer, used_policy, mode, run.path, model_bytes, int4_report, window_frames,
                       chunk_frames if chunk_frames is not None else config.model.chunk_frames)
    model_bytes = embed_metadata(model_bytes, values)
    _say(f"checking parity with Keras on up to {PARITY_UTTERANCES} test utterances")
    parity = _parity(quantized, model_bytes, config, tokenizer, window_frames)
    write_bytes_atomic(output, model_bytes, force=force)
    parity_json = output.with_name(output.stem + ".parity.json")
    write_json_atomic(parity_json, {"model": str(output), **parity})
    return {"path": str(output), "bytes": len(model_bytes), "float_bytes": float_tflite_bytes(float_model),
            "parameters": int(float_model.count_params()), "int4_share": int4_share(model_bytes),
            "policy": used_policy.name, "quantization": mode, "parity": parity, "parity_json": str(parity_json)}


def _say(step: str) -> None:
    print(f"convert: {step}", file=sys.stderr, flush=True)


def _metadata(config, tokenizer, policy, mode, source: Path, model_bytes: bytes, int4_report, window_frames: int,
              chunk_frames: int) -> dict:
    from edgeasr.runtime.litert import _interpreter_module

    interpreter = _interpreter_module().Interpreter(model_content=model_bytes)
    return {
        "labels": None,
        "frontend": to_dict(config.frontend),
        "window_ms": config.frontend.window_ms,
        "hop_ms": config.frontend.hop_ms,
        "input_frames": int(window_frames),
        "input": tensor_io(interpreter.get_input_details()[0]),
        "output": tensor_io(interpreter.get_output_details()[0]),
        "policy": policy.to_dict(),
        "quantization": mode,
        "io": "int8",
        "source": {"path": source.name, "sha256": source_hash(source)},
        "int4_weights": int4_metadata(int4_report),
        "asr": {"tokens": tokenizer.tokens, "tokenizer": tokenizer.kind, "subsampling": SUBSAMPLING,
                "chunk_frames": int(chunk_frames), "left_chunks": int(config.model.left_chunks),
                "model_size": config.model_size},
    }


def _parity(keras_model, model_bytes: bytes, config, tokenizer, window_frames: int) -> dict:
    """Frame-argmax and transcript agreement of Keras and LiteRT on test (else validation) utterances."""
    manifest = config.test_manifest or config.validation_manifest
    split = load_asr_split(manifest, tokenizer, config.frontend, PARITY_UTTERANCES, spread=True)
    features = padded_features(split, range(len(split)), config.frontend, window_frames)
    keras_logits = keras_model.predict(features, batch_size=16, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.tflite"
        path.write_bytes(model_bytes)
        litert_logits = LiteRTModel(path).predict(features)
    frames = np.argmax(keras_logits, -1) == np.argmax(litert_logits, -1)
    same_text = [greedy_decode(k) == greedy_decode(t) for k, t in zip(keras_logits, litert_logits)]
    return {"utterances": len(split), "frame_argmax_agreement": float(frames.mean()),
            "transcript_agreement": float(np.mean(same_text)),
            "max_abs_logit_difference": float(np.max(np.abs(keras_logits - litert_logits)))}
