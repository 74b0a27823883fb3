"""What `convert` and `validate` read: the Keras model (an edgeasr run directory or a tf_keras
file), whether it is QAT, and the calibration / test features (a dataset folder or a .npy array)."""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import os
from pathlib import Path

import numpy as np
import tf_keras as keras

from edgeasr.errors import EdgeasrError
from edgeasr.converters.stock import CALIBRATION_EXAMPLES


OPTIONAL_PATHS = ("calibration", "data")
PATH_HINTS = {"source": "save the model first (model.save('model.keras')) and pass the file",
              "calibration": "np.save() the inputs and pass the .npy file, or pass a dataset folder"}


def check_paths(**arguments) -> None:
    """convert and validate read files (a model's bytes are hashed into the metadata): a Keras model
    object or a NumPy array given from Python is refused by name, not by pathlib's TypeError; so is
    a missing path that is not optional."""
    for name, value in arguments.items():
        if value is None and name in OPTIONAL_PATHS:
            continue
        if not isinstance(value, (str, os.PathLike)):
            hint = f"; {PATH_HINTS[name]}" if name in PATH_HINTS else ""
            raise EdgeasrError(f"{name}: a path is needed, not a {type(value).__name__}{hint}")


def load_source(source) -> tuple:
    """(Keras model, RunConfig or None) of a run directory or a tf_keras model file."""
    source = Path(source)
    if source.is_dir() and (source / "config.json").is_file():
        from edgeasr.train.run_dir import RunDir

        run = RunDir(source)
        return run.load_model(), run.read_config()
    return load_keras(source), None


def is_qat(model: keras.Model) -> bool:
    from edgeasr.quant.qat import FoldedConvBN, QuantizeLayer, QuantizeWrapper

    return any(isinstance(layer, (QuantizeWrapper, QuantizeLayer, FoldedConvBN)) for layer in model.layers)


