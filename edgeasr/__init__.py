"""edgeasr: Keras speech models to small, fully-integer LiteRT models.

TFMOT only supports Keras 2, so every TensorFlow import made through edgeasr must see
TF_USE_LEGACY_KERAS=1. This is the one place that sets it, before anything imports TensorFlow.
The runtime side (edgeasr.runtime) never imports TensorFlow at all.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
