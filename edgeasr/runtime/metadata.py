"""The `edgeasr` metadata entry of a .tflite file: what a converted model says about itself.

Runtime side: NumPy-free even, it needs only the `flatbuffers` package and the TFLite schema that
ai_edge_litert ships (else tflite_runtime's or TensorFlow's copy), never TensorFlow itself.

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

METADATA_NAME = "edgeasr"
FORMAT = 1


class MetadataError(ValueError):
    """The file is not a TFLite model, or has no readable edgeasr metadata."""


def schema():
    """The TFLite flatbuffer schema module, in the runtime's import order (no TensorFlow needed)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        try:
            from tflite_runtime import schema_py_generated  # type: ignore
        except ImportError:
            from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


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
        root = schema().Model.GetRootAsModel(data, 0)
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            entry_name = entry.Name()
            if (entry_name.decode() if isinstance(entry_name, bytes) else entry_name) != name:
                continue
            buffer = root.Buffers(entry.Buffer())
            raw = buffer.DataAsNumpy() if buffer.DataLength() else b""
            if not len(raw) and buffer.Offset():     # large models keep buffers after the flatbuffer
                raw = data[buffer.Offset():buffer.Offset() + buffer.Size()]
            return json.loads(bytes(raw).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{source}: the {name!r} metadata is not valid JSON ({exc})") from exc
    except Exception as exc:  # corrupt flatbuffer
        raise MetadataError(f"{source}: corrupt TFLite model ({type(exc).__name__}: {exc})") from exc
    return None
