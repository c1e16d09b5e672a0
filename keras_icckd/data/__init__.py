"""Data: sources (CIFAR tarballs, image folders, TFDS, synthetic) and tf.data pipelines."""

from keras_icckd.data.pipeline import make_eval_dataset, make_train_dataset, steps_per_epoch
from keras_icckd.data.sources import (
    BUNDLED_CIFAR10,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    SOURCES,
    DataError,
    Splits,
    default_data_dir,
    load,
    load_cifar_python,
    load_image_folder,
    load_tfds,
    make_synthetic,
    normalization_for,
)
from keras_icckd.data.streaming import ImageStream, open_image_stream, open_tfds_stream
