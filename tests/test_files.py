"""Atomic writes: whole files, no silent overwrite, ordinary permissions."""
import os
import stat

import pytest

from edgeasr.errors import EdgeasrError
from edgeasr.files import write_bytes_atomic


def test_atomic_write_has_the_permissions_of_a_plain_write(tmp_path):
    old_mask = os.umask(0o022)
    try:
        written = write_bytes_atomic(tmp_path / "model.tflite", b"\x01\x02")
        (tmp_path / "plain.bin").write_bytes(b"\x01\x02")
    finally:
        os.umask(old_mask)
    assert written.read_bytes() == b"\x01\x02"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_refuses_to_replace_without_force(tmp_path):
    target = write_bytes_atomic(tmp_path / "model.tflite", b"first")
    with pytest.raises(EdgeasrError, match="--force"):
        write_bytes_atomic(target, b"second", force=False)
    assert target.read_bytes() == b"first"


def test_progress_bars_redraw_on_a_terminal_and_seldom_in_a_log(monkeypatch):
    import io
    import sys

    from edgeasr.progress import LOG_INTERVAL_S, progress_bar

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(range(3), desc="work") as bar:
        assert bar.mininterval == LOG_INTERVAL_S >= 10 and list(bar) == [0, 1, 2]
    monkeypatch.setattr(log, "isatty", lambda: True)
    with progress_bar(range(3)) as bar:
        assert bar.mininterval < 1
    assert progress_bar(range(3), enabled=False).disable


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "model.tflite"
    write_bytes_atomic(path, b"one")
    path.chmod(0o444)
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o444