def load_keras(path) -> keras.Model:
    """A tf_keras model from a SavedModel folder, .h5 or .keras file (float or edgeasr QAT)."""
    from edgeasr.quant.qat import load_model

    path = Path(path)
    if not path.exists():
        raise EdgeasrError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise EdgeasrError(f"{path}: not an edgeasr run directory (no config.json) and not a SavedModel "
                           f"(no saved_model.pb)")
    try:
        model = load_model(path, compile=False)
    except Exception as exc:
        if "Lambda" in str(exc) and "safe_mode" in str(exc):
            raise EdgeasrError(f"{path}: the model has a Lambda layer, which a .keras file loads only as unsafe "
                               f"code and convert cannot quantize; replace it with a built-in layer") from exc
        raise EdgeasrError(f"{path}: not a readable tf_keras model ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from exc
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise EdgeasrError(f"{path}: convert needs a functional or Sequential tf_keras model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EdgeasrError(f"{path}: convert handles models with one input and one output, this one has "
                           f"{len(model.inputs)} and {len(model.outputs)}")
    return model if is_qat(model) else with_softmax_layer(model)


def with_softmax_layer(model: keras.Model) -> keras.Model:
    """The model with a softmax fused into its last layer (Dense(..., activation="softmax"), the
    usual Keras classifier head) split off into a Softmax layer, the head edgeasr's own models have:
    `convert --scores` can then drop it, and the converter writes FULLY_CONNECTED + SOFTMAX."""
    last = model.layers[-1]
    if getattr(last, "activation", None) is not keras.activations.softmax:
        return model
    linear = type(last).from_config({**last.get_config(), "activation": "linear"})
    outputs = keras.layers.Softmax(name=f"{last.name}_softmax")(linear(last.input))
    linear.set_weights(last.get_weights())
    return keras.Model(model.inputs, outputs, name=model.name)


def described_inputs(model: keras.Model, labels=None, frontend=None) -> tuple:
    """(labels or None, FrontendConfig or None) of a model file, from convert's --labels (names
    separated by commas, or a text file with one per line) and --frontend ("edgeasr": the kit's
    default log-mel features, or a JSON file of FrontendConfig fields). A run directory carries
    both; a model file needs them for the streaming runtime (eval-stream, rpi_kws.py) to run it.
    Checked against the model: one label per output class, n_mels input features."""
    return (_labels_of(model, labels) if labels is not None else None,
            _frontend_of(model, frontend) if frontend else None)


def _labels_of(model: keras.Model, labels: str) -> list:
    if not isinstance(labels, (str, os.PathLike)):          # from Python: a list, tuple or array of names
        names = [str(name).strip() for name in labels]
    elif Path(labels).is_file():
        names = [line.strip() for line in Path(labels).read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in str(labels).split(",") if name.strip()]
    classes = int(model.output_shape[-1])
    if len(names) != classes:
        raise EdgeasrError(f"--labels: {len(names)} names ({', '.join(names[:12])}), but the model has {classes} "
                           f"output classes; give one distinct name per class, in output order")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EdgeasrError(f"--labels: {', '.join(repeated)} named more than once; give one distinct name per class")
    return names


def _frontend_of(model: keras.Model, frontend: str):
    import json

    from edgeasr.audio.frontend import FrontendConfig
    from edgeasr.configs import from_dict

    if frontend == "edgeasr":
        config = FrontendConfig()
    else:
        try:
            config = from_dict(FrontendConfig, json.loads(Path(frontend).read_text()))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise EdgeasrError(f"--frontend {frontend}: not 'edgeasr' nor a readable JSON file of FrontendConfig "
                               f"fields ({exc})") from exc
    if len(model.input_shape) != 3 or model.input_shape[-1] != config.n_mels:
        raise EdgeasrError(f"--frontend: the model takes inputs of shape {model.input_shape[1:]}, not (frames, "
                           f"{config.n_mels}) log-mel features of that frontend")
    return config


def qat_weight_bits(model: keras.Model) -> dict:
    from edgeasr.quant.qat import weight_quantizers

    return {entry["layer"]: entry["quantizer"].bits for entry in weight_quantizers(model)}


def spread_rows(count: int, limit=None, seed: int = 0) -> np.ndarray:
    """Indices of a seeded random sample of at most `limit` of `count` rows, in their order (every
    row when `limit` is None or not smaller). Not the first rows: a dataset folder is read word by
    word and a user's array may be sorted, so its first few hundred rows can all be one word."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def load_calibration(data, model: keras.Model, config=None, split: str = "train", limit=None,
                     what: str = "calibration data"):
    """(features, labels or None) from a .npy array of model inputs or a dataset folder; at most
    `limit` examples, spread over the whole array or split (`spread_rows`). `what` names the data
    in errors (validate's test inputs are not calibration data)."""
    path = Path(data)
    if not path.exists():
        raise EdgeasrError(f"{what} {path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".npy":
            raise EdgeasrError(f"{what} {path}: expected a .npy array of model inputs or a dataset folder")
        try:
            features = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EdgeasrError(f"{what} {path}: not a readable .npy array ({exc})") from exc
        if not isinstance(features, np.ndarray):      # np.load opens an .npz whatever its name
            features.close()
            raise EdgeasrError(f"{what} {path}: an .npz archive, not one .npy array of model inputs")
        if not np.issubdtype(features.dtype, np.floating):
            raise EdgeasrError(f"{what} {path}: a {features.dtype} array; it must hold the float "
                               f"inputs the Keras model takes (e.g. log-mel features), not quantized or other values")
        features, labels = features[spread_rows(len(features), limit)] if features.ndim else features, None
    else:
        from edgeasr.audio.frontend import FrontendConfig
        from edgeasr.data.pipeline import features_of
        from edgeasr.data.speech_commands import DataConfig, load_split

        frontend = config.frontend if config is not None else FrontendConfig()
        data_config = config.data if config is not None else DataConfig()
        clips = load_split(path, data_config, split, progress=False)
        if not len(clips.labels):
            raise EdgeasrError(f"{what} {path}: no {split} clips")
        rows = spread_rows(len(clips.labels), limit)
        features, labels = features_of(clips.waves[rows], frontend), np.asarray(clips.labels)[rows]
    expected = tuple(model.input_shape[1:])
    if features.ndim != len(expected) + 1 or tuple(features.shape[1:]) != expected or not len(features):
        raise EdgeasrError(f"{what} {path}: shape {features.shape}, the model takes (N, "
                           f"{', '.join(map(str, expected))})")
    broken = np.flatnonzero(~np.isfinite(features.reshape(len(features), -1)).all(axis=1))
    if len(broken):
        raise EdgeasrError(f"{what} {path}: {len(broken)} of {len(features)} inputs hold NaN or infinite "
                           f"values (rows {', '.join(map(str, broken[:8]))}{', ...' if len(broken) > 8 else ''}); "
                           f"give finite model inputs")
    if features.min() == features.max():
        raise EdgeasrError(f"{what} {path}: every value is {features.flat[0]:g}; give real model inputs "
                           f"(calibrated ranges come from them, and parity on a constant shows nothing)")
    return features.astype(np.float32), labels


def calibration_features(config, examples: int = CALIBRATION_EXAMPLES) -> np.ndarray:
    """Features of a seeded random sample of the run's training clips (no augmentation)."""
    from edgeasr.data.pipeline import features_of
    from edgeasr.data.speech_commands import load_split

    train = load_split(Path(config.dataset), config.data, "train", progress=False)
    if not len(train.labels):
        raise EdgeasrError(f"{config.dataset}: no training clips to calibrate with")
    return features_of(train.waves[spread_rows(len(train.labels), examples, config.train.seed)], config.frontend)


def run_test_features(config):
    """(features, labels) of the run's test split, or None when the dataset is not there."""
    from edgeasr.data.pipeline import features_of
    from edgeasr.data.speech_commands import load_split

    if not Path(config.dataset).is_dir():
        return None
    test = load_split(Path(config.dataset), config.data, "test", progress=False)
    return (features_of(test.waves, config.frontend), np.asarray(test.labels)) if len(test.labels) else None


FEW_CALIBRATION_INPUTS = 32     # below it, ranges are calibrated on too few inputs to cover others
SCALE_WARNING_FACTOR = 8.0      # inputs this many times larger or smaller than training's are in other units


def input_notes(model: keras.Model, features: np.ndarray, what: str, calibrating: bool) -> list:
    """Warnings about a model file's user-given inputs that parity cannot reveal, because the
    float, fake-quant and LiteRT models all see the same inputs: too few calibration rows, and
    inputs in other units than the model was trained on (features x 1e4 calibrate and pass
    parity, then fail on the device's real features)."""
    notes = []
    if calibrating and len(features) < FEW_CALIBRATION_INPUTS:
        notes.append(f"{what}: {len(features)} input{'s' if len(features) != 1 else ''} to calibrate on; ranges "
                     f"taken from so few clip other inputs' activations (convert samples up to "
                     f"{CALIBRATION_EXAMPLES}; give a few hundred)")
    scale = training_scale_ratio(model, features)
    if scale is not None and not 1 / SCALE_WARNING_FACTOR <= scale[1] <= SCALE_WARNING_FACTOR:
        size = f"{scale[1]:,.0f} times" if scale[1] > 1 else f"1/{1 / scale[1]:,.0f} of"
        notes.append(f"{what}: the inputs are about {size} the scale the model was trained on (measured "
                     f"at its first BatchNormalization, '{scale[0]}', against its moving statistics); give "
                     f"the features the model takes, in its units, or the model will be calibrated for others")
    return notes


def training_scale_ratio(model: keras.Model, features: np.ndarray, examples: int = 64):
    """(layer name, ratio): the RMS of what the model's first BatchNormalization receives from
    `features` over the RMS its moving statistics recorded in training (median over channels);
    None for a model without one (or one wrapped for QAT)."""
    import tensorflow as tf

    norm = next((layer for layer in model.layers if type(layer) is keras.layers.BatchNormalization), None)
    if norm is None:
        return None
    axis = norm.axis[0] if isinstance(norm.axis, (list, tuple)) else norm.axis
    try:
        received = keras.Model(model.inputs, norm.input)(tf.constant(features[:examples]), training=False).numpy()
    except (AttributeError, ValueError, TypeError):   # a layer used twice, a nested model: no warning, no failure
        return None
    received = np.moveaxis(received, axis, -1).reshape(-1, received.shape[axis]).astype(np.float64)
    trained = norm.moving_variance.numpy().astype(np.float64) + norm.moving_mean.numpy().astype(np.float64) ** 2
    usable = trained > 0
    if not usable.any():
        return None
    return norm.name, float(np.sqrt(np.median(np.mean(received ** 2, axis=0)[usable] / trained[usable])))
