"""Evaluation of a trained (or imported, or exported) classifier on a labelled test set.

Metric functions are plain NumPy on logits and labels (float64 inside):

- `top_k_accuracy`: the true class among the k largest logits (ties: lower class index first,
  as `argmax` breaks them);
- `confusion_matrix`, `per_class_accuracy`;
- `expected_calibration_error` (Guo et al., "On Calibration of Modern Neural Networks", ICML
  2017): confidence = the largest softmax probability, `num_bins` equal-width bins
  (b/B, (b+1)/B], ECE = sum_b n_b / N * |accuracy_b - mean confidence_b|;
- `soft_label_statistics`: what a student distilled at temperature T is taught, p = softmax(z/T):
  its entropy -sum_j p_j log p_j (nats) and the mass off the true class 1 - p_y, averaged over
  all images, and per class their mean and spread (population std) over the class's images, with
  the mean over classes. ICCKD's teacher is meant to keep more variety inside each class (a
  larger spread) than a CE teacher;
- `evaluate_logits` gathers all of them in one JSON-able report.

`predict(model, images)` runs a keras_icckd backbone (logits and embedding, one pass) or an
exported .tflite file (`keras_icckd.export.TFLiteRunner`, logits only); `plot_evaluation` draws
the report's picture (confusion matrix, per-class accuracy, soft-label entropy per class).
"""

import numpy as np

ECE_BINS = 15


def _labels(labels, n):
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows of logits")
    return labels.astype(np.int64)


def _logits(logits):
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) == 0 or not np.all(np.isfinite(logits)):
        raise ValueError(f"logits must be a non-empty finite (N, num_classes) array; got shape {logits.shape}")
    return logits


def softmax(logits, temperature=1.0):
    """softmax(logits / temperature) along the last axis, float64.

    Example:
        >>> softmax([[0.0, np.log(3.0)]]).round(3)
        array([[0.25, 0.75]])
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: expected > 0")
    z = _logits(logits) / float(temperature)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def top_k_accuracy(logits, labels, k=1):
    """Percentage of rows whose label is among the k largest logits (k is capped at the classes).

    Example:
        >>> top_k_accuracy([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]], [1, 1], k=2)
        100.0
    """
    logits = _logits(logits)
    labels = _labels(labels, len(logits))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :max(1, min(int(k), logits.shape[1]))]
    return 100.0 * float(np.mean(np.any(order == labels[:, None], axis=1)))


def confusion_matrix(predictions, labels, num_classes):
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    labels = _labels(labels, len(np.asarray(predictions).reshape(-1)))
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, np.asarray(predictions).reshape(-1).astype(np.int64)), 1)
    return matrix


def per_class_accuracy(logits, labels, num_classes):
    """Top-1 percentage of each class's images (NaN for a class without images)."""
    logits = _logits(logits)
    matrix = confusion_matrix(np.argmax(logits, axis=1), _labels(labels, len(logits)), num_classes)
    counts = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * np.diag(matrix) / counts, np.nan)


def expected_calibration_error(logits, labels, num_bins=ECE_BINS):
    """ECE of the softmax confidences (module docstring), as a fraction in [0, 1].

    Example (two images at confidence 0.75, one right, one wrong; one bin):
        >>> z = [[np.log(3.0), 0.0], [np.log(3.0), 0.0]]
        >>> float(round(expected_calibration_error(z, [0, 1], num_bins=1), 6))
        0.25
    """
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins={num_bins!r}: expected an integer >= 1")
    probs = softmax(logits)
    labels = _labels(labels, len(probs))
    confidence = probs.max(axis=1)
    correct = np.argmax(probs, axis=1) == labels
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        members = bins == b
        ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def soft_label_statistics(logits, labels, num_classes, temperature=4.0):
    """Entropy and off-true-class mass of softmax(logits / temperature) (module docstring).

    Returns:
        {"temperature", "mean_entropy", "mean_off_class_mass" (over all images),
         "per_class": {"entropy_mean", "entropy_std", "off_class_mass_mean",
                       "off_class_mass_std", "count"}: lists indexed by class (NaN when empty),
         "mean_over_classes": the mean over classes with images of each of those four}.
    """
    probs = softmax(logits, temperature)
    labels = _labels(labels, len(probs))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=1)
    off = 1.0 - probs[np.arange(len(labels)), labels]
    per_class = {key: [] for key in ("entropy_mean", "entropy_std", "off_class_mass_mean", "off_class_mass_std")}
    counts = []
    for c in range(num_classes):
        members = labels == c
        counts.append(int(members.sum()))
        for name, values in (("entropy", entropy), ("off_class_mass", off)):
            chosen = values[members]
            per_class[f"{name}_mean"].append(float(chosen.mean()) if len(chosen) else float("nan"))
            per_class[f"{name}_std"].append(float(chosen.std()) if len(chosen) else float("nan"))
    present = np.asarray(counts) > 0
    return {"temperature": float(temperature), "mean_entropy": float(entropy.mean()),
            "mean_off_class_mass": float(off.mean()), "per_class": {**per_class, "count": counts},
            "mean_over_classes": {k: float(np.mean(np.asarray(v)[present])) for k, v in per_class.items()}}


