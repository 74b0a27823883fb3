"""Classification metrics: accuracy, confusion matrix, and ways to show them."""
import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true label, columns = predicted label."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def classification_report(labels: np.ndarray, predictions: np.ndarray, label_names: list) -> dict:
    matrix = confusion_matrix(labels, predictions, len(label_names))
    per_class_total = matrix.sum(axis=1)
    recall = np.divide(np.diag(matrix), per_class_total, out=np.zeros(len(label_names)), where=per_class_total > 0)
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(np.asarray(labels) == np.asarray(predictions))) if len(labels) else 0.0,
        "labels": list(label_names),
        "confusion": matrix.tolist(),
        "recall": {name: float(r) for name, r in zip(label_names, recall)},
    }


def format_confusion(report: dict) -> str:
    """The confusion matrix as a fixed-width text table."""
    names = report["labels"]
    width = max(6, max(len(n) for n in names) + 1)
    lines = [" " * width + "".join(f"{n[:width - 1]:>{width}}" for n in names)]
    for name, row in zip(names, report["confusion"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def plot_confusion(report: dict, path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(report["confusion"], dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = report["labels"]
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 1 + 0.55 * len(names)))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), value in np.ndenumerate(counts):
        if value:
            ax.text(col, row, int(value), ha="center", va="center", fontsize=7,
                    color="white" if rates[row, col] > 0.5 else "black")
    ax.set_title(title or f"accuracy {report['accuracy']:.1%} on {report['examples']} clips")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
