"""Embedding the `edgeasr` JSON metadata entry into a .tflite (read back by edgeasr.runtime.metadata)."""
import hashlib
import json
from pathlib import Path

import numpy as np

import edgeasr
from edgeasr.converters import flatbuffer as fb
from edgeasr.runtime.metadata import FORMAT, METADATA_NAME


def embed_metadata(model_bytes: bytes, values: dict, name: str = METADATA_NAME) -> bytes:
    """The model with `values` as JSON in the metadata entry `name` (replacing one already there).

    Keys are sorted and no timestamps are written, so the same values give the same bytes.
    """
    model = fb.load(model_bytes)
    payload = json.dumps({"format": FORMAT, "edgeasr_version": edgeasr.__version__, **values},
                         sort_keys=True, separators=(",", ":")).encode()
    buffer = fb.schema().BufferT()
    buffer.data = np.frombuffer(payload, np.uint8).copy()
    entries = [m for m in (model.metadata or []) if _name(m) == name]
    if entries:                 # rewritten in its own buffer: writing the same values again gives the same file
        model.buffers[entries[0].buffer] = buffer
        for duplicate in entries[1:]:
            model.buffers[duplicate.buffer].data = None
        model.metadata = [m for m in model.metadata if _name(m) != name or m is entries[0]]
        return fb.dump(model)
    model.buffers.append(buffer)
    entry = fb.schema().MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    return fb.dump(model)


def _name(entry) -> str:
    return entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)


def tensor_io(detail: dict) -> dict:
    """An interpreter input/output detail as plain JSON: dtype, shape, scale, zero point."""
    scale, zero_point = detail["quantization"]
    return {"dtype": detail["dtype"].__name__, "shape": [int(d) for d in detail["shape"]],
            "scale": float(scale), "zero_point": int(zero_point)}


def calibration_digest(features) -> str:
    """Short sha256 of the calibration inputs as float32: `validate` checks it rebuilt the same ones."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(features, np.float32).tobytes()).hexdigest()[:16]


# The files of a run directory that define the model it converts to. Everything else there is a
# by-product (history, test report, plots, checkpoints) or the user's own (a .tflite written next to it).
RUN_MODEL_FILES = ("config.json", "model.keras", "tokenizer.json")


def source_hash(path) -> str:
    """sha256 of a file, or of a directory's files (relative path + bytes, in sorted order): for an
    edgeasr run directory only its RUN_MODEL_FILES, so a report or model written into it later does not
    make every model converted from it look stale."""
    return _files_hash(Path(path), _model_files(Path(path)))


def legacy_source_hash(path) -> str:
    """The hash models converted before RUN_MODEL_FILES recorded: every file of a run but its checkpoints."""
    return _files_hash(Path(path), _all_files(Path(path)))


def _model_files(path: Path) -> list:
    if path.is_dir() and (path / "config.json").is_file():
        return [path / name for name in RUN_MODEL_FILES if (path / name).is_file()]
    return _all_files(path)


def _all_files(path: Path) -> list:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and not p.relative_to(path).as_posix().startswith("checkpoints/"))  # training state


def _files_hash(path: Path, files: list) -> str:
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()
