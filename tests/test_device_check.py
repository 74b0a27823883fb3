"""scripts/rpi_kws.py (bundled from the runtime, no TensorFlow) and `edgeasr device-check` over ssh."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeasr.audio.io import write_wav
from edgeasr.device import SCRIPT, bundle_script
from edgeasr.runtime.streaming import DetectorConfig, KeywordSpotter
from tests.test_streaming import BLOCK_TF, BURSTS_S, bursts_audio, energy_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return energy_model(tmp_path_factory.mktemp("device") / "energy.tflite")


def test_script_is_the_current_bundle():
    assert bundle_script(SCRIPT.read_text()) == SCRIPT.read_text(), \
        "scripts/rpi_kws.py is stale: run `python -m edgeasr.device --bundle`"


def test_bundle_follows_the_runtime(tmp_path):
    """A change in a runtime module shows up in the regenerated script."""
    root = tmp_path / "repo"
    shutil.copytree(Path(SCRIPT).parents[1] / "edgeasr", root / "edgeasr")
    streaming = root / "edgeasr" / "runtime" / "streaming.py"
    streaming.write_text(streaming.read_text() + "\nMARKER_FOR_TEST = 1\n")
    regenerated = bundle_script(SCRIPT.read_text(), root)
    assert "MARKER_FOR_TEST = 1" in regenerated and "MARKER_FOR_TEST" not in SCRIPT.read_text()
    assert "\nfrom edgeasr" not in regenerated and "\nimport edgeasr" not in regenerated
    assert "def tf_log_mel" not in regenerated


def test_a_non_editable_install_is_told_it_needs_the_checkout(tmp_path, monkeypatch, model_path):
    import edgeasr.device as device
    from edgeasr.errors import EdgeasrError

    monkeypatch.setattr(device, "SCRIPT", tmp_path / "site-packages" / "scripts" / "rpi_kws.py")
    with pytest.raises(EdgeasrError, match="need the source checkout, installed with pip install -e"):
        device.main(["--bundle"])
    with pytest.raises(EdgeasrError, match="need the source checkout"):
        device.device_check(device.ChrootTransport(str(tmp_path)), model_path)


def run_script(args, **kwargs):
    """rpi_kws.py in a fresh interpreter with TensorFlow blocked and edgeasr not importable."""
    code = BLOCK_TF + ("sys.modules['edgeasr'] = None\n"
                       f"sys.argv = ['rpi_kws.py'] + {args!r}\n"
                       f"exec(compile(open({str(SCRIPT)!r}).read(), 'rpi_kws.py', 'exec'))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs)


def test_script_wav_and_stdin_without_tensorflow(model_path, tmp_path):
    audio = bursts_audio()
    wav = tmp_path / "a.wav"
    write_wav(wav, audio, 16000)
    from edgeasr.audio.io import load_audio

    expected = KeywordSpotter(model_path, DetectorConfig(default_threshold=0.8)).push(load_audio(wav, 16000))
    assert len(expected) == len(BURSTS_S)
    for args, stdin in ((["--wav", str(wav)], None), (["--stdin", "--chunk-ms", "7"], wav.read_bytes()[44:]),
                        (["--stdin"], wav.read_bytes())):          # a WAV on stdin: its header is not audio
        result = run_script([str(model_path), "--json", "--threshold", "0.8"] + args,
                            input=stdin.decode("latin-1") if stdin else None, encoding="latin-1")
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        detections = [(d["keyword"], round(d["time_s"], 3)) for d in lines if "keyword" in d]
        assert detections == [(d.keyword, round(d.time_s, 3)) for d in expected]
        summary = lines[-1]["summary"]
        assert summary["audio_s"] == pytest.approx(10.0) and 0 < summary["cpu_per_audio_s"] < 0.5
        assert summary["peak_rss_kib"] > 10_000


def test_script_says_what_is_wrong_with_its_inputs_in_one_line(model_path, tmp_path):
    import wave

    floats, empty, junk = tmp_path / "float.wav", tmp_path / "empty.wav", tmp_path / "junk.tflite"
    slow = tmp_path / "8k.wav"
    write_wav(slow, bursts_audio(seconds=2.0), 8000)
    with wave.open(str(empty), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
    floats.write_bytes(b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x03\0\x01\0\x80\x3e\0\0\0\xfa\0\0\x04\0\x20\0"
                       b"data\0\0\0\0")
    junk.write_bytes(b"not a model")
    cases = [([str(model_path), "--wav", str(tmp_path / "missing.wav")], "No such file"),
             ([str(model_path), "--wav", str(floats)], "not a 16-bit PCM WAV"),
             ([str(model_path), "--wav", str(empty)], "holds no audio"),
             ([str(junk), "--wav", str(empty)], "not a TFLite model"),
             ([str(model_path), "--wav", str(slow)], f"{slow}: 16-bit PCM at 8000 Hz; the model takes 16000 Hz"),
             ([str(tmp_path), "--wav", str(empty)], f"rpi_kws.py: {tmp_path}: Is a directory")]
    for args, message in cases:
        result = run_script(args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    above = run_script([str(model_path), "--wav", str(slow), "--threshold", "1.5"])
    assert above.returncode == 2 and "--threshold: must be from 0 to 1, not 1.5" in above.stderr
    for option, value in (("--hop-ms", "0"), ("--smoothing-ms", "-5"), ("--sharpening", "inf"),
                          ("--refractory-ms", "-1")):
        bad = run_script([str(model_path), "--wav", str(slow), option, value])
        assert bad.returncode == 2 and f"{option}: must be" in bad.stderr, (option, bad.stderr)


def test_script_refuses_the_models_thresholds_under_other_detector_settings(model_path, tmp_path):
    """eval-stream --model-thresholds refuses thresholds under settings they were not chosen with;
    rpi_kws.py ran them and fired where the chosen settings did not."""
    from edgeasr.converters.metadata import embed_metadata
    from edgeasr.runtime.metadata import read_metadata

    model = tmp_path / "chosen.tflite"
    metadata = {k: v for k, v in read_metadata(model_path).items() if k not in ("format", "edgeasr_version")}
    metadata["detector"] = {"hop_ms": 40.0, "smoothing_ms": 200.0, "refractory_ms": 1000.0, "sharpening": 2.0,
                            "default_threshold": 0.5, "thresholds": {"yes": 0.8}}
    model.write_bytes(embed_metadata(model_path.read_bytes(), metadata))
    write_wav(tmp_path / "a.wav", bursts_audio(), 16000)
    base = [str(model), "--wav", str(tmp_path / "a.wav"), "--json"]
    assert run_script(base).returncode == 0                                   # its own settings
    assert run_script(base + ["--hop-ms", "40", "--sharpening", "2"]).returncode == 0      # the same, given
    other = run_script(base + ["--hop-ms", "20", "--sharpening", "1"])
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "--hop-ms 20 (chosen with 40), --sharpening 1 (chosen with 2)" in other.stderr
    assert run_script(base + ["--hop-ms", "20", "--threshold", "0.8"]).returncode == 0   # the user's own threshold


def test_script_reads_the_wavs_the_library_reads(model_path, tmp_path):
    """An extensible header (Python < 3.12's wave refuses it), stereo, a streamed header's data size
    and a truncated last frame: the same detections as the library's reader, block by block."""
    import soundfile

    audio = bursts_audio()
    pcm = np.round(audio * 32767).astype(np.int16)
    expected = [(d.keyword, round(d.time_s, 3)) for d in
                KeywordSpotter(model_path, DetectorConfig(default_threshold=0.8)).push(pcm)]
    extensible, stereo, streamed, truncated = (tmp_path / f"{n}.wav" for n in ("x", "s", "st", "t"))
    soundfile.write(str(extensible), pcm, 16000, subtype="PCM_16", format="WAVEX")
    soundfile.write(str(stereo), np.stack([pcm, pcm], axis=1), 16000, subtype="PCM_16")
    write_wav(streamed, pcm, 16000)
    data = bytearray(streamed.read_bytes())
    data[40:44] = b"\xff\xff\xff\xff"
    streamed.write_bytes(bytes(data))
    truncated.write_bytes(bytes(data[:44]) + pcm.tobytes() + b"\x01")
    assert extensible.read_bytes()[20:22] == b"\xfe\xff"
    for wav in (extensible, stereo, streamed, truncated):
        result = run_script([str(model_path), "--json", "--threshold", "0.8", "--wav", str(wav)])
        assert result.returncode == 0, (wav.name, result.stderr)
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(d["keyword"], round(d["time_s"], 3)) for d in lines if "keyword" in d] == expected, wav.name
        assert lines[-1]["summary"]["audio_s"] == pytest.approx(10.0)


