"""Task accuracy of a converted .tflite model on a dataset split, computed by LiteRT."""
import numpy as np

from edgeasr.eval.metrics import classification_report
from edgeasr.runtime.litert import LiteRTModel


def litert_report(model_path, features: np.ndarray, labels: np.ndarray, label_names: list, xnnpack: bool = True) -> dict:
    scores = LiteRTModel(model_path, xnnpack=xnnpack).predict(features)
    return classification_report(labels, np.argmax(scores, axis=-1), label_names)
