"""Per-epoch run checkpoints, so that a killed run continues exactly where it stopped.

A checkpoint is one `.npz` file holding every variable of the model (weights, BatchNorm
statistics, the teacher's cache, CRD memory banks, learnable temperatures, the Distiller's
epoch counter, seed-generator states) and of its optimizer (iteration count, which positions
the learning-rate schedule, and momentum buffers), plus a JSON record of the run so far
(completed epochs, per-epoch history, the run's settings). It is written atomically, so a
crash leaves either the previous checkpoint or the new one, never a truncated file.

Together with the stateless input pipeline (`data.make_train_dataset(..., initial_epoch=e)`
produces exactly the batches epoch e would have seen), restoring a checkpoint and calling
`fit(..., initial_epoch=e)` continues the run as if it had never stopped.
"""

import json
import math
import os
import time
import zipfile

import keras
import numpy as np

from keras_icckd.training.outputs import _replace_or_remove
from keras_icckd.training.outputs import _temp_beside

FORMAT = "keras_icckd-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or does not fit the model."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss term."""


def _state_variables(model):
    if model.optimizer is None:
        raise CheckpointError("the model must be compiled (with its optimizer) before a checkpoint "
                              "is saved or restored")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return list(model.variables) + list(model.optimizer.variables)


def save_checkpoint(model, path, record):
    """Writes the model's and its optimizer's variables plus `record` (JSON-able) to `path`."""
    variables = _state_variables(model)
    arrays = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    signature = [[v.path, list(v.shape), str(v.dtype)] for v in variables]
    meta = json.dumps({"format": FORMAT, "signature": signature, "record": record})

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(meta), **arrays)
            f.flush()
            os.fsync(f.fileno())

    _replace_or_remove(_temp_beside(path, ".npz"), path, write)


def read_checkpoint(path):
    """(record, list of arrays, signature) of a checkpoint; CheckpointError when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint {path!r} has format {meta.get('format')!r}, "
                                      f"expected {FORMAT!r}")
            arrays = [z[f"v{i}"] for i in range(len(meta["signature"]))]
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not a keras_icckd checkpoint: {e}") from e
    return meta["record"], arrays, meta["signature"]


def restore_checkpoint(model, path):
    """Assigns a checkpoint's values to the compiled `model` and its optimizer; returns its record.

    Raises CheckpointError, before assigning anything, when the checkpoint's variables do not
    match the model's in number, shape or dtype (a different architecture or objective set).
    """
    record, arrays, signature = read_checkpoint(path)
    variables = _state_variables(model)
    if len(variables) != len(arrays):
        raise CheckpointError(f"checkpoint {path!r} holds {len(arrays)} variables but the model and its "
                              f"optimizer have {len(variables)}: it was written by a different model")
    for v, a, (name, shape, dtype) in zip(variables, arrays, signature):
        if tuple(v.shape) != tuple(a.shape) or str(v.dtype) != dtype:
            raise CheckpointError(f"checkpoint {path!r}: variable {name} is {dtype}{list(a.shape)} but the "
                                  f"model's {v.path} is {v.dtype}{list(v.shape)}")
    for v, a in zip(variables, arrays):
        v.assign(a)
    return record


def epoch_row(epoch, logs, seconds=None):
    """One epoch's Keras logs as a results row: 1-based epoch, top-1 in percent, test_ prefix."""
    row = {"epoch": int(epoch) + 1}
    for key, value in (logs or {}).items():
        value = float(value)
        if key == "accuracy":
            row["train_top1"] = 100.0 * value
        elif key == "val_accuracy":
            row["test_top1"] = 100.0 * value
        elif key.startswith("val_"):
            row["test_" + key[4:]] = value
        else:
            row[key] = value
    if seconds is not None:
        row["seconds"] = seconds
    return row


class RunRecorder(keras.callbacks.Callback):
    """Keeps the per-epoch history rows and, with `path`, checkpoints the run after every epoch.

    Place it after callbacks that add to the epoch's logs (diagnostics). The record written
    with each checkpoint is `{"epoch": completed epochs, "history": rows, "elapsed": seconds
    of all sessions, **extra}`.

    Args:
        path: the checkpoint file (None: only record rows).
        history: rows of epochs completed before (when resuming).
        elapsed: wall seconds spent before (when resuming).
        extra: more JSON-able items for the record (e.g. the run's settings).
        start: `time.time()` when this session began (default: now).
    """

    def __init__(self, path=None, history=(), elapsed=0.0, extra=None, start=None):
        super().__init__()
        self.path, self.rows, self.extra = path, list(history), dict(extra or {})
        self._before, self._epoch_start = float(elapsed), None
        self._start = time.time() if start is None else float(start)

    @property
    def elapsed(self):
        return self._before + time.time() - self._start

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(epoch_row(epoch, logs, time.perf_counter() - self._epoch_start))
        if self.path:
            save_checkpoint(self.model, self.path, {"epoch": epoch + 1, "history": self.rows,
                                                    "elapsed": self.elapsed, **self.extra})


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training with `NonFiniteLossError` as soon as a logged loss term is NaN or infinite.

    The message names the epoch, the step and the terms that went non-finite (e.g. "ce",
    "intra", "kd_loss"); nothing is saved after the fault, so the last checkpoint stays the
    last good state. Keras' logged values are running means over the epoch, so the first
    step whose logs are non-finite is the step that produced the fault.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: float(v) for k, v in (logs or {}).items()
               if np.ndim(v) == 0 and not math.isfinite(float(v))}
        if bad:
            terms = [k for k in bad if k != "loss"] or ["loss"]
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self._epoch + 1}, step {batch + 1}: "
                + ", ".join(f"{k}={bad[k]}" for k in terms)
                + " (lower the learning rate, check the data, or use float32)")
