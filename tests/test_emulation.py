"""Emulated Raspberry Pi: scripts/emulate_aarch64.sh in an arm64 Debian rootfs under qemu-user.

Runs when root (debootstrap, chroot, binfmt_misc) and the emulation can be set up; the first run
builds the rootfs into build/aarch64 (minutes), later runs reuse it. Skips with the reason otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_streaming import BURSTS_S, bursts_audio, energy_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "emulate_aarch64.sh"


def emulation_unavailable():
    """Why the emulation cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, binfmt_misc)"
    if not shutil.which("apt-get") and not (shutil.which("debootstrap") and os.path.exists("/usr/bin/qemu-aarch64-static")):
        return "no debootstrap/qemu-user-static and no apt-get to install them"
    if not os.path.isdir("/proc/sys/fs/binfmt_misc"):
        return "the kernel has no binfmt_misc (needed to run arm64 binaries through qemu)"
    return None


@pytest.mark.emulation
@pytest.mark.slow
def test_aarch64_matches_x86(tmp_path):
    reason = emulation_unavailable()
    if reason:
        pytest.skip(f"aarch64 emulation: {reason}")
    from edgeasr.audio.io import write_wav

    model = energy_model(tmp_path / "energy.tflite")
    wav = tmp_path / "bursts.wav"
    write_wav(wav, bursts_audio(), 16000)
    result = subprocess.run([str(SCRIPT), str(model), str(wav)], cwd=REPO, capture_output=True, text=True,
                            timeout=1800, env={**os.environ, "PYTHON": sys.executable})
    if result.returncode == 77:
        pytest.skip(f"aarch64 emulation: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["passed"] and report["max_lsb"] <= 1 and report["builtin_max_lsb"] <= 1
    assert report["same_detections"]
    assert report["reference_max_lsb"] == 0          # the reference kernels compute the same on both CPUs
    device, host = report["device"], report["host"]
    assert device["audio_s"] == pytest.approx(10.0) and device["parity"]["examples"] == 64
    assert device["cpu_per_audio_s"] > host["cpu_per_audio_s"]      # emulated arm64 is slower than native
    assert "PASSED" in result.stdout and len(BURSTS_S) == 3
