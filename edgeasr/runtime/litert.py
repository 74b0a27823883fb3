"""LiteRT interpreter wrapper: float features in, float scores out, quantisation handled.

Runtime side: imports NumPy and a LiteRT interpreter only, never TensorFlow directly. The
interpreter comes from ai_edge_litert, else tflite_runtime, else tensorflow.lite, in that order.
"""
import warnings

import numpy as np

from edgeasr.runtime.metadata import read_metadata


class NoRuntimeError(RuntimeError):
    """No LiteRT interpreter package is installed."""


class ModelLoadError(ValueError):
    """LiteRT cannot load or prepare the model: a damaged file, or an op or op version this runtime
    lacks. The message is the interpreter's own (no path: it lands in reports)."""


def _interpreter_module():
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError:
            try:
                from tensorflow.lite.python import interpreter
            except ImportError:
                raise NoRuntimeError("no LiteRT interpreter is installed: pip install ai-edge-litert "
                                     "(tflite-runtime runs 8-bit models only, and needs numpy<2)") from None
    return interpreter


def _source(model) -> dict:
    """Interpreter keyword for `model`: a path or the model's bytes."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return {"model_content": bytes(model)}
    return {"model_path": str(model)}


# The kernel sets LiteRT runs a model on, by the name edgeasr gives them:
#   xnnpack    the default: XNNPACK delegate, builtin kernels for the ops it does not take
#   builtin    the builtin optimized kernels alone (BUILTIN_WITHOUT_DEFAULT_DELEGATES)
#   reference  LiteRT's reference kernels (BUILTIN_REF): plain C++ integer arithmetic that computes
#              the same on every CPU (measured: DS-CNN-S identical on x86 and emulated aarch64, where
#              XNNPACK and the optimized builtin kernels differ by up to 2 LSB); it is slow, and a
#              runtime's reference kernels may lack a kernel version (INT4 convolutions)
KERNELS = {"xnnpack": None, "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}


def _interpreter(model, kernels: str, **options):
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    module = _interpreter_module()
    if KERNELS[kernels]:
        options["experimental_op_resolver_type"] = getattr(module.OpResolverType, KERNELS[kernels])
    try:
        interpreter = module.Interpreter(**_source(model), **options)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        packed = _packed_int4_layers(model) if module.__name__.startswith("tflite_runtime") else []
        if packed:
            raise RuntimeError(f"tflite_runtime cannot run this model: it stores the weights of "
                               f"{', '.join(packed)} as INT4, which tflite_runtime (2.14, its "
                               f"last release) does not run; install ai-edge-litert (pip install ai-edge-litert). "
                               f"The interpreter said: {str(error).strip().splitlines()[0]}") from error
        raise ModelLoadError(str(error).strip()) from error
    return interpreter


def _interpreter_or_builtin(model, kernels: str, **options):
    """(interpreter, the kernel set it runs): XNNPACK, unless this runtime's XNNPACK fails to prepare
    the model (ai-edge-litert 2.1, the last release for Python 3.9, fails on edgeasr's FULLY_CONNECTEDs),
    then the builtin kernels, with a warning."""
    try:
        return _interpreter(model, kernels, **options), kernels
    except (ValueError, RuntimeError) as error:
        if kernels != "xnnpack" or "delegate" not in str(error).lower():
            raise
        warnings.warn(f"this LiteRT's XNNPACK cannot run the model ({str(error).strip().splitlines()[0]}); "
                      f"running it on the builtin kernels (ai-edge-litert 2.3 or later runs it on XNNPACK)",
                      RuntimeWarning, stacklevel=3)
        return _interpreter(model, "builtin", **options), "builtin"


def _packed_int4_layers(model) -> list:
    """Layers whose weights the model's edgeasr metadata lists as stored INT4 (none without metadata)."""
    try:
        metadata = read_metadata(model) or {}
    except (OSError, ValueError):
        return []
    return [layer for layer, stored in (metadata.get("int4_weights") or {}).items() if stored == "INT4"]


def tracing_interpreter(model, kernels: str = "builtin"):
    """An interpreter without a delegate that keeps every intermediate tensor readable after invoke,
    for layer-by-layer comparisons. `model`: a path or the model's bytes."""
    if kernels == "xnnpack":
        raise ValueError("a delegate hides the tensors it computes: trace the builtin or reference kernels")
    return _interpreter(model, kernels, experimental_preserve_all_tensors=True)


LAYER_WINDOWS = 16   # inputs a device check compares layer by layer and op by op


def layer_outputs(model, inputs: np.ndarray) -> dict:
    """Every op's first output on the builtin kernels for each raw input, one array per op keyed
    "<op index>_<op name>" (execution order): where two machines start to differ, layer by layer.
    _get_ops_details is the interpreter's only list of ops (ai-edge-litert and tflite_runtime alike)."""
    interpreter = tracing_interpreter(model)
    input_index = interpreter.get_input_details()[0]["index"]
    ops = [op for op in interpreter._get_ops_details() if len(op["outputs"])]
    layers = {f"{op['index']:03d}_{op['op_name']}": [] for op in ops}
    for example in inputs:
        interpreter.set_tensor(input_index, example[None, ...])
        interpreter.invoke()
        for op in ops:
            layers[f"{op['index']:03d}_{op['op_name']}"].append(interpreter.get_tensor(op["outputs"][0]).copy())
    return {name: np.stack(values) for name, values in layers.items()}


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values into the tensor's dtype using its scale and zero point (identity for float tensors)."""
    scale, zero_point = detail["quantization"]
    dtype = detail["dtype"]
    if not scale:
        return np.asarray(values, dtype=dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale:
        return np.asarray(values, dtype=np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class LiteRTModel:
    """One .tflite model with one input and one output, run one example at a time on one of KERNELS."""

    def __init__(self, model_path, num_threads: int = 1, kernels: str = "xnnpack"):
        self.interpreter, self.kernels = _interpreter_or_builtin(model_path, kernels, num_threads=num_threads)
        self.input_detail = self.interpreter.get_input_details()[0]
        self.output_detail = self.interpreter.get_output_details()[0]

    @classmethod
    def on_kernels_if_loadable(cls, model_path, kernels: str, num_threads: int = 1):
        """(model, None), or (None, the interpreter's first line) when this runtime cannot load the
        model on `kernels`: LiteRT's reference kernels have no INT4 convolution (version 7)."""
        try:
            return cls(model_path, num_threads=num_threads, kernels=kernels), None
        except (ValueError, RuntimeError) as error:
            return None, str(error).strip().splitlines()[0]

    def run_raw(self, example: np.ndarray) -> np.ndarray:
        """One example already in the input dtype -> the raw output tensor (e.g. int8)."""
        self.interpreter.set_tensor(self.input_detail["index"], example[None, ...])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_detail["index"])[0]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Float features (N, ...) -> float outputs (N, ...); N may be 0."""
        features = np.asarray(features)
        example_shape = tuple(self.input_detail["shape"][1:])
        if features.shape[1:] != example_shape:
            raise ValueError(f"features must be a batch of shape (N, {', '.join(map(str, example_shape))}) "
                             f"for this model, got {features.shape}")
        outputs = [self.run_raw(quantize(example, self.input_detail)) for example in features]
        empty = np.zeros((0, *self.output_detail["shape"][1:]), self.output_detail["dtype"])
        return dequantize(np.stack(outputs) if outputs else empty, self.output_detail)
