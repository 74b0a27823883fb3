"""Precision policies: which bits, weight transform and granularity each layer gets.

A policy is a default `LayerPrecision` plus an ordered list of rules (fnmatch-style layer-name
pattern -> LayerPrecision); the first rule whose pattern matches a layer's name wins, and a
layer no rule matches gets the default. Patterns match the names of the float model's layers
(conv0, dw1, pw1, dense1, logits, ...), also after quantize_model wrapped or folded them.

weight_bits None means float weights, activation_bits None float activations; the `float`
preset is both, and quantize_model returns the model unchanged for it.

granularity applies to every kernel (Conv2D, DepthwiseConv2D, Dense). A per-channel Dense costs
a float32 scale per output unit in the .tflite; the converter gets its quantized kernel as a
constant (converters/stock.py says why).

Policies are dataclasses: `to_dict` / `from_dict` of edgeasr.configs give plain JSON.
"""
import fnmatch
import os
from dataclasses import dataclass, field, replace
from typing import List, Optional

from edgeasr.configs import from_dict, to_dict
from edgeasr.errors import EdgeasrError

TRANSFORMS = ("linear", "tanh")
GRANULARITIES = ("per-channel", "per-tensor")


@dataclass
class LayerPrecision:
    weight_bits: Optional[int] = 8          # 2..8, or None for float weights
    weight_transform: str = "linear"        # linear | tanh
    granularity: str = "per-channel"        # per-channel | per-tensor
    activation_bits: Optional[int] = 8      # 8, 16, or None for float activations

    def __post_init__(self):
        bits = self.weight_bits
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8):
            raise EdgeasrError(f"weight_bits must be an integer from 2 to 8 or null, got {bits!r}")
        if self.weight_transform not in TRANSFORMS:
            raise EdgeasrError(f"weight_transform must be one of {', '.join(TRANSFORMS)}, "
                               f"got {self.weight_transform!r}")
        if self.granularity not in GRANULARITIES:
            raise EdgeasrError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.activation_bits not in (None, 8, 16) or isinstance(self.activation_bits, bool):
            raise EdgeasrError(f"activation_bits must be 8, 16 or null, got {self.activation_bits!r}")

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None and self.activation_bits is None


@dataclass
class PrecisionRule:
    pattern: str                            # fnmatch pattern on layer names, e.g. "dw*"
    precision: LayerPrecision = field(default_factory=LayerPrecision)

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise EdgeasrError(f"a precision rule needs a non-empty layer-name pattern, got {self.pattern!r}")
        if isinstance(self.precision, dict):
            self.precision = from_dict(LayerPrecision, self.precision)


@dataclass
class PrecisionPolicy:
    name: str = "custom"
    default: LayerPrecision = field(default_factory=LayerPrecision)
    rules: List[PrecisionRule] = field(default_factory=list)   # first match wins

    def __post_init__(self):
        # edgeasr.configs.from_dict restores nested dataclasses but not lists of them.
        if isinstance(self.default, dict):
            self.default = from_dict(LayerPrecision, self.default)
        self.rules = [from_dict(PrecisionRule, rule) if isinstance(rule, dict) else rule
                      for rule in (self.rules or [])]

    def resolve(self, layer_name: str) -> LayerPrecision:
        for rule in self.rules:
            if fnmatch.fnmatchcase(layer_name, rule.pattern):
                return rule.precision
        return self.default

    def matching_rule(self, layer_name: str) -> Optional[PrecisionRule]:
        return next((rule for rule in self.rules if fnmatch.fnmatchcase(layer_name, rule.pattern)), None)

    @property
    def is_float(self) -> bool:
        return self.default.is_float and all(rule.precision.is_float for rule in self.rules)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PrecisionPolicy":
        return from_dict(cls, values)


def check_16bit_activations(policy: PrecisionPolicy, post_training: bool, layer_names=None) -> None:
    """Refuse a policy whose 16-bit activations the stock converter cannot give (TF 2.21, measured,
    docs/toolchain_facts.md): 16 bits on some layers only came out int8 (no INT16 tensor in the
    file, DS-CNN-S and the FFN, QAT and post-training) or failed (on `logits`); a QAT graph with
    16-bit fake-quant nodes does not convert in the 16x8 mode, which calibrates a float model itself.
    With `layer_names` the precisions the model's layers resolve to are judged (a "*" rule may cover
    them all), else the policy's default and rules."""
    named = [(name, policy.resolve(name)) for name in layer_names] if layer_names else (
        [("default", policy.default)] + [(rule.pattern, rule.precision) for rule in policy.rules])
    if not any(precision.activation_bits == 16 for _, precision in named):
        return
    others = [name for name, precision in named if precision.activation_bits != 16]
    if others:
        raise EdgeasrError(f"policy {policy.name!r}: 16-bit activations, but not for {', '.join(others[:6])}"
                           f"{', ...' if len(others) > 6 else ''}; the stock converter gives a 16-bit rule on some "
                           f"layers int8 activations (or fails): ask 16 for every layer (the 16x8 mode) or 8")
    if not post_training:
        raise EdgeasrError(f"policy {policy.name!r}: 16-bit activations convert only post-training (the 16x8 mode "
                           f"calibrates a float model itself; a QAT graph with 16-bit fake-quant nodes does not "
                           f"convert): train float, then `edgeasr convert RUN --policy` this policy")


