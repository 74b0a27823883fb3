"""`pip install .` (not only editable installs) must ship every package, converters included."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_ships_every_package(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, cwd=tmp_path,
    )
    source_packages = {p.parent.relative_to(REPO / "edgeasr") for p in (REPO / "edgeasr").rglob("__init__.py")}
    for package in source_packages:
        assert (target / "edgeasr" / package / "__init__.py").is_file(), f"edgeasr/{package} not installed"
    assert (target / "edgeasr" / "converters" / "convert.py").is_file()
    assert not (target / "converters").exists(), "converters must live under edgeasr, not at the top level"
    assert (target / "bin" / "edgeasr").is_file()
