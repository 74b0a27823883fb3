"""What a .tflite holds: ops (and which ones XNNPACK takes), tensors with dtypes and bytes, the
share of weight bytes packed as INT4, size against the float model, and the edgeasr metadata."""
from pathlib import Path

from edgeasr.converters import flatbuffer as fb
from edgeasr.converters.int4 import int4_share
from edgeasr.errors import EdgeasrError


def xnnpack_nodes(model_path) -> list:
    """Indices of the original nodes that the XNNPACK delegate took (single thread).

    LiteRT lists the original nodes followed by one DELEGATE node per partition; a partition is
    the set of nodes on the paths from the DELEGATE node's inputs to its outputs.
    """
    from edgeasr.runtime.litert import _interpreter_module

    interpreter = _interpreter_module().Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    details = interpreter._get_ops_details()
    originals = [d for d in details if d["op_name"] != "DELEGATE"]
    producer = {int(t): d["index"] for d in originals for t in d["outputs"]}
    by_index = {d["index"]: d for d in originals}
    taken = set()
    for delegate in (d for d in details if d["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in delegate["inputs"]}
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            tensor = stack.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in taken:
                continue
            taken.add(node)
            stack.extend(int(t) for t in by_index[node]["inputs"] if t >= 0)
    return sorted(taken)


def loading_failures(model_path) -> dict:
    """{kernel set: None when this runtime loads the model on it, else the interpreter's reason}
    for the kernel sets other than XNNPACK (LiteRT's reference kernels have no INT4 convolution)."""
    from edgeasr.runtime.litert import KERNELS, LiteRTModel

    return {kernels: LiteRTModel.on_kernels_if_loadable(model_path, kernels)[1]
            for kernels in KERNELS if kernels != "xnnpack"}


def inspect_model(path, float_bytes=None) -> dict:
    from edgeasr.runtime.metadata import MetadataError, read_metadata

    path = Path(path)
    if not path.is_file():
        raise EdgeasrError(f"{path}: no such file")
    data = path.read_bytes()
    model = fb.load(data, str(path))
    types = fb.type_names()
    graph = model.subgraphs[0]
    try:
        delegated = set(xnnpack_nodes(path))
    except Exception as exc:  # a model LiteRT cannot load: still show what the file holds
        delegated, load_error = set(), f"{type(exc).__name__}: {exc}"
    else:
        load_error = None
    failures = loading_failures(path) if load_error is None else {}
    ops = []
    for index, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        inputs = [graph.tensors[i] for i in op.inputs if i >= 0]
        ops.append({"index": index, "op": fb.op_name(model, op), "version": int(code.version),
                    "types": [types[t.type] for t in inputs], "xnnpack": index in delegated})
    tensors = []
    for tensor in graph.tensors:
        buffer = fb.buffer_data(model, tensor)
        size = 0 if buffer is None else int(buffer.size)
        kind = types[tensor.type]
        quant = tensor.quantization
        scales = 0 if quant is None or quant.scale is None else len(quant.scale)
        tensors.append({"name": fb.tensor_name(tensor), "type": kind, "shape": [int(d) for d in tensor.shape],
                        "bytes": size, "constant": buffer is not None, "scales": scales})
    weight_bytes = sum(entry["bytes"] for entry in fb.weight_storage(data).values())
    try:
        metadata, metadata_error = read_metadata(path), None
    except MetadataError as exc:       # the model itself loaded above: its edgeasr entry is unreadable
        metadata, metadata_error = None, str(exc)
    return {
        "path": str(path), "bytes": len(data), "float_bytes": float_bytes,
        "smaller_than_float": (float_bytes / len(data)) if float_bytes else None,
        "ops": ops, "op_counts": _counts(o["op"] for o in ops),
        "xnnpack_nodes": len(delegated), "xnnpack_error": load_error, "loading_failures": failures,
        "tensors": tensors, "weight_bytes": weight_bytes,
        "int4_weight_share": int4_share(data),
        "per_channel_parameter_bytes": fb.per_channel_parameter_bytes(graph.tensors),
        "metadata": metadata, "metadata_error": metadata_error,
    }


def _counts(names) -> dict:
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def format_inspection(report: dict) -> str:
    lines = [f"{report['path']}: {report['bytes']:,} bytes"]
    if report.get("float_bytes"):
        lines[0] += f" ({report['smaller_than_float']:.1f}x smaller than float {report['float_bytes']:,})"
    share = report["int4_weight_share"]
    lines.append(f"weights: {report['weight_bytes']:,} bytes, {0 if share is None else share:.0%} packed INT4; "
                 f"per-channel scales + zero points: {report['per_channel_parameter_bytes']:,} bytes")
    lines.append(f"XNNPACK takes {report['xnnpack_nodes']} of {len(report['ops'])} ops"
                 + (f" (could not load: {report['xnnpack_error']})" if report["xnnpack_error"] else ""))
    for kernels, failure in (report.get("loading_failures") or {}).items():
        lines.append(f"{kernels} kernels: " + ("can run it" if failure is None else f"cannot load it ({failure})"))
    lines.append("")
    lines.append(f"{'#':>3}  {'op':<22} {'v':>2}  {'input types':<28} xnnpack")
    for op in report["ops"]:
        lines.append(f"{op['index']:>3}  {op['op']:<22} {op['version']:>2}  {','.join(op['types']):<28} "
                     f"{'yes' if op['xnnpack'] else '-'}")
    lines.append("")
    lines.append(f"{'type':<8} {'bytes':>8} {'scales':>6}  shape / name")
    for tensor in report["tensors"]:
        if tensor["constant"] or tensor["type"] not in ("INT8", "INT16"):
            lines.append(f"{tensor['type']:<8} {tensor['bytes']:>8,} {tensor['scales']:>6}  "
                         f"{tensor['shape']} {tensor['name'][:70]}")
    lines.append("")
    import json

    if report.get("metadata_error"):
        lines.append(f"metadata: present but unreadable: {report['metadata_error']}")
    else:
        lines.append("metadata: " + (json.dumps(report["metadata"], indent=2, sort_keys=True)
                                     if report["metadata"] else "none (not written by edgeasr)"))
    return "\n".join(lines)
