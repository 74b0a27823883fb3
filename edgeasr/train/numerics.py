"""What decides a training run's floating-point results besides its configuration and seed.

On one machine a run is bit-identical when repeated. Across machines it need not be: TensorFlow
runs oneDNN's kernels or Eigen's (it decides by the CPU as well as by TF_ENABLE_ONEDNN_OPTS), the
oneDNN kernels are picked at run time by the CPU's instruction set, and each class, and each
intra-op thread count, sums in its own order. Measured on DS-CNN-S (docs/training_numerics.md):
AVX-512 (with or without AMX), AVX2, oneDNN switched off (TF_ENABLE_ONEDNN_OPTS=0) and 2 or 4
threads each train different weights from the first epoch on, float and QAT alike. Three machines
of the same class and threads reproduced one another's float runs, but the QAT runs agreed only
between an AMD EPYC and an earlier machine, not with an Intel Xeon. So the CPU model is recorded
too, and a fingerprint of TensorFlow's float32 rsqrt, the suspect: x86 wheels compute it with
VRSQRTPS, an approximation whose bits each CPU design chooses, and one Newton step (not correctly
rounded), and QAT's folded BatchNorm (edgeasr.quant.qat) used it where Keras' fused BatchNorm
does not (docs/toolchain_facts.md). It now computes 1/sqrt in float64 (`exact_rsqrt`), and runs
record that too ("qat_rsqrt"), so that runs trained before the change read as such.
Runs record these facts so that a result can say where it reproduces.
"""
import hashlib
import os
import platform
from collections import Counter

import numpy as np
import tensorflow as tf

from edgeasr.quant.qat import BATCH_NORM_RSQRT

# oneDNN's x86 instruction-set classes, narrowest first, with the /proc/cpuinfo flags each needs.
# The finer classes above AVX-512 (VNNI, BF16, AMX) change int8 and bf16 kernels, not fp32
# training: ONEDNN_MAX_CPU_ISA=AVX512_CORE trained the same weights as an AMX CPU unrestricted.
_X86_ISA_CLASSES = (
    ("sse41", {"sse4_1"}),
    ("avx", {"avx"}),
    ("avx2", {"avx2", "fma"}),
    ("avx512_core", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
)
_OFF_VALUES = {"0", "false", "off", "no"}


def training_numerics() -> dict:
    """{tensorflow, kernels, threads, cpu, rsqrt, qat_rsqrt}: TensorFlow's version, the kernel family
    fp32 ops run on (`onednn-<isa class>`, or `eigen` when oneDNN is off), the intra-op threads, the
    CPU model, `rsqrt_fingerprint()` and how QAT's folded BatchNorm computes 1/sqrt."""
    from_environment = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()
    threads = (tf.config.threading.get_intra_op_parallelism_threads()
               or (int(from_environment) if from_environment.isdigit() else 0) or _schedulable_cpus())
    return {"tensorflow": tf.__version__, "kernels": _kernel_family(), "threads": threads, "cpu": _cpu_model(),
            "rsqrt": rsqrt_fingerprint(), "qat_rsqrt": BATCH_NORM_RSQRT}


def rsqrt_fingerprint() -> str:
    """The first 8 hex digits of a SHA-1 of tf.math.rsqrt's float32 results on every 16th float32 in
    [1, 4) (2**21 inputs, a whole number of SIMD packets): equal on two machines when their rsqrt
    approximations agree bit for bit on those inputs."""
    return hashlib.sha1(tf.math.rsqrt(floats_in_one_to_four(every=16)).numpy().tobytes()).hexdigest()[:8]


def floats_in_one_to_four(every: int) -> np.ndarray:
    """Every `every`-th float32 in [1, 4), in order: the two binades where rsqrt's error pattern repeats."""
    ones_bits = np.float32(1.0).view(np.uint32)
    return (ones_bits + np.arange(0, 2 << 23, every, dtype=np.uint32)).view(np.float32)


def describe(numerics: dict) -> str:
    cpu = f", {numerics['cpu']}" if numerics.get("cpu") else ""
    rsqrt = f", rsqrt {numerics['rsqrt']}" if numerics.get("rsqrt") else ""
    qat_rsqrt = f", QAT rsqrt {numerics['qat_rsqrt']}" if numerics.get("qat_rsqrt") else ""
    return (f"TensorFlow {numerics['tensorflow']}, {numerics['kernels']} kernels, {numerics['threads']} threads"
            f"{cpu}{rsqrt}{qat_rsqrt}")


def describe_runs(per_run: list) -> str:
    """How many runs were trained under which numerics, from each run's RunDir.read_numerics() (an
    empty list: trained before runs recorded them), e.g. "TensorFlow 2.21.0, ...: 3 runs; ...: 1 run"."""
    def of_run(recorded: list) -> str:
        return " then ".join(describe(n) for n in recorded) or "not recorded (trained before runs recorded them)"
    counts = Counter(of_run(recorded or []) for recorded in per_run)
    return "; ".join(f"{text}: {n} run{'s' if n != 1 else ''}" for text, n in counts.items())


def _schedulable_cpus() -> int:
    """TensorFlow's default intra-op thread count: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _kernel_family() -> str:
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in _OFF_VALUES:
        return "eigen"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"{machine}-default"
    if not _tensorflow_uses_onednn():
        return "eigen"
    isa = _x86_isa_class(_cpu_flags())
    return f"onednn-{_capped(isa, os.environ.get('ONEDNN_MAX_CPU_ISA', ''))}"


def _tensorflow_uses_onednn() -> bool:
    """TensorFlow's own answer: besides TF_ENABLE_ONEDNN_OPTS=0, it leaves oneDNN off by default on
    some x86 CPUs (under QEMU's AVX2 `-cpu max` it ran Eigen's kernels, docs/toolchain_facts.md)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _cpu_flags() -> set:
    return set(_cpuinfo_field("flags").split())


def _cpu_model() -> str:
    return " ".join(_cpuinfo_field("model name").split()) or platform.processor() or platform.machine()


def _cpuinfo_field(name: str) -> str:
    """The first CPU's `name` line of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def _x86_isa_class(flags: set) -> str:
    widest = "unknown"
    for name, needed in _X86_ISA_CLASSES:
        if needed <= flags:
            widest = name
    return widest


def _capped(isa: str, max_isa: str) -> str:
    """`isa`, narrowed to ONEDNN_MAX_CPU_ISA's class when that names a narrower one."""
    order = [name for name, _ in _X86_ISA_CLASSES]
    cap = max_isa.strip().lower()
    cap = "avx512_core" if cap.startswith("avx10") else cap     # AVX10 has AVX-512's vectors
    if isa not in order or not cap or cap == "all":
        return isa
    capped = [name for name in order if cap.startswith(name)]
    return min(isa, max(capped, key=order.index), key=order.index) if capped else isa
