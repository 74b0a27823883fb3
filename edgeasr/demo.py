"""`edgeasr demo`: the whole path on built-in synthetic data, end to end, in one command.

synthesise keywords -> train DS-CNN-S -> int8 LiteRT -> accuracy of Keras and LiteRT side by side.
Each stage reuses what an earlier, interrupted demo left in the output folder.
"""
import sys
import time
from dataclasses import replace
from pathlib import Path

from edgeasr.data.pipeline import features_of
from edgeasr.data.synth import SynthConfig, synthesize_kws_dataset
from edgeasr.eval.litert_accuracy import litert_report
from edgeasr.files import write_json_atomic
from edgeasr.models.registry import ModelConfig
from edgeasr.train.fit import load_training_data, train
from edgeasr.train.run_dir import RunConfig, TrainConfig


def run_demo(out_dir, model: str = "ds_cnn_s", epochs: int = 15, speakers: int = 240, seed: int = 0) -> dict:
    from edgeasr.converters.convert import convert_run

    out = Path(out_dir)
    started = time.perf_counter()
    data_dir = out / "data"
    if not (data_dir / "synth_config.json").is_file():
        _stage(f"synthesising keyword clips into {data_dir}")
        synthesize_kws_dataset(data_dir, SynthConfig(speakers=speakers, seed=seed), overwrite=True)

    config = RunConfig(dataset=str(data_dir), model=ModelConfig(name=model),
                       train=replace(TrainConfig(), epochs=epochs, seed=seed))
    _stage(f"training {model} for {epochs} epochs in {out / 'run'}")
    data = load_training_data(config.with_model_shape())
    keras_report = train(out / "run", config, data=data)

    tflite_path = out / f"{model}_int8.tflite"
    _stage(f"converting to fully-integer LiteRT: {tflite_path}")
    sizes = convert_run(out / "run", tflite_path, force=True)
    test_features = features_of(data.test.waves, config.frontend)
    lite_report = litert_report(tflite_path, test_features, data.test.labels, config.data.labels)

    summary = {
        "model": model,
        "parameters": sizes["parameters"],
        "keras_test_accuracy": keras_report["accuracy"],
        "litert_int8_test_accuracy": lite_report["accuracy"],
        "test_clips": lite_report["examples"],
        "float_tflite_bytes": sizes["float_bytes"],
        "int8_tflite_bytes": sizes["int8_bytes"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "demo_summary.json", summary)
    print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    rows = [
        ("model", summary["model"]),
        ("parameters", f"{summary['parameters']:,}"),
        ("Keras float accuracy (test)", f"{summary['keras_test_accuracy']:.2%}"),
        ("LiteRT int8 accuracy (test)", f"{summary['litert_int8_test_accuracy']:.2%}"),
        ("test clips", summary["test_clips"]),
        ("float .tflite", f"{summary['float_tflite_bytes']:,} bytes"),
        ("int8 .tflite", f"{summary['int8_tflite_bytes']:,} bytes "
                         f"({summary['float_tflite_bytes'] / summary['int8_tflite_bytes']:.1f}x smaller)"),
        ("total time", f"{summary['seconds']:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _stage(message: str) -> None:
    print(f"\n== {message}", file=sys.stderr, flush=True)
