"""Run outputs written so that a crash never leaves a truncated file behind."""

import json
import math
import os
import tempfile


def _temp_beside(path, suffix):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=directory)
    os.close(fd)
    return tmp


def _replace_or_remove(tmp, path, write):
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> the mode a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(obj, path):
    """Writes JSON to a temp file beside `path`, then renames it over `path`.

    Non-finite floats are written as null (JSON has no NaN).
    """
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    atomic_write_text(json.dumps(clean(obj), indent=2, sort_keys=True) + "\n", path)


def atomic_write_text(text, path):
    """Writes `text` to a temp file beside `path`, then renames it over `path`."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _replace_or_remove(_temp_beside(path, ".tmp"), path, write)


def atomic_save_model(model, path):
    """`model.save(path)` through a temp file in the same folder and a rename."""
    if not path.endswith(".keras"):
        raise ValueError(f"model path {path!r} must end in .keras")
    _replace_or_remove(_temp_beside(path, ".keras"), path, model.save)


def load_model_file(path, role, error=ValueError):
    """Loads a .keras file written by keras_icckd, raising `error` with a clear message otherwise.

    `role` names the file in messages ("teacher file", "model file").
    """
    import zipfile

    import keras

    import keras_icckd  # noqa: F401  (registers the serialisable classes)

    if not isinstance(path, str) or not os.path.isfile(path):
        raise error(f"{role} {path!r} does not exist")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise error(f"{role} {path!r} is not a .keras model file")
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001  (Keras raises many types for foreign files)
        raise error(f"{role} {path!r} could not be loaded as a keras_icckd model: {e}") from e


def plot_curves(history, path, title=""):
    """Plots per-epoch losses, accuracies and the intra/inter-class ratio into a PNG.

    Args:
        history: list of per-epoch dicts (as stored in metrics.json).
        path: the PNG to write (atomically).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    panels = [
        ("loss", ("loss", "ce", "intra", "test_loss")),
        ("top-1 (%)", ("train_top1", "test_top1")),
        ("intra / inter-class distance", ("intra_inter_ratio",)),
        ("fraction of anchors past the margin", ("margin_pass",)),
    ]
    panels = [(label, [k for k in keys if any(k in h for h in history)]) for label, keys in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for key in keys:
            ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _replace_or_remove(_temp_beside(path, ".png"), path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