_W8 = LayerPrecision(weight_bits=8, weight_transform="linear", granularity="per-channel", activation_bits=8)
_W4_TANH = LayerPrecision(weight_bits=4, weight_transform="tanh", granularity="per-channel", activation_bits=8)

# The first and last weighted layers of edgeasr/models/kws.py: DS-CNN conv0, FFN dense1, logits.
MIXED_8BIT_LAYERS = ("conv0", "dense1", "logits")

# DS-CNN layers kept at 8 bits by "w4a8-tanh-dw8": its convolutions with a kernel wider than 1x1
# (conv0 and the depthwise dw*). `edgeasr convert` stores 4-bit convolution weights in int8
# containers by default (XNNPACK has no INT4 convolution), so 4 bits there save no byte of the
# file; the pointwise and Dense layers, the ones it packs two per byte, keep 4 bits. On DS-CNN-S's
# 14 h of held-out streams it did not narrow the 4-bit gap to float, it widened it
# (docs/recipe_pilots.md, pilot dw8): 4-bit depthwise weights are not what costs accuracy.
CONV_8BIT_LAYERS = ("conv0", "dw*")

# Conformer (edgeasr/models/conformer.py) layers kept at 8 bits by "conformer-mixed": the
# subsampling convolutions and their projection, the depthwise convolutions (XNNPACK has no INT4
# convolution, and they are a few KB), and the CTC head; feed-forward, attention and pointwise
# (GLU, output) Dense layers get 4 bits.
CONFORMER_8BIT_LAYERS = ("subsample_*", "*_dw", "logits")

_PRESETS = {
    "float": lambda: PrecisionPolicy("float", LayerPrecision(weight_bits=None, activation_bits=None)),
    "w8a8": lambda: PrecisionPolicy("w8a8", replace(_W8)),
    "w4a8": lambda: PrecisionPolicy("w4a8", LayerPrecision(weight_bits=4, weight_transform="linear")),
    "w4a8-tanh": lambda: PrecisionPolicy("w4a8-tanh", replace(_W4_TANH)),
    "mixed": lambda: PrecisionPolicy(
        "mixed", replace(_W4_TANH), [PrecisionRule(name, replace(_W8)) for name in MIXED_8BIT_LAYERS]),
    "w4a8-tanh-dw8": lambda: PrecisionPolicy(
        "w4a8-tanh-dw8", replace(_W4_TANH), [PrecisionRule(name, replace(_W8)) for name in CONV_8BIT_LAYERS]),
    "conformer-mixed": lambda: PrecisionPolicy(
        "conformer-mixed", replace(_W4_TANH), [PrecisionRule(name, replace(_W8)) for name in CONFORMER_8BIT_LAYERS]),
}


def known_presets() -> List[str]:
    return list(_PRESETS)


def preset(name: str) -> PrecisionPolicy:
    if name not in _PRESETS:
        raise EdgeasrError(f"unknown precision preset {name!r}; known presets: {', '.join(_PRESETS)}")
    return _PRESETS[name]()


def as_policy(policy) -> PrecisionPolicy:
    """A PrecisionPolicy from a policy, a preset name or a policy dict."""
    if isinstance(policy, PrecisionPolicy):
        return policy
    if isinstance(policy, str):
        return preset(policy)
    if isinstance(policy, dict):
        return PrecisionPolicy.from_dict(policy)
    raise EdgeasrError(f"expected a PrecisionPolicy, a preset name or a policy dict, got {type(policy).__name__}")


def load_policy(name_or_path: str) -> PrecisionPolicy:
    """A preset by name, or a policy JSON file (as written into every run's config.json): any
    existing file, whatever its extension (policy.JSON, a file without one). A preset's name is
    the preset, whatever files the working folder holds."""
    if name_or_path not in _PRESETS and (name_or_path.lower().endswith(".json") or os.path.isfile(name_or_path)):
        from edgeasr.files import read_json

        values = read_json(name_or_path)
        if not isinstance(values, dict):
            raise EdgeasrError(f"{name_or_path}: a policy file holds one JSON object ({{\"default\": {{...}}, "
                               f"\"rules\": [...]}}), not a {type(values).__name__}")
        return PrecisionPolicy.from_dict(values)
    return preset(name_or_path)
