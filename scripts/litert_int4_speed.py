#!/usr/bin/env python3
"""Issue 4's speed target across LiteRT releases: is the 4-bit DS-CNN-S still slower than its 8-bit
twin under XNNPACK when the runtime is newer? (The stateless FFN, which meets the target, is the
contrast: its FULLY_CONNECTED layers see one row per invoke, DS-CNN-S's pointwise ones 125.)

docs/convert_results.md measures the 4-bit DS-CNN-S 3-4% slower than its 8-bit twin with LiteRT 2.3
and traces it to XNNPACK's INT4 fully-connected GEMMs (the only kernels that differ between the two
files). Here each model is converted twice with `edgeasr convert`'s defaults, w8a8 and w4a8-tanh,
post-training from one float model with its initial weights (the kernels do the same work whatever
the weights' values; docs/convert_results.md has the QAT files' ratio, 1.033-1.042x), and both files, plus a second
copy of the 8-bit one to show the noise, are timed single-threaded (edgeasr.eval.latency) under each
Python interpreter of --python, each with the LiteRT release installed there. Such an interpreter
needs only numpy and a LiteRT wheel, e.g. the nightly:

    python3 -m venv ../litert-nightly && ../litert-nightly/bin/pip install ai-edge-litert-nightly numpy
    python scripts/litert_int4_speed.py --python .venv/bin/python ../litert-nightly/bin/python

Writes docs/litert_int4_speed.md and docs/litert_int4_speed.json.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("ds_cnn_s", "ffn_stateless")
POLICIES = ("w8a8", "w4a8-tanh")
KERNEL_SETS = ("xnnpack", "builtin")


def main(argv=None):
    args = parse_args(argv)
    if args.time:
        return print(json.dumps(time_here(args.time, args.rounds, args.invokes)))
    started = time.perf_counter()
    files = convert_twins(args.work)
    runtimes = [time_with(python, files, args.rounds, args.invokes) for python in args.python]
    summary = {"machine": f"{platform.machine()}, {platform.system()}", "rounds": args.rounds,
               "invokes": args.invokes, "files": {k: Path(v).name for k, v in files.items()},
               "bytes": {k: Path(v).stat().st_size for k, v in files.items()}, "runtimes": runtimes,
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    from edgeasr.files import write_bytes_atomic, write_json_atomic

    args.docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.docs / "litert_int4_speed.json", summary)
    write_bytes_atomic(args.docs / "litert_int4_speed.md", markdown(summary).encode())
    print(markdown(summary))


def convert_twins(work: Path) -> dict:
    """{"MODEL POLICY": path} of every model under both policies, and "MODEL w8a8 again": a copy."""
    import edgeasr  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import numpy as np

    from edgeasr.converters.convert import convert
    from edgeasr.models.registry import ModelConfig, build_model

    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for model in MODELS:
        config = ModelConfig(name=model)
        source, calibration = work / f"{model}_float.keras", work / f"{model}_calibration.npy"
        build_model(config).save(source)
        np.save(calibration, np.random.default_rng(0).normal(size=(64, *config.input_shape)).astype(np.float32))
        for policy in POLICIES:
            files[f"{model} {policy}"] = work / f"{model}_{policy}.tflite"
            convert(source, files[f"{model} {policy}"], policy=policy, calibration=calibration, force=True,
                    parity_examples=8)
        files[f"{model} w8a8 again"] = work / f"{model}_w8a8_again.tflite"
        files[f"{model} w8a8 again"].write_bytes(files[f"{model} w8a8"].read_bytes())
    return {name: str(path) for name, path in files.items()}


def time_with(python: str, files: dict, rounds: int, invokes: int) -> dict:
    """time_here() run by another interpreter (its own LiteRT), on the repository's runtime code."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [python, __file__, "--time", json.dumps(files), "--rounds", str(rounds), "--invokes", str(invokes)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"{python}: timing failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_here(files_json: str, rounds: int, invokes: int) -> dict:
    """{"litert": release, "ms": {kernels: {name: median ms}}} with this interpreter's LiteRT."""
    from importlib.metadata import PackageNotFoundError, version

    from edgeasr.eval.latency import interleaved_latency

    files = json.loads(files_json)
    medians = interleaved_latency(list(files.values()), rounds, invokes, KERNEL_SETS)
    release = None
    for package in ("ai-edge-litert", "ai-edge-litert-nightly"):
        try:
            release = f"{package} {version(package)}"
            break
        except PackageNotFoundError:
            continue
    return {"litert": release,
            "ms": {kernels: {name: medians.get((path, kernels)) for name, path in files.items()}
                   for kernels in KERNEL_SETS}}


def markdown(summary: dict) -> str:
    lines = ["# 4-bit models against their 8-bit twins, per LiteRT release (scripts/litert_int4_speed.py)", "",
             f"Produced by `python scripts/litert_int4_speed.py` ({summary['minutes']:g} min) on "
             f"{summary['machine']}. Each model converted with `edgeasr convert` defaults under w8a8 and w4a8-tanh "
             "(INT4 FULLY_CONNECTED weights: DS-CNN-S's pointwise layers and logits, every FFN layer), "
             "post-training from one untrained float model. One thread; "
             f"median of {summary['rounds']} interleaved rounds x {summary['invokes']} invokes; all files of one "
             "release timed side by side in one process. `8-bit again`: the same 8-bit file through a second "
             "interpreter, the noise of the comparison.", "",
             "| model | bytes 8-bit / 4-bit | LiteRT | kernels | 8-bit ms | 8-bit again ms | 4-bit ms | 4-bit / 8-bit "
             "| 4-bit no slower |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for model in MODELS:
        sizes = f"{summary['bytes'][f'{model} w8a8']:,} / {summary['bytes'][f'{model} w4a8-tanh']:,}"
        for runtime in summary["runtimes"]:
            for kernels, ms in runtime["ms"].items():
                eight, again, four = (ms[f"{model} {name}"] for name in ("w8a8", "w8a8 again", "w4a8-tanh"))
                ratio, noise = four / eight, abs(again / eight - 1)
                lines.append(f"| {model} | {sizes} | {runtime['litert']} | {kernels} | {eight:.4f} | {again:.4f} | "
                             f"{four:.4f} | {ratio:.3f}x | {'yes' if ratio <= 1 + noise else 'no'} |")
    lines += ["", "4-bit no slower: the ratio is at most 1 plus the same-file noise. Issue 4's target is the XNNPACK "
              "row of the release the kit installs (setup.cfg)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", nargs="+", default=[sys.executable],
                        help="interpreters to time with, each with its own LiteRT (default: this one)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "litert_int4_speed",
                        help="folder of the float models and converted .tflite files "
                             "(default: build/litert_int4_speed)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="folder litert_int4_speed.md and litert_int4_speed.json are written to (default: docs)")
    parser.add_argument("--rounds", type=int, default=40,
                        help="interleaved timing rounds per interpreter (default: %(default)s)")
    parser.add_argument("--invokes", type=int, default=50,
                        help="timed invokes per file, kernel set and round (default: %(default)s)")
    parser.add_argument("--time", help=argparse.SUPPRESS)       # internal: the timing child's files (JSON)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
