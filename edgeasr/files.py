"""Files are written whole or not at all: into a temporary sibling, then renamed into place."""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeasr.errors import EdgeasrError


@contextlib.contextmanager
def atomic_output(path: os.PathLike, force: bool = True):
    """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds.

    With force=False an existing `path` is an error rather than being replaced. A replaced file
    keeps its permissions; a new one gets those a plain open() would give it (0666 less the umask),
    not mkstemp's private 0600.
    """
    path = Path(path)
    if path.exists() and not force:
        raise EdgeasrError(f"{path} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, (path.stat().st_mode & 0o7777) if path.is_file() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)        # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_bytes_atomic(path: os.PathLike, data: bytes, force: bool = True) -> Path:
    with atomic_output(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: os.PathLike, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode())


def read_json(path: os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EdgeasrError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeasrError(f"{path}: not valid JSON ({exc})") from exc
