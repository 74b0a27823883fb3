"""Side-by-side latency of LiteRT models on a shared, noisy machine.

Every model gets one interpreter per kernel set, and all of them are timed in interleaved rounds
(each round: `invokes` timed invokes of every model), so load from other processes falls on all
models alike; the figure is the median over all rounds.

NumPy and LiteRT only (like edgeasr.runtime), so it also runs in a bare virtualenv holding another
LiteRT release (scripts/litert_int4_speed.py).
"""
import time

import numpy as np

from edgeasr.runtime.litert import KERNELS, LiteRTModel, quantize

WARM_UP_INVOKES = 20


def interleaved_latency(paths, rounds: int, invokes: int, kernel_sets=tuple(KERNELS)) -> dict:
    """{(path, kernels): median ms of one invoke} over `rounds` rounds of `invokes` timed invokes of
    every model on every kernel set that can run it (LiteRT's reference kernels have no INT4
    convolution), single-threaded, on an all-zero input."""
    runners = {}
    for path in paths:
        for kernels in kernel_sets:
            model = LiteRTModel.on_kernels_if_loadable(path, kernels)[0]
            if model is None:
                continue
            example = quantize(np.zeros(model.input_detail["shape"][1:], np.float32), model.input_detail)
            for _ in range(WARM_UP_INVOKES):
                model.run_raw(example)
            runners[(path, kernels)] = (model, example)
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, (model, example) in runners.items():
            for _ in range(invokes):
                start = time.perf_counter()
                model.run_raw(example)
                times[key].append(time.perf_counter() - start)
    return {key: float(np.median(values) * 1000) for key, values in times.items()}