def test_script_warns_when_the_model_never_ran_and_names_missing_packages(model_path, tmp_path):
    short = tmp_path / "short.wav"
    write_wav(short, np.zeros(8000, np.float32), 16000)
    result = run_script([str(model_path), "--wav", str(short)])
    assert result.returncode == 0 and "shorter than the model's window" in result.stderr
    assert "CPU 0" in result.stderr and "(n/a)" in result.stderr          # no share of a core for no model run
    no_mic = run_script([str(model_path)], env={**os.environ, "PYTHONPATH": ""})
    assert no_mic.returncode == 1 and "pip install sounddevice" in no_mic.stderr, no_mic.stderr
    assert "Traceback" not in no_mic.stderr
    slow = run_script([str(model_path), "--wav", str(short), "--hop-ms", "15"])
    assert slow.returncode == 1 and "not a multiple of the frontend's 10 ms" in slow.stderr
    threads = run_script([str(model_path), "--threads", "0"])
    assert threads.returncode == 2 and "from 1 to 64" in threads.stderr


def test_script_parity_mode(model_path, tmp_path):
    from edgeasr.runtime.litert import LiteRTModel

    inputs = np.random.default_rng(0).integers(-128, 128, (5, 98, 40)).astype(np.int8)
    np.save(tmp_path / "in.npy", inputs)
    result = run_script([str(model_path), "--parity", str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--json"])
    assert result.returncode == 0, result.stderr
    model = LiteRTModel(model_path)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.stack([model.run_raw(x) for x in inputs]))
    builtin = np.load(tmp_path / "out.builtin.npy")
    assert builtin.shape == (5, 3)
    parity = json.loads(result.stdout.splitlines()[-1])["summary"]["parity"]
    assert parity["examples"] == 5 and parity["reference_kernels"] is None
    for kernels in ("builtin", "reference"):
        on_kernels = LiteRTModel(model_path, kernels=kernels)
        np.testing.assert_array_equal(np.load(tmp_path / f"out.{kernels}.npy"),
                                      np.stack([on_kernels.run_raw(x) for x in inputs]))
    with np.load(tmp_path / "out.layers.npz") as layers:
        names = sorted(layers.files)
        assert len(names) >= 3 and all(len(layers[name]) == 5 for name in names)       # one per op, per input
        np.testing.assert_array_equal(layers[names[-1]].reshape(5, -1), builtin)     # the last op is the output


def test_each_op_alone_reproduces_its_layer(model_path, tmp_path):
    """The single-op models device-check sends: each one, fed the layer before it, computes exactly
    what that op computed inside the whole model."""
    from edgeasr.device import OPS, write_op_models
    from edgeasr.runtime.litert import LiteRTModel, layer_outputs

    inputs = np.random.default_rng(1).integers(-128, 128, (4, 98, 40)).astype(np.int8)
    np.save(tmp_path / "inputs.npy", inputs)
    write_op_models(model_path, tmp_path)
    layers = layer_outputs(model_path, inputs)
    with np.load(tmp_path / OPS) as ops:
        names = sorted(key[:-len(".tflite")] for key in ops.files if key.endswith(".tflite"))
        assert len(names) >= 2 and set(names) <= set(layers)
        for name in names:
            alone = LiteRTModel(ops[f"{name}.tflite"].tobytes(), kernels="builtin")
            outputs = np.stack([alone.run_raw(x) for x in ops[f"{name}.input"]])
            np.testing.assert_array_equal(outputs, layers[name][:, 0])


def test_layer_differences_find_the_first_op_that_differs():
    from edgeasr.device import format_layers, layer_differences

    host = {"000_CONV_2D": np.zeros((2, 4), np.int8), "001_CONV_2D": np.zeros((2, 4), np.int8),
            "002_FULLY_CONNECTED": np.zeros((2, 3), np.int8)}
    device = {name: value.copy() for name, value in host.items()}
    device["001_CONV_2D"][0, 1] = -1
    device["002_FULLY_CONNECTED"][:, 0] = 3
    rows = layer_differences(device, host)
    assert [r["max_diff"] for r in rows] == [0, 1, 3]
    assert rows[1]["share_off"] == pytest.approx(1 / 8) and rows[2]["share_off"] == pytest.approx(2 / 6)
    line = format_layers({"layers": rows, "first_layer_off": rows[1]})[0]
    assert "first difference at op 001_CONV_2D (max 1, 12.50% of values)" in line
    assert "largest at 002_FULLY_CONNECTED (3)" in line


# ---- ssh on loopback ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_sshd(tmp_path):
    """An sshd on 127.0.0.1:<high port> with a temporary host key, accepting one temporary client key."""
    sshd, keygen = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh-keygen")
    if not (os.path.exists(sshd) and keygen and shutil.which("ssh") and shutil.which("scp")):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=apt_env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client"],
                           capture_output=True, env=apt_env)
        sshd, keygen = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh-keygen")
        if not (os.path.exists(sshd) and keygen):
            pytest.skip("no sshd/ssh-keygen, and openssh-server cannot be installed here (not root or no apt)")
    folder = tmp_path / "ssh"
    folder.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    port = _free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(folder / "sshd_config")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(50):
            if server.poll() is not None:
                pytest.skip(f"sshd could not start: {server.stdout.read()[-400:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            pytest.skip("sshd did not listen within 5 s")
        yield {"port": port, "identity": folder / "client_key", "known_hosts": folder / "known_hosts"}
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_device_check_over_ssh_loopback(loopback_sshd, model_path, tmp_path):
    from edgeasr.cli import main

    user = os.environ.get("USER") or __import__("getpass").getuser()
    write_wav(tmp_path / "bursts.wav", bursts_audio(), 16000)
    result = CliRunner().invoke(main, [
        "device-check", str(model_path), "--ssh", f"{user}@127.0.0.1", "--port", str(loopback_sshd["port"]),
        "--identity", str(loopback_sshd["identity"]),
        "--ssh-option", f"UserKnownHostsFile={loopback_sshd['known_hosts']}",
        "--python", sys.executable, "--wav", str(tmp_path / "bursts.wav"), "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["max_lsb"] == 0 and report["builtin_max_lsb"] == 0
    assert report["reference_max_lsb"] == 0 and "reference kernels (BUILTIN_REF): max diff 0 LSB" in result.output
    assert report["first_layer_off"] is None and report["layers"] and "every op's output identical" in result.output
    assert len(report["ops_alone"]) >= 4 and report["ops_alone_max_diff"] == 0     # >= 2 ops x 2 kernel sets
    assert len(report["detections_device"]) == len(BURSTS_S) and report["same_detections"]
    assert report["device"]["parity"]["examples"] == 64 and report["device"]["parity"]["invoke_ms_median"] > 0
    assert 0 < report["device"]["cpu_per_audio_s"] < 0.5 and report["device"]["peak_rss_kib"] > 10_000
    assert "PASSED" in result.output

    leftovers = set(Path("/tmp").glob("edgeasr_check.*"))
    args = ["device-check", str(model_path), "--ssh", f"{user}@127.0.0.1", "--port", str(loopback_sshd["port"]),
            "--identity", str(loopback_sshd["identity"]),
            "--ssh-option", f"UserKnownHostsFile={loopback_sshd['known_hosts']}"]
    no_python = CliRunner().invoke(main, [*args, "--python", "/no/such/python3", "--wav", str(tmp_path / "bursts.wav")])
    assert no_python.exit_code == 1 and "/no/such/python3" in no_python.output
    assert set(Path("/tmp").glob("edgeasr_check.*")) == leftovers          # the device's folder went too
    write_wav(tmp_path / "short.wav", bursts_audio()[:8000], 16000)
    short = CliRunner().invoke(main, [*args, "--python", sys.executable, "--wav", str(tmp_path / "short.wav")])
    assert short.exit_code == 1 and "shorter than the model's window" in short.output, short.output


def test_device_check_needs_one_transport(model_path):
    from edgeasr.cli import main

    result = CliRunner().invoke(main, ["device-check", str(model_path)])
    assert result.exit_code == 1 and "--ssh USER@HOST or --adb" in result.output


def test_adb_transport_without_adb_says_so(monkeypatch):
    from edgeasr import device
    from edgeasr.errors import EdgeasrError

    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    with pytest.raises(EdgeasrError, match="adb not found on PATH.*platform-tools"):
        device.AdbTransport()


def test_a_missing_command_is_a_plain_error():
    from edgeasr import device
    from edgeasr.errors import EdgeasrError

    with pytest.raises(EdgeasrError, match="edgeasr-no-such-command not found on PATH"):
        device._call(["edgeasr-no-such-command", "shell", "true"])


def test_device_check_refuses_a_speech_recognition_model(tmp_path):
    from edgeasr.cli import main

    asr_model = energy_model(tmp_path / "asr.tflite", extra_metadata={"asr": {"tokens": ["_", "a"], "subsampling": 4}})
    result = CliRunner().invoke(main, ["device-check", str(asr_model), "--ssh", "nobody@127.0.0.1", "--port", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "asr.tflite: a speech-recognition model; device-check runs keyword models" in result.output


def test_a_device_that_fell_back_to_the_builtin_kernels_says_so():
    from edgeasr.device import _default_kernels

    assert _default_kernels({"kernels": "xnnpack"}) == "XNNPACK" == _default_kernels({})
    fell_back = _default_kernels({"kernels": "builtin"})
    assert "on the builtin kernels: its LiteRT's XNNPACK cannot run the model" in fell_back


@pytest.mark.slow
def test_a_terminated_device_check_removes_its_folder_on_the_device(loopback_sshd, model_path, tmp_path):
    """SIGTERM stops device-check as Ctrl-C does: the clean-up that removes the device's folder runs."""
    user = os.environ.get("USER") or __import__("getpass").getuser()
    slow_python = tmp_path / "slow_python"
    slow_python.write_text("#!/bin/sh\nsleep 20\n")              # the device's python, stuck in the check
    slow_python.chmod(0o755)
    write_wav(tmp_path / "bursts.wav", bursts_audio(), 16000)
    before = set(Path("/tmp").glob("edgeasr_check.*"))
    check = subprocess.Popen(
        [sys.executable, "-m", "edgeasr.cli", "device-check", str(model_path), "--ssh", f"{user}@127.0.0.1",
         "--port", str(loopback_sshd["port"]), "--identity", str(loopback_sshd["identity"]),
         "--ssh-option", f"UserKnownHostsFile={loopback_sshd['known_hosts']}", "--python", str(slow_python),
         "--wav", str(tmp_path / "bursts.wav")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(600):                                      # until the device's folder holds the model
        made = set(Path("/tmp").glob("edgeasr_check.*/rpi_kws.py")) - {p / "rpi_kws.py" for p in before}
        if made or check.poll() is not None:
            break
        time.sleep(0.1)
    assert made, check.communicate()[0]
    time.sleep(1.0)                                          # the device's python is running
    check.terminate()
    output = check.communicate(timeout=60)[0]
    assert check.returncode != 0, output
    assert set(Path("/tmp").glob("edgeasr_check.*")) == before, output


def test_detections_found_on_one_side_only_are_listed_with_their_scores():
    """A 1-LSB difference can move a score across a threshold: the check names the detections that
    differ and their scores, so a borderline one is told from a real difference."""
    from edgeasr.device import compare, format_differing_detections

    outputs = {name: (np.array([[3, 4]], np.int8), np.array([[3, 5]], np.int8))
               for name in ("outputs.npy", "outputs.builtin.npy")}
    shared = {"time_s": 2.4, "keyword": "yes", "score": 0.93}
    on_device = {"summary": {}, "detections": [shared, {"time_s": 5.42, "keyword": "no", "score": 0.8004}]}
    here = {"summary": {}, "detections": [shared]}
    report = compare(outputs, on_device, here)
    assert not report["same_detections"] and not report["passed"] and report["max_lsb"] == 1
    assert report["detections_only_on"] == {"device": [on_device["detections"][1]], "here": []}
    assert format_differing_detections(report) == ["    only on the device: 5.42 s no (score 0.8004)"]
    assert format_differing_detections(compare(outputs, here, here)) == []