def evaluate_logits(logits, labels, num_classes, temperature=4.0, num_bins=ECE_BINS):
    """All metrics of a test set in one JSON-able dict.

    Args:
        logits: (N, num_classes) array.
        labels: (N,) integer labels.
        num_classes: number of classes.
        temperature: the distillation temperature of the soft-label statistics. Default 4.
        num_bins: equal-width confidence bins of the ECE. Default 15.

    Returns:
        {"num_test", "test_top1", "test_top5" (top-min(5, classes)), "per_class_accuracy" (list),
         "confusion_matrix" (list of rows), "ece", "ece_bins", "soft_labels"
         (`soft_label_statistics`)}.

    Example:
        >>> report = evaluate_logits([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [0, 1, 1], 2)
        >>> round(report["test_top1"], 2), report["per_class_accuracy"]
        (66.67, [100.0, 50.0])
    """
    logits = _logits(logits)
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, expected num_classes={num_classes}")
    labels = _labels(labels, len(logits))
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    return {
        "num_test": int(len(labels)),
        "test_top1": top_k_accuracy(logits, labels, 1),
        "test_top5": top_k_accuracy(logits, labels, 5),
        "per_class_accuracy": [float(v) for v in per_class_accuracy(logits, labels, num_classes)],
        "confusion_matrix": confusion_matrix(np.argmax(logits, axis=1), labels, num_classes).tolist(),
        "ece": expected_calibration_error(logits, labels, num_bins),
        "ece_bins": int(num_bins),
        "soft_labels": soft_label_statistics(logits, labels, num_classes, temperature),
    }


def predict(model, images, batch_size=256, embedding=True):
    """Logits (and the "embedding" output of a backbone) of normalised images, inference mode.

    Args:
        model: a keras_icckd backbone, a plain model (`keras_icckd.deploy.plain_model`; logits only) or a
            `keras_icckd.export.TFLiteRunner` (logits only).
        images: (N, H, W, C) images as the model is fed (normalised floats, or pixels for a model that
            takes them).
        batch_size: inference batch size.
        embedding: also return the backbone's embedding.

    Returns:
        (logits, embeddings or None), float32 NumPy.
    """
    import keras

    from keras_icckd.export import TFLiteRunner

    if isinstance(model, TFLiteRunner):
        return model(np.asarray(images, "float32"), chunk=batch_size), None
    if not isinstance(model.output, dict):  # a plain model (keras_icckd.deploy): its one output is the logits
        return model.predict(np.asarray(images), batch_size=batch_size, verbose=0).astype("float32"), None
    outputs = {"logits": model.output["logits"]}
    if embedding:
        outputs["embedding"] = model.output["embedding"]
    # One compiled program of just these outputs (the feature maps are not kept).
    result = keras.Model(model.inputs, outputs).predict(np.asarray(images, "float32"), batch_size=batch_size,
                                                       verbose=0)
    return result["logits"].astype("float32"), result["embedding"].astype("float32") if embedding else None


def plot_evaluation(report, path, class_names=None, title=""):
    """Writes the report's picture (atomically): confusion matrix (rows normalised to the true
    class), per-class top-1, and per-class mean soft-label entropy with its std.

    Args:
        report: a dict from `evaluate_logits`.
        path: the PNG to write.
        class_names: names of the classes (ticks for up to 20 classes).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_icckd.training.outputs import _replace_or_remove, _temp_beside

    matrix = np.asarray(report["confusion_matrix"], np.float64)
    k = len(matrix)
    names = list(class_names) if class_names is not None and len(class_names) == k else [str(i) for i in range(k)]
    soft = report["soft_labels"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    with np.errstate(invalid="ignore"):
        rows = matrix / matrix.sum(axis=1, keepdims=True)
    image = axes[0].imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=axes[0], fraction=0.046)
    axes[0].set(title="confusion (fraction of the true class)", xlabel="predicted", ylabel="true")
    positions = np.arange(k)
    if k <= 20:
        axes[0].set_xticks(positions, names, rotation=90)
        axes[0].set_yticks(positions, names)
    axes[1].bar(positions, report["per_class_accuracy"], color="tab:blue")
    axes[1].axhline(report["test_top1"], color="k", lw=1, ls="--", label=f"all: {report['test_top1']:.1f}%")
    axes[1].set(title="top-1 per class (%)", ylim=(0, 100))
    axes[1].legend()
    axes[2].bar(positions, soft["per_class"]["entropy_mean"], yerr=soft["per_class"]["entropy_std"],
                color="tab:orange", capsize=2 if k <= 20 else 0)
    axes[2].set(title=f"soft-label entropy per class at T={soft['temperature']:g} (mean +- std, nats)",
                ylim=(0, max(np.log(k), 0.1) * 1.05))
    for ax in axes[1:]:
        if k <= 20:
            ax.set_xticks(positions, names, rotation=90)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _replace_or_remove(_temp_beside(path, ".png"), path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
