"""The dataset registry: every dataset a run can name, registered once, here.

Each entry says how the dataset is loaded, how many classes it has (when that is fixed), which
normalisation it is fed with, where its files are looked for when no path is given, and whether it
can be streamed. The CLI's `--dataset` choices and help, the run checks and the tests read this
registry; nothing else lists dataset names.

Adding a dataset: write its loader (a function `(data_dir, **options) -> Splits`, in a new file of
this package) and add one `register(Dataset(...))` line below.
"""

import dataclasses
import os
from typing import Callable

from keras_icckd.data import sources

_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registered dataset.

    Args:
        name: the name runs use (`--dataset`).
        loader: `(data_dir, **options) -> Splits`; data_dir is None when the dataset needs no files.
        description: one line for the CLI's help.
        num_classes: its class count, or None when it depends on the files or options.
        normalization: the key of `sources.NORMALIZATIONS` it is fed with, or None: by class count
            (CIFAR-100's constants for 100 classes, CIFAR-10's otherwise).
        default_location: `() -> path or None`, where its files are when no data_dir is given.
        needs_location: whether a run must find files (given or default) before it starts.
        streamable: whether `--stream` can read it lazily.
        options: `(config) -> dict` of loader options taken from a run configuration.
    """

    name: str
    loader: Callable
    description: str
    num_classes: int | None = None
    normalization: str | None = None
    default_location: Callable = lambda: None
    needs_location: bool = True
    streamable: bool = False
    options: Callable = lambda config: {}


def register(dataset):
    """Adds a `Dataset` to the registry (its name must be new)."""
    if dataset.name in _REGISTRY:
        raise ValueError(f"dataset {dataset.name!r} is registered already")
    _REGISTRY[dataset.name] = dataset
    return dataset


def names():
    """Registered dataset names, in registration order."""
    return tuple(_REGISTRY)


def get(name):
    """The registered `Dataset` called `name` (a `DataError` naming the valid names otherwise)."""
    if name not in _REGISTRY:
        raise sources.DataError(f"Unknown data source {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def default_data_dir(name):
    """Where `load(name)` looks when no data_dir is given (None: the source needs no files or must be told)."""
    return get(name).default_location()


def load(name, data_dir=None, **kwargs):
    """Loads a registered dataset by name.

    Args:
        name: one of `names()`: "cifar10" / "cifar100" (data_dir: the python tarball or its directory),
            "folder" (data_dir: image folder or archive, default the bundled CIFAR-10 subset),
            "tinyimagenet" (data_dir: its archive or folder, default in the data roots of
            `keras_icckd.data.locations`), "tfds" (kwargs: tfds_name, plus `load_tfds` options) or
            "synthetic" (kwargs: `make_synthetic`'s).
        data_dir: where the data is; default `default_data_dir(name)`.
        **kwargs: passed on to the dataset's loader.

    Example:
        >>> load("synthetic", num_classes=2, train_per_class=3).train_images.shape
        (6, 32, 32, 3)
    """
    dataset = get(name)
    data_dir = os.fspath(data_dir) if data_dir is not None else dataset.default_location()
    return dataset.loader(data_dir, **kwargs)


def fixed_normalization(name):
    """The normalisation key registered for a dataset name, or None (not registered, or by class count)."""
    return _REGISTRY[name].normalization if name in _REGISTRY else None


def _synthetic(data_dir, **kwargs):
    if data_dir is not None:
        raise sources.DataError(f"The synthetic source reads no files, but data_dir={data_dir!r} was given")
    return sources.make_synthetic(**kwargs)


def _tfds(data_dir, **kwargs):
    if "tfds_name" not in kwargs:
        raise sources.DataError("The tfds source needs tfds_name=<TFDS dataset name>")
    return sources.load_tfds(kwargs.pop("tfds_name"), data_dir, **kwargs)


def _cifar(variant):
    def load_cifar(data_dir, **kwargs):
        if data_dir is None:
            raise sources.DataError(f"The {variant} source needs data_dir=<path of "
                                    f"{sources.CIFAR_ARCHIVES[variant]} or its directory>")
        return sources.load_cifar_python(data_dir, variant=variant, **kwargs)
    return load_cifar


def _folder(data_dir, **kwargs):
    return sources.load_image_folder(data_dir, **kwargs)


register(Dataset("cifar10", _cifar("cifar10"), "the canonical CIFAR-10 python tarball (--data_dir, md5 checked)",
                 num_classes=10, normalization="cifar10",
                 options=lambda c: {"verify_checksum": c.verify_checksum}))
register(Dataset("cifar100", _cifar("cifar100"), "the canonical CIFAR-100 python tarball (--data_dir, md5 checked)",
                 num_classes=100, normalization="cifar100",
                 options=lambda c: {"verify_checksum": c.verify_checksum}))
register(Dataset("folder", _folder, "a split/class/image folder or archive (default: the bundled CIFAR-10 subset)",
                 default_location=lambda: sources.BUNDLED_CIFAR10, streamable=True))
register(Dataset("tfds", _tfds, "a prepared TFDS dataset (--tfds_name; --data_dir default $TFDS_DATA_DIR or "
                 "~/tensorflow_datasets)", default_location=sources.default_tfds_dir, streamable=True,
                 options=lambda c: {"tfds_name": c.tfds_name, "test_split": c.tfds_test_split}))
register(Dataset("synthetic", _synthetic, "learnable random images made in memory (--synthetic_*)",
                 needs_location=False,
                 options=lambda c: {"num_classes": c.synthetic_classes, "train_per_class": c.synthetic_train_per_class,
                                    "test_per_class": c.synthetic_test_per_class,
                                    "subclasses": c.synthetic_subclasses, "seed": c.seed}))
register(Dataset("tinyimagenet", lambda data_dir, **kw: sources.load_tinyimagenet(data_dir, **kw),
                 "Tiny-ImageNet 200 (its JPEG archive or folder; default in $KERAS_ICCKD_DATA or the "
                 "checkout's ../shared/datasets)", num_classes=200, normalization="tinyimagenet",
                 default_location=sources.default_tinyimagenet_path))
