"""The `edgeasr` metadata entry of a .tflite file: what a converted model says about itself.

Runtime side: it reads the few flatbuffer tables it needs (Model.metadata, Model.buffers) with
`struct` alone, so it runs wherever Python does: tflite_runtime ships no schema module, and a
device may have no LiteRT package yet when a model is inspected.

The entry is JSON (UTF-8) in a model buffer referenced by Model.metadata[i] with name "edgeasr":
    format            1
    edgeasr_version   version that wrote it
    labels            class names in output order
    frontend          FrontendConfig as a dict (sample rate, window and hop in ms, mels, ...)
    window_ms, hop_ms the frontend's analysis window and hop; input_frames: frames per example
    input, output     {"dtype", "shape", "scale", "zero_point"} of the model's input and output
    policy            the precision policy (PrecisionPolicy.to_dict())
    source            {"path", "sha256"} of what was converted
    ...               anything else the converter adds (calibration, int4 report)
"""
import json
import struct

METADATA_NAME = "edgeasr"
FORMAT = 1


class MetadataError(ValueError):
    """The file is not a TFLite model, or has no readable edgeasr metadata."""


# Field numbers of the schema's tables that read_metadata walks (tensorflow/lite/schema/schema.fbs).
MODEL_SUBGRAPHS, MODEL_BUFFERS, MODEL_METADATA = 2, 4, 6
METADATA_NAME_FIELD, METADATA_BUFFER = 0, 1
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2


def _field(data: bytes, table: int, number: int):
    """Position of field `number` of the flatbuffer table at `table`, or None when it is absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    entry = 4 + 2 * number
    offset = struct.unpack_from("<H", data, vtable + entry)[0] if entry < vtable_size else 0
    return table + offset if offset else None


def _target(data: bytes, position: int) -> int:
    """Where the uoffset stored at `position` points."""
    return position + struct.unpack_from("<I", data, position)[0]


def _vector(data: bytes, table: int, number: int) -> list:
    """Positions of the tables a vector-of-tables field points to (none when it is absent)."""
    start, count = _vector_start(data, table, number, element_size=4)
    return [_target(data, start + 4 * i) for i in range(count)]


def _bytes(data: bytes, table: int, number: int) -> bytes:
    """A [ubyte] or string field's bytes (empty when absent)."""
    start, count = _vector_start(data, table, number, element_size=1)
    return data[start:start + count]


def _vector_start(data: bytes, table: int, number: int, element_size: int) -> tuple:
    """(position of the first element, element count) of a vector field; a count that runs past the
    end of the file (a damaged one could ask for billions of elements) is refused."""
    at = _field(data, table, number)
    if at is None:
        return 0, 0
    start = _target(data, at)
    count = struct.unpack_from("<I", data, start)[0]
    if start + 4 + element_size * count > len(data):
        raise ValueError("a vector runs past the end of the file")
    return start + 4, count


def _scalar(data: bytes, table: int, number: int, form: str) -> int:
    at = _field(data, table, number)
    return struct.unpack_from(form, data, at)[0] if at is not None else 0


def _metadata_bytes(data: bytes, name: str):
    """The bytes of the buffer metadata entry `name` points to, or None when there is no such entry."""
    model = _target(data, 0)
    if not _vector(data, model, MODEL_SUBGRAPHS):        # every model has one: the root offset is damaged
        raise ValueError("the root table has no subgraphs")
    for entry in _vector(data, model, MODEL_METADATA):
        if _bytes(data, entry, METADATA_NAME_FIELD).decode("utf-8", "replace") != name:
            continue
        buffers = _vector(data, model, MODEL_BUFFERS)
        buffer = buffers[_scalar(data, entry, METADATA_BUFFER, "<I")]
        raw = _bytes(data, buffer, BUFFER_DATA)
        offset = _scalar(data, buffer, BUFFER_OFFSET, "<Q")
        if not raw and offset:               # large models keep buffers after the flatbuffer
            raw = data[offset:offset + _scalar(data, buffer, BUFFER_SIZE, "<Q")]
        return raw
    return None


def keyword_columns(labels) -> list:
    """[(output column, keyword)] of a model's labels in output order: the `_silence_` and `_unknown_`
    classes (names starting with "_") are not keywords."""
    return [(column, name) for column, name in enumerate(labels or []) if not name.startswith("_")]


def keywords_of(metadata) -> list:
    """The keywords among a model's labels, in output order."""
    return [name for _, name in keyword_columns((metadata or {}).get("labels"))]


def read_metadata(model, name: str = METADATA_NAME):
    """The metadata entry `name` of a .tflite path or its bytes, as a dict; None when absent."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, source = bytes(model), "model"
    else:
        with open(model, "rb") as handle:
            data, source = handle.read(), str(model)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise MetadataError(f"{source}: not a TFLite model")
    try:
        raw = _metadata_bytes(data, name)
        if raw is None:
            return None
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{source}: the {name!r} metadata is not valid JSON ({exc})") from exc
    except Exception as exc:  # corrupt flatbuffer
        raise MetadataError(f"{source}: corrupt TFLite model ({type(exc).__name__}: {exc})") from exc
