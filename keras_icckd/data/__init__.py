"""Data: sources (CIFAR tarballs, image folders, TFDS, synthetic) and the input pipelines.

Two pipelines give the same batches: tf.data (`keras_icckd.data.pipeline`, the default,
imported on first use of `make_train_dataset` / `make_eval_dataset`) and a TensorFlow-free one
on `keras.utils.PyDataset` (`keras_icckd.data.numpy_pipeline`), for the JAX backend without
TensorFlow. `input_pipeline(name)` picks one by name.
"""

import importlib

from keras_icckd.data.numpy_pipeline import steps_per_epoch
from keras_icckd.data.sources import (
    BUNDLED_CIFAR10,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DataError,
    Splits,
    load_cifar_python,
    load_image_folder,
    load_tfds,
    make_synthetic,
    normalization_for,
)
from keras_icckd.data.datasets import Dataset, default_data_dir, load, names as dataset_names
from keras_icckd.data.streaming import ImageStream, open_image_stream, open_tfds_stream

PIPELINES = ("auto", "tf_data", "numpy")
_TF_NAMES = ("make_train_dataset", "make_eval_dataset")


def tensorflow_available():
    """Whether TensorFlow can be imported here (imports it when it can)."""
    try:
        importlib.import_module("tensorflow")
    except ImportError:
        return False
    return True


def input_pipeline(name="auto"):
    """The module whose `make_train_dataset` / `make_eval_dataset` build the input pipelines.

    Args:
        name: "tf_data" (`keras_icckd.data.pipeline`), "numpy" (`keras_icckd.data.numpy_pipeline`,
            no TensorFlow) or "auto": tf_data when TensorFlow can be imported, else numpy.

    Example:
        >>> input_pipeline("numpy").__name__
        'keras_icckd.data.numpy_pipeline'
    """
    if name not in PIPELINES:
        raise ValueError(f"input pipeline {name!r}: expected one of {', '.join(PIPELINES)}")
    if name == "auto":
        name = "tf_data" if tensorflow_available() else "numpy"
    if name == "tf_data" and not tensorflow_available():
        raise ValueError("the tf_data input pipeline needs TensorFlow, which cannot be imported here; "
                         "use the numpy pipeline (the same batches, no TensorFlow)")
    return importlib.import_module(
        "keras_icckd.data.pipeline" if name == "tf_data" else "keras_icckd.data.numpy_pipeline")


def __getattr__(name):  # the tf.data functions, imported (with TensorFlow) on first use
    if name in _TF_NAMES:
        return getattr(importlib.import_module("keras_icckd.data.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
