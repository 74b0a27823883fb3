"""Model names to builders, and the ModelConfig that a run directory stores to rebuild a model.

A builder is any callable `builder(input_shape, num_classes, **options) -> keras.Model` whose
options are named keyword parameters (no **kwargs), so a misspelt option is caught here, by name,
before Keras sees it. Other modules add models with `@register_model("name")`; the modules listed
in `_MODEL_MODULES` are imported on first use so their models are known without the caller
importing them.
"""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import tf_keras as keras

from edgeasr.errors import EdgeasrError
from edgeasr.models import kws

Builder = Callable[..., keras.Model]

# Modules that register more models when imported; a missing one is simply skipped.
_MODEL_MODULES = ("edgeasr.models.conformer",)

# Arguments every builder takes from ModelConfig itself, never from `options`.
_CONFIG_ARGUMENTS = ("input_shape", "num_classes")

_BUILDERS: Dict[str, Builder] = {}
_model_modules_loaded = False


@dataclass
class ModelConfig:
    name: str = "ds_cnn_s"
    input_shape: tuple = (98, 40)
    num_classes: int = 12
    options: dict = field(default_factory=dict)  # keyword overrides for the builder, e.g. dropout


def register_model(name: str, builder: Optional[Builder] = None):
    """Register `builder` under `name`; without `builder`, return a decorator that does it."""
    if builder is None:
        return functools.partial(register_model, name)
    if name in _BUILDERS and _BUILDERS[name] is not builder:
        raise ValueError(f"model name {name!r} is already registered")
    _BUILDERS[name] = builder
    return builder


def known_models() -> List[str]:
    _load_model_modules()
    return sorted(_BUILDERS)


def build_model(config: ModelConfig) -> keras.Model:
    """Build the uncompiled model that `config` names, with its options applied."""
    builder = _builder_for(config.name)
    options = dict(config.options or {})
    _check_option_names(config.name, builder, options)
    _check_num_classes(config.num_classes)
    try:
        return builder(tuple(config.input_shape), int(config.num_classes), **options)
    except (TypeError, ValueError) as exc:
        raise EdgeasrError(
            f"model {config.name!r}: cannot build with input_shape={tuple(config.input_shape)}, "
            f"options={options}: {exc}"
        ) from exc


def option_names(name: str) -> List[str]:
    """The options a model accepts (its builder's keyword parameters), with their defaults."""
    return sorted(_option_defaults(_builder_for(name)))


def _builder_for(name: str) -> Builder:
    _load_model_modules()
    if name not in _BUILDERS:
        raise EdgeasrError(f"unknown model {name!r}; known models: {', '.join(known_models())}")
    return _BUILDERS[name]


def _option_defaults(builder: Builder) -> dict:
    parameters = inspect.signature(builder).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.name not in _CONFIG_ARGUMENTS
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _check_option_names(model_name: str, builder: Builder, options: dict) -> None:
    accepted = _option_defaults(builder)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EdgeasrError(
            f"model {model_name!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )


def _check_num_classes(num_classes) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise EdgeasrError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _load_model_modules() -> None:
    global _model_modules_loaded
    if _model_modules_loaded:
        return
    for module in _MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    _model_modules_loaded = True


KEYWORD_MODELS = ("ds_cnn_s", "ds_cnn_m", "ffn_stateless")   # what `edgeasr train` trains
register_model("ds_cnn_s", functools.partial(kws.ds_cnn, channels=64, blocks=4, name="ds_cnn_s"))
register_model("ds_cnn_m", functools.partial(kws.ds_cnn, channels=172, blocks=4, name="ds_cnn_m"))
register_model("ffn_stateless", kws.ffn_stateless)
