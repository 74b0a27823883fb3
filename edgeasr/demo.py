"""`edgeasr demo`: the kit's best current path on built-in synthetic data, in one command.

synthesise keywords -> train DS-CNN-S (float) -> 4-bit tanh QAT from it -> LiteRT:
the float model as int8 (post-training) and the QAT model with INT4-packed weights, their
accuracy and size side by side. Each stage reuses what an interrupted demo left behind.

QAT runs in one stage by default: for DS-CNN-S, the paper's two stages (weights first, then
everything) of half the epochs each reached the same clip accuracy but a much higher false-reject
rate on a 4 h stream of validation voices (docs/stream_results.md, scripts/qat_results.py).
"""
import sys
import time
from dataclasses import replace
from pathlib import Path

from edgeasr.data.synth import SynthConfig, synthesize_kws_dataset
from edgeasr.errors import EdgeasrError
from edgeasr.files import read_json, write_json_atomic
from edgeasr.models.registry import ModelConfig
from edgeasr.quant.policy import preset
from edgeasr.train.fit import load_training_data, train
from edgeasr.train.run_dir import RunConfig, TrainConfig, epochs_per_stage

QAT_POLICY = "w4a8-tanh"


def run_demo(out_dir, model: str = "ds_cnn_s", epochs: int = 15, qat_epochs: int = 6, qat_stages: int = 1,
             speakers: int = 240, seed: int = 0) -> dict:
    from edgeasr.converters.convert import convert_run
    from edgeasr.converters.flatbuffer import weight_storage

    qat_epochs_per_stage = epochs_per_stage(qat_epochs, qat_stages)   # fail before any training
    out = Path(out_dir)
    started = time.perf_counter()
    data_dir = out / "data"
    synth = SynthConfig(speakers=speakers, seed=seed)
    if (data_dir / "synth_config.json").is_file():
        _check_same_data(data_dir, synth)
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise EdgeasrError(f"{data_dir}: not empty and not a demo's data (no synth_config.json); choose another --out")
    else:
        _stage(f"synthesising keyword clips into {data_dir}")
        synthesize_kws_dataset(data_dir, synth)

    float_config = RunConfig(dataset=str(data_dir), model=ModelConfig(name=model),
                             train=replace(TrainConfig(), epochs=epochs, seed=seed))
    data = load_training_data(float_config.with_model_shape())
    _stage(f"training {model} (float) for {epochs} epochs in {out / 'float'}")
    float_report = train(out / "float", float_config, data=data)

    qat_config = replace(float_config, policy=preset(QAT_POLICY),
                         train=replace(float_config.train, epochs=qat_epochs_per_stage, stages=qat_stages,
                                       learning_rate=1e-3, init_from=str(out / "float")))
    _stage(f"quantization-aware training ({QAT_POLICY}, {qat_stages} stage(s), {qat_epochs} epochs in all) "
           f"in {out / QAT_POLICY}")
    qat_report = train(out / QAT_POLICY, qat_config, data=data)

    rows = {}
    for name, run_dir, keras_report in (("int8", out / "float", float_report),
                                        (QAT_POLICY, out / QAT_POLICY, qat_report)):
        path = out / f"{model}_{name}.tflite"
        _stage(f"converting to fully-integer LiteRT: {path}")
        sizes = convert_run(run_dir, path, force=True, parity_examples=None)   # parity on the whole test split
        storage = weight_storage(path.read_bytes())
        rows[name] = {
            "keras_test_accuracy": keras_report["accuracy"],
            "litert_test_accuracy": sizes["parity"]["litert_accuracy"],
            "tflite_bytes": sizes["int8_bytes"],
            "int4_weight_share": sizes["int4_share"] or 0.0,             # of weight bytes, as convert says
            "int4_weight_tensors": storage.get("INT4", {}).get("tensors", 0),
            "weight_tensors": sum(entry["tensors"] for entry in storage.values()),
        }
    summary = {"model": model, "parameters": sizes["parameters"], "float_tflite_bytes": sizes["float_bytes"],
               "test_clips": float_report["examples"], "models": rows,
               "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "demo_summary.json", summary)
    print(format_summary(summary))
    return summary


def _check_same_data(data_dir: Path, synth: SynthConfig) -> None:
    """A demo folder is reused (each stage resumes); refuse one made with other data settings,
    whose data and finished runs would otherwise be shown as this command's."""
    stored = read_json(data_dir / "synth_config.json")["config"]
    changed = [f"--{name} {getattr(synth, name)} (it has {stored.get(name)})" for name in ("speakers", "seed")
               if stored.get(name) != getattr(synth, name)]
    if changed:
        raise EdgeasrError(f"{data_dir.parent} holds a demo made with other data: {', '.join(changed)}; "
                           f"choose another --out")


def format_summary(summary: dict) -> str:
    header = ("LiteRT model", "Keras acc.", "LiteRT acc.", "bytes", "vs float", "INT4 weight bytes")
    rows = [("float (reference)", "", "", f"{summary['float_tflite_bytes']:,}", "1.0x", "")]
    for name, row in summary["models"].items():
        rows.append((name, f"{row['keras_test_accuracy']:.2%}", f"{row['litert_test_accuracy']:.2%}",
                     f"{row['tflite_bytes']:,}", f"{summary['float_tflite_bytes'] / row['tflite_bytes']:.1f}x",
                     f"{row['int4_weight_share']:.0%} ({row['int4_weight_tensors']}/{row['weight_tensors']} "
                     f"tensors)"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{summary['model']}: {summary['parameters']:,} parameters, {summary['test_clips']} test clips "
             f"(held-out voices), {summary['seconds']:.0f} s"]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    return "\n".join(lines)


def _stage(message: str) -> None:
    print(f"\n== {message}", file=sys.stderr, flush=True)
