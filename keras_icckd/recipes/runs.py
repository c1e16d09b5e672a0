"""The runs themselves, as library API: train a teacher, distil a student, import a PyTorch checkpoint,
evaluate and export a model, each from a `RunConfig`, with every check, resume and output that the
command line has (the command line is a thin layer over these functions).

    >>> from keras_icckd import recipes
    >>> config = recipes.RunConfig(mode="teacher", arch="resnet8", dataset="synthetic", epochs=2,
    ...                            output_dir="runs/teacher")                      # doctest: +SKIP
    >>> outputs = recipes.run(config)                                               # doctest: +SKIP
    >>> outputs.results["test_top1"], outputs.files["model"]                        # doctest: +SKIP

A training run writes model.keras, metrics.json, curves.png, checkpoint.npz (resumed from when the
same configuration runs again) and tensorboard/ into `output_dir`.
"""

import dataclasses
import json
import logging as _logging
import math
import os
import shutil
import sys
import time
import warnings

from keras_icckd.data import datasets
from keras_icckd.recipes import checks
from keras_icckd.recipes.config import RESUMABLE_CHANGES
from keras_icckd.recipes.config import ConfigError
from keras_icckd.recipes.config import RunConfig

logging = _logging.getLogger("keras_icckd")


class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss; the message names the epoch, the step, the term and the
    last good checkpoint."""


class ExportFailed(RuntimeError):
    """An export whose files did not pass their verification (nothing is left behind)."""


@dataclasses.dataclass
class RunOutputs:
    """What a run produced: `results` (what its metrics.json or export.json holds; None on the processes
    of a multi-host run that do not write) and `files` ({"model": path, "metrics": path, ...})."""

    results: dict | None
    files: dict


def run(config, callbacks=()):
    """Runs `config.mode` ("teacher", "student", "import", "evaluate" or "export"); returns `RunOutputs`.

    Args:
        config: a `RunConfig`.
        callbacks: Keras callbacks added to a training run's own (teacher and student modes).

    Raises:
        ConfigError: the configuration cannot run (before any work, where it can be known before).
        TrainingStopped: a non-finite loss stopped training.
        ExportFailed: an exported file did not match the Keras model.
    """
    return {"teacher": train_teacher, "student": distil_student, "import": import_torch,
            "evaluate": evaluate, "export": export}[_mode(config)](config, **({"callbacks": callbacks}
                                                                          if config.mode in ("teacher", "student")
                                                                          else {}))


def train_teacher(config, callbacks=()):
    """Trains a `ContrastiveTeacher` (CE + lambda * L_intra; lambda 0: a CE teacher) as `config` says:
    from `config.arch` or the weights of `config.init_model`, with the views its objective needs."""
    return _training_run(_as_mode(config, "teacher"), callbacks)


def distil_student(config, callbacks=()):
    """Trains `config.student_arch` from the `config.teacher` file with `config.objectives` (a `Distiller`),
    or with cross-entropy alone when no teacher is given (a `Classifier`); saves the plain student."""
    return _training_run(_as_mode(config, "student"), callbacks)


def import_torch(config):
    """Imports `config.torch_checkpoint` (a PyTorch CIFAR network) as a backbone; with a dataset given,
    measures its test top-1."""
    config = _as_mode(config, "import")
    checks.validate(config)
    return run_import(config)


def evaluate(config):
    """Evaluates `config.model` (.keras or .tflite) on the dataset's test images: top-1/5, per class, ECE,
    soft-label statistics, intra/inter-class distances; writes metrics.json and evaluation.png."""
    config = _as_mode(config, "evaluate")
    checks.validate(config)
    return run_evaluate(config)


def export(config):
    """Exports the `config.model` student to TFLite files, each verified against Keras on test images."""
    config = _as_mode(config, "export")
    checks.validate(config)
    return run_export(config)


def _mode(config):
    if not isinstance(config, RunConfig):
        raise TypeError(f"expected a keras_icckd.recipes.RunConfig, got {type(config).__name__}")
    return config.mode


def _as_mode(config, mode):
    if _mode(config) != mode:
        raise ConfigError(f"--mode={config.mode!r} is not allowed: expected {mode!r} for this function "
                          f"(or call keras_icckd.recipes.run, which runs any mode)")
    return config


def _training_run(config, callbacks):
    """Checks, devices, the teacher file first (a foreign or mismatched one fails before any data is read),
    then the run; the dtype policy is set for the run and put back after it."""
    import keras

    checks.validate(config)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.dtype_policy)
    try:
        factor = set_up_devices(config)
        if config.mode == "teacher":
            builder = lambda splits, steps: build_teacher(config, splits, steps)  # noqa: E731
        else:
            teacher = load_student_teacher(config) if config.teacher else None
            builder = lambda splits, steps: build_student(config, splits, steps, teacher)  # noqa: E731
        return _train(config, builder, factor, list(callbacks))
    finally:
        keras.config.set_dtype_policy(policy)


def load_stream(config):
    """--stream: the ImageStream of --dataset=folder or tfds (an index in memory, images read lazily)."""
    from keras_icckd.data import streaming

    size = config.image_size or 224
    if config.dataset == "tfds":
        stream = streaming.open_tfds_stream(config.tfds_name, config.data_dir, test_split=config.tfds_test_split,
                                            image_size=size, resize_size=config.eval_resize or None,
                                            shuffle_window=config.shuffle_window)
    else:
        stream = streaming.open_image_stream(config.data_dir, image_size=size, resize_size=config.eval_resize or None)
    return stream.subset(config.max_train_examples or None, config.max_test_examples or None, seed=config.seed)


def is_stream(splits):
    """Whether the data is an ImageStream (--stream) rather than in-memory Splits."""
    from keras_icckd.data import streaming

    return isinstance(splits, streaming.ImageStream)


def normalization_of(splits):
    from keras_icckd import data

    return (splits.mean, splits.std) if is_stream(splits) else data.normalization_for(splits)


def count(splits, split):
    """Number of images of a split ("train" or "test")."""
    if is_stream(splits):
        return splits.num_train if split == "train" else splits.num_test
    return len(getattr(splits, f"{split}_labels"))


def image_shape(splits):
    return tuple(splits.image_shape) if is_stream(splits) else tuple(splits.train_images.shape[1:])


def eval_sample(config, splits, n, split="test", normalization=None):
    """(normalised float32 images, labels) of n class-balanced images of a split, in memory.

    `normalization`: the (mean, std) to normalise with; default the dataset's."""
    mean, std = normalization_of(splits)
    if is_stream(splits):
        if splits.train_labels is None:  # TFDS: the first n, in stored (shuffled) order
            images, labels = stream_head(splits, n, split)
        else:
            images, labels = splits.subset(**{f"max_{split}": n}, seed=config.seed).eval_arrays(split)
        if normalization is not None:  # the stream's normalisation -> the one asked for
            images = renormalise(images, (mean, std), normalization)
        return images, labels
    sample = splits.subset(**{f"max_{split}": n}, seed=config.seed)
    mean, std = normalization or (mean, std)
    return normalise(getattr(sample, f"{split}_images"), mean, std), getattr(sample, f"{split}_labels")


def renormalise(images, source, target):
    """Images normalised with source = (mean, std) as normalised with target = (mean, std)."""
    import numpy as np

    (m0, s0), (m1, s1) = [(np.asarray(m, "float32"), np.asarray(s, "float32")) for m, s in (source, target)]
    return ((images * s0 + m0) - m1) / s1


def stream_head(stream, n, split):
    import numpy as np

    batches = stream.eval_dataset(min(n, 256), split).unbatch().take(n).batch(n).as_numpy_iterator()
    images, labels = next(batches)
    return images, np.asarray(labels, np.int32)


def load_splits(config):
    from keras_icckd import data

    if config.stream:
        return load_stream(config)
    splits = data.load(config.dataset, config.data_dir, **datasets.get(config.dataset).options(config))
    if config.max_train_examples or config.max_test_examples:
        splits = splits.subset(config.max_train_examples or None, config.max_test_examples or None,
                               seed=config.seed)
    if config.image_size:
        splits = splits.resized(config.image_size)
    return splits


def normalise(images, mean, std):
    """uint8 images -> float32 (pixels / 255 - mean) / std, as the input pipeline feeds them."""
    import numpy as np

    return (images.astype("float32") / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")


def check_fits_data(config, flag, model, splits):
    """Refuses a --teacher / --model whose classes or input shape differ from the dataset's."""
    classes, shape = int(model.output["logits"].shape[-1]), tuple(model.input.shape[1:])
    data_shape = image_shape(splits)
    if classes != splits.num_classes or shape != data_shape:
        raise ConfigError(
            f"--{flag}={getattr(config, flag)!r} was trained for {classes} classes on {shape} images, but "
            f"--dataset={config.dataset} has {splits.num_classes} classes of {data_shape} images")
    from keras_icckd import backbones

    try:  # an imported model records the normalisation it must be fed
        backbones.check_feed_normalization(model, *normalization_of(splits),
                                           what=f"--{flag}={getattr(config, flag)!r}")
    except ValueError as e:
        raise ConfigError(f"{e} (--dataset={config.dataset})")


def teacher_record(path, teacher):
    """(dataset name, mean, std, where it was read) of the images a --teacher trained by this project was fed:
    the metadata saved in its file, or for files written before models carried metadata, the run's metrics.json
    beside it. None when neither tells (e.g. a wrapped Keras model). The dataset is None when not recorded; mean
    and std are None for a model with an imported input layer (it records the normalisation it must be fed,
    which `check_fits_data` checks)."""
    imported = getattr(teacher, "input_normalization", None) is not None
    metadata = getattr(teacher, "metadata", None) or {}
    if "normalization" in metadata:
        norm = metadata["normalization"]
        mean, std = (None, None) if imported else (list(map(float, norm["mean"])), list(map(float, norm["std"])))
        return metadata.get("dataset"), mean, std, "recorded in the file"
    record = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
    try:
        with open(record) as f:
            run_ = json.load(f)
        if run_.get("mode") not in ("teacher", "student"):
            return None
        if imported:
            return run_.get("dataset"), None, None, record
        return (run_.get("dataset"), list(map(float, run_["normalization"]["mean"])),
                list(map(float, run_["normalization"]["std"])), record)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_teacher_run(config, splits, teacher):
    """--teacher trained by this project (`teacher`: it, loaded): refuses a teacher trained on images
    normalised otherwise than this run's (it would see shifted inputs), and warns when it was trained on
    another dataset (e.g. a synthetic teacher for real images: its soft labels are noise)."""
    recorded = teacher_record(config.teacher, teacher)
    if recorded is None:
        return
    name, trained_mean, trained_std, source = recorded
    mean, std = (list(map(float, v)) for v in normalization_of(splits))
    close = (lambda a, b: len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b)))
    if trained_mean is not None and not (close(trained_mean, mean) and close(trained_std, std)):
        raise ConfigError(f"--teacher={config.teacher!r} was trained on {name} images normalised with mean "
                          f"{trained_mean}, std {trained_std} ({source}), but --dataset={config.dataset} "
                          f"({splits.name}) feeds mean {mean}, std {std}")
    if name is not None and name != splits.name:
        logging.warning("--teacher=%s was trained on %s (%s), this run distils on %s: its soft labels only help "
                        "if the images are alike", config.teacher, name, source, splits.name)


RUN_OUTPUTS = ("checkpoint.npz", "model.keras", "metrics.json", "curves.png", "log.csv")  # a training run's files


def resume_point(config, path):
    """(record, completed epochs) of the run's checkpoint, or (None, 0) for a fresh start."""
    from keras_icckd import training

    directory, writer = os.path.dirname(path), config.process_id == 0
    for name in os.listdir(directory) if writer else ():  # temp files of writes that a kill interrupted
        if name.startswith(tuple(f".{n}." for n in RUN_OUTPUTS)):
            os.remove(os.path.join(directory, name))
    if not os.path.exists(path):
        finished = os.path.join(directory, "metrics.json")
        if config.resume and os.path.exists(finished):
            raise ConfigError(f"--output_dir={config.output_dir!r} holds a finished run ({finished}) without the "
                                 "checkpoint.npz to resume from; use another --output_dir, or --noresume to train "
                                 "anew there (replacing its outputs)")
        return None, 0
    if not config.resume:  # the earlier run's files are removed when the new one starts training (run)
        return None, 0
    try:
        record = training.read_checkpoint(path)[0]
    except training.CheckpointError as e:
        raise ConfigError(f"{e}; delete it or pass --noresume to start over")
    settings = {k: v for k, v in config.values().items() if k not in RESUMABLE_CHANGES}
    saved = {k: v for k, v in record.get("flags", {}).items() if k not in RESUMABLE_CHANGES}
    for k in set(settings) - set(saved):  # a flag newer than the checkpoint ran at its default
        saved[k] = config.defaults()[k]
    changed = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
    if changed:
        diff = ", ".join(f"--{k}={saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ConfigError(f"--output_dir={config.output_dir!r} holds a checkpoint of a run with other "
                             f"flags ({diff}); use another --output_dir, or --noresume to start over")
    return record, int(record["epoch"])


def build_teacher(config, splits, steps):
    """--mode=teacher: a ContrastiveTeacher (lambda 0: the CE teacher). Returns the run's pieces."""
    from keras_icckd.models import ContrastiveTeacher

    # A CE teacher (one view) leaves the projection head without gradients, as intended.
    warnings.filterwarnings("ignore", message=r"Gradients do not exist for variables \['projection_")
    if config.init_model:
        from keras_icckd.models import load_teacher

        try:
            backbone = load_teacher(config.init_model)
        except ValueError as e:
            raise ConfigError(f"--init_model={config.init_model!r}: {e}")
        check_fits_data(config, "init_model", backbone, splits)
    else:
        backbone = new_backbone(config, "arch", splits)
    arch = backbone.name
    teacher = ContrastiveTeacher(
        backbone, icc_lambda=config.icc_lambda, icc_delta=config.icc_delta, icc_tau=config.icc_tau,
        icc_cache_size=config.icc_cache_size, icc_margin_mode=config.icc_margin_mode,
        projection_dim=config.icc_projection_dim)
    data_options = teacher.data_options()  # two views when the intra-class term is on
    if config.views != "auto":  # e.g. the two-view CE control: lambda 0 with two views
        data_options["views"] = int(config.views)
    return dict(model=teacher, saved=teacher, backbone=backbone,
                data_options=data_options, title=f"{arch} teacher, lambda={config.icc_lambda}",
                results={"arch": arch, "init_model": config.init_model and os.path.abspath(config.init_model)})


def new_backbone(config, flag, splits):
    """The --arch / --student_arch backbone for the data's classes and image size (an image size that the
    network's downsampling reduces to nothing is a usage error)."""
    from keras_icckd import backbones

    shape = image_shape(splits)
    try:
        return backbones.get(getattr(config, flag), num_classes=splits.num_classes, input_shape=shape)
    except ValueError as e:
        import re

        size = f"--image_size={config.image_size}" if config.image_size else "the size the data is read at"
        # Keras wraps the reason in the failing layer's call: keep the reason, without terminal colours
        lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
        reason = [line for line in lines if not line.startswith(("Exception encountered", "Arguments received", "•"))]
        raise ConfigError(f"--{flag}={getattr(config, flag)!r} cannot be built for {shape[0]}x{shape[1]} images "
                             f"({size}): {(reason or lines)[0]}")


def load_student_teacher(config):
    """--mode=student: the --teacher model, checked against the dataset's class count right away when
    the configuration tells it (the registry's fixed class counts; synthetic's option), before any data
    is read."""
    from keras_icckd.models import load_teacher

    try:
        teacher = load_teacher(config.teacher)
    except ValueError as e:
        raise ConfigError(f"--teacher={config.teacher!r}: {e}")
    classes = int(teacher.output["logits"].shape[-1])
    expected = (config.synthetic_classes if config.dataset == "synthetic"
                else datasets.get(config.dataset).num_classes)
    if expected is not None and classes != expected:
        raise ConfigError(f"--teacher={config.teacher!r} was trained for {classes} classes, but "
                          f"--dataset={config.dataset} has {expected} classes")
    return teacher


def build_plain_student(config, splits):
    """--mode=student without --teacher: the --student_arch backbone trained with CE alone, saved plain."""
    from keras_icckd.models import Classifier

    student = new_backbone(config, "student_arch", splits)
    model = Classifier(student)
    return dict(model=model, saved=student, backbone=student, data_options=model.data_options(),
                title=f"{config.student_arch} student, cross-entropy alone",
                results={"arch": config.student_arch, "teacher": None, "objectives": {}, "ce_weight": 1.0})


def build_student(config, splits, steps, teacher=None):
    """--mode=student: a Distiller from the --teacher file (`teacher`: it, loaded) into a --student_arch student."""
    from keras_icckd.models import Distiller

    if not config.teacher:
        return build_plain_student(config, splits)
    teacher = teacher or load_student_teacher(config)
    check_fits_data(config, "teacher", teacher, splits)
    check_teacher_run(config, splits, teacher)
    student = new_backbone(config, "student_arch", splits)
    try:
        distiller = Distiller(teacher, student, config.objectives, ce_weight=config.ce_weight,
                              num_train=count(splits, "train"))
        data_options = distiller.data_options()
        for objective in distiller.objective_layers:
            if getattr(objective, "experimental", False):
                logging.warning("objective %r is EXPERIMENTAL (reconstructed from the paper's abstract; "
                                "see its docstring)", objective.name)
    except ValueError as e:
        raise ConfigError(f"--objectives={config.objectives!r} with teacher {teacher.name} and student "
                             f"{config.student_arch}: {e}")
    return dict(model=distiller, saved=student, backbone=student, data_options=data_options,
                title=f"{config.student_arch} <- {teacher.name}, {config.objectives}",
                results={"arch": config.student_arch, "teacher": os.path.abspath(config.teacher),
                         "teacher_arch": teacher.name, "objectives": distiller.weighted_objectives,
                         "ce_weight": config.ce_weight},
                teacher=teacher)


def _train(config, builder, factor, user_callbacks=()):
    """Loads the data, builds the mode's model, trains it, writes model.keras, metrics.json, curves.png.

    `factor`: the data-parallel device count of the distribution that `set_up_devices` set;
    `user_callbacks`: Keras callbacks added to the run's own.
    """
    import keras
    import numpy as np

    from keras_icckd import data
    from keras_icckd import training
    from keras_icckd import version
    from keras_icckd.data import augment

    start = time.time()
    checkpoint_path = os.path.join(config.output_dir, "checkpoint.npz")
    record, initial_epoch = resume_point(config, checkpoint_path)
    keras.utils.set_random_seed(config.seed)
    from keras_icckd.training import distribution

    splits = load_splits(config)
    mean, std = normalization_of(splits)
    num_train = count(splits, "train")
    if config.batch_size > num_train:
        raise ConfigError(f"--batch_size={config.batch_size} is larger than the {num_train} training images")
    sizes = {"--batch_size": config.batch_size, "--eval_batch_size": config.eval_batch_size,
             "--max_test_examples": count(splits, "test"),
             "--diagnostic_examples": min(config.diagnostic_examples, count(splits, "test"))}
    try:
        distribution.check_even_split(sizes, factor)
    except ValueError as e:
        raise ConfigError(f"{e} (--distribution={config.distribution}); every batch is split evenly")
    steps = data.steps_per_epoch(num_train, config.batch_size)
    run_ = builder(splits, steps)
    model = run_["model"]
    views = run_["data_options"].get("views", 1)
    train_ds = None
    # TensorFlow's workers split tf.data through Keras (validate_flags refuses the numpy pipeline
    # there); each JAX process reads its own share (the NumPy pipeline, or the stream) and Keras is
    # told not to split it again.
    shard = {"shard": (config.process_id, config.num_processes)} if checks.several_jax_processes(config) else {}
    if shard and keras.distribution.distribution() is not None:
        keras.distribution.distribution().auto_shard_dataset = False
    if is_stream(splits):  # tf.data streaming; validate_flags refuses --stream with --input_pipeline=numpy
        if initial_epoch < config.epochs:
            train_ds = splits.train_dataset(config.batch_size, seed=config.seed, epochs=config.epochs,
                                            initial_epoch=initial_epoch, **run_["data_options"], **shard)
        test_ds, pipeline_name = splits.eval_dataset(config.eval_batch_size, **shard), "tf.data streaming"
    else:
        pipeline = data.input_pipeline("numpy" if shard else config.input_pipeline)
        if initial_epoch < config.epochs:
            train_ds = pipeline.make_train_dataset(
                splits.train_images, splits.train_labels, config.batch_size, seed=config.seed, mean=mean,
                std=std, epochs=config.epochs, initial_epoch=initial_epoch, **run_["data_options"], **shard)
            train_ds = augment.augmented(train_ds, config.augment, seed=config.seed, mean=mean, std=std,
                                         num_classes=splits.num_classes, steps=steps, initial_epoch=initial_epoch,
                                         epochs=config.epochs)
        test_ds = pipeline.make_eval_dataset(splits.test_images, splits.test_labels,
                                             config.eval_batch_size, mean=mean, std=std, **shard)
        pipeline_name = pipeline.__name__
    logging.info("data: %s, %d train / %d test images, %d classes, %d view(s), input pipeline %s", splits.name,
                 num_train, count(splits, "test"), splits.num_classes, views, pipeline_name)
    schedule = training.epoch_step_decay(
        config.lr, steps, [int(e) for e in config.lr_decay_epochs if int(e) < config.epochs],
        config.lr_decay_rate, warmup_epochs=config.lr_warmup_epochs)
    if config.optimizer == "torch_sgd":
        optimizer = training.TorchSGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None)
    jit = {"auto": keras.backend.backend() == "jax", "true": True, "false": False}[config.jit_compile]
    model.compile(optimizer=optimizer, jit_compile=jit)
    if record is not None:
        try:
            training.restore_checkpoint(model, checkpoint_path)
        except training.CheckpointError as e:
            raise ConfigError(f"{e}; delete it or pass --noresume to start over")
        if initial_epoch < config.epochs:
            logging.info("resuming %s after epoch %d of %d", config.output_dir, initial_epoch, config.epochs)
        else:
            logging.info("%s holds a finished run (%d epochs): writing its outputs again without training; "
                         "--noresume trains it anew", config.output_dir, config.epochs)

    writer = config.process_id == 0  # multi-host: process 0 writes, every process reads the checkpoint
    if record is None and writer:
        # A fresh start (no checkpoint, or --noresume): an earlier run's outputs go now that the data and
        # the model are ready, so that a failure from here on cannot leave them looking like this run's
        # (its TensorBoard logs too: they would be drawn as one run with the new one's).
        for name in RUN_OUTPUTS:
            if os.path.exists(os.path.join(config.output_dir, name)):
                os.remove(os.path.join(config.output_dir, name))
        shutil.rmtree(os.path.join(config.output_dir, "tensorboard"), ignore_errors=True)
    callbacks = []
    several = config.num_processes > 1  # predict() cannot return arrays that span other processes' devices
    if config.diagnostic_examples and several:
        logging.warning("--diagnostic_examples: the class-distance diagnostics are off with --num_processes > 1")
    if config.diagnostic_examples and not several:
        n = min(config.diagnostic_examples, count(splits, "test"))
        callbacks.append(training.ClassDistanceDiagnostics(run_["backbone"], *eval_sample(config, splits, n),
                                                           config.eval_batch_size))
    recorder = training.RunRecorder(checkpoint_path if writer else None, history=record["history"] if record else (),
                                    elapsed=record["elapsed"] if record else 0.0,
                                    extra={"flags": config.values()}, start=start)
    callbacks += [training.StopOnNonFinite(), recorder, *user_callbacks]
    if config.tensorboard and writer and not data.tensorflow_available():
        logging.warning("--tensorboard: TensorBoard logs need TensorFlow, which cannot be imported here; "
                        "none are written (--notensorboard silences this)")
    elif config.tensorboard and writer:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.output_dir, "tensorboard"),
                                                     write_graph=False))
    if writer:  # every epoch's logs in Keras' CSVLogger format, continued on resume
        callbacks.append(keras.callbacks.CSVLogger(os.path.join(config.output_dir, "log.csv"),
                                                   append=record is not None))
    if train_ds is not None:
        try:
            model.fit(train_ds, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=test_ds, callbacks=callbacks, shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)
        except training.NonFiniteLossError as e:
            last = f"{checkpoint_path} (after epoch {len(recorder.rows)})" if recorder.rows \
                else "none (no epoch completed)"
            log = os.path.join(config.output_dir, "log.csv")
            if writer and not recorder.rows and os.path.exists(log):  # a log of no finished epoch
                os.remove(log)
            raise TrainingStopped(f"training stopped: {e}. Last good checkpoint: {last}") from e
    rows = recorder.rows
    if several:  # process 0 writes alone: no more collective operations (a new variable would be one)
        distribution.configure("none")
    if not writer:
        logging.info("process %d: training done; process 0 writes the outputs", config.process_id)
        return RunOutputs(None, {})

    model_path = os.path.join(config.output_dir, "model.keras")
    metrics_path = os.path.join(config.output_dir, "metrics.json")
    curves_path = os.path.join(config.output_dir, "curves.png")
    record_metadata(run_["backbone"], splits, mean, std)
    training.atomic_save_model(run_["saved"], model_path)
    tops = [r["test_top1"] for r in rows if "test_top1" in r]
    results = {
        "mode": config.mode, **run_["results"], "dataset": splits.name,
        "num_classes": splits.num_classes, "num_train": num_train,
        "num_test": count(splits, "test"), "views": views,
        "normalization": {"mean": list(mean), "std": list(std)},
        "test_top1": tops[-1], "best_test_top1": max(tops), "best_epoch": 1 + tops.index(max(tops)),
        "history": rows, "flags": config.values(), "backend": keras.backend.backend(),
        "keras_version": keras.__version__, "code": version.code_version(), "wall_seconds": recorder.elapsed,
    }
    # A TFDS stream has no label index; several processes: a predict() on process 0 alone would wait
    # for the others.
    if "teacher" in run_ and getattr(splits, "test_labels", None) is not None and not several:
        logits = run_["teacher"].predict(test_ds, verbose=0)["logits"]
        results["teacher_test_top1"] = 100.0 * float(np.mean(np.argmax(logits, -1) == splits.test_labels))
    if rows and "intra_inter_ratio" in rows[-1]:
        results["intra_inter_ratio"] = rows[-1]["intra_inter_ratio"]
    training.atomic_write_json(results, metrics_path)
    training.plot_curves(rows, curves_path, title=run_["title"])
    return RunOutputs(results, {"model": model_path, "metrics": metrics_path, "curves": curves_path})


def record_metadata(backbone, splits, mean, std):
    """Writes what travels with a saved model into its backbone: normalisation, class names, input, dataset."""
    from keras_icckd import deploy

    names = list(getattr(splits, "class_names", None) or [])
    backbone.set_metadata(deploy.make_metadata(
        normalization={"mean": list(mean), "std": list(std)}, input_shape=tuple(backbone.input.shape[1:]),
        class_names=names if len(names) == backbone.num_classes else None, dataset=splits.name))


STREAM_EXPORT_TEST_IMAGES = 1000


def model_normalization(recorded, splits, what):
    """(mean, std) a model is fed: `recorded` (its metadata's {"mean", "std"}), else the dataset's; a recorded
    one that differs from the dataset's is logged (the model's wins: it is what the weights were trained on)."""
    import numpy as np

    mean, std = normalization_of(splits)
    if recorded is None:
        return list(map(float, mean)), list(map(float, std))
    if not (np.allclose(recorded["mean"], mean, atol=1e-6) and np.allclose(recorded["std"], std, atol=1e-6)):
        logging.warning("%s records the normalisation mean %s, std %s, which --dataset=%s does not use (mean %s, "
                        "std %s): the recorded one is applied", what, recorded["mean"], recorded["std"], splits.name,
                        list(mean), list(std))
    return list(recorded["mean"]), list(recorded["std"])


def run_export(config):
    """--mode=export: the --model student to --export_formats in output_dir, each verified on test images."""
    from keras_icckd import export

    try:
        student = export.load_student(config.model)
    except export.ExportError as e:
        raise ConfigError(f"--model={config.model!r}: {e}")
    splits = load_splits(config)
    check_fits_data(config, "model", student, splits)
    mean, std = model_normalization((student.metadata or {}).get("normalization"), splits,
                                    f"--model={config.model!r}")
    representative = None
    if "litert" in config.export_formats and "int8" in config.export_quantizations:
        n = min(config.representative_examples, count(splits, "train"))
        representative = eval_sample(config, splits, n, "train", normalization=(mean, std))[0]
    # A stream verifies on a class-balanced sample (--max_test_examples, default STREAM_EXPORT_TEST_IMAGES).
    test_images, test_labels = eval_sample(config, splits, min(config.max_test_examples or STREAM_EXPORT_TEST_IMAGES,
                                                        count(splits, "test")) if is_stream(splits)
                                           else count(splits, "test"), normalization=(mean, std))
    logging.info("exporting %s to %s: verified on %d %s test images", config.model, ", ".join(config.export_formats),
                 len(test_labels), splits.name)
    class_names = (student.metadata or {}).get("class_names") or list(splits.class_names)
    try:
        report = export.export_model(
            student, config.output_dir, formats=config.export_formats, input_format=config.export_input,
            test_images=test_images, test_labels=test_labels,
            representative_images=representative, quantizations=config.export_quantizations,
            int8_io=config.export_int8_io, batch_size=config.export_batch_size or None,
            parity_tolerance=config.parity_tolerance, normalization={"mean": mean, "std": std},
            class_names=class_names if len(class_names) == student.num_classes else None)
    except export.ExportError as e:
        raise ExportFailed(f"export failed: {e}") from e
    report = dict(report, dataset=splits.name)
    return RunOutputs(report, {"report": os.path.join(config.output_dir, "export.json")})


def run_import(config):
    """--mode=import: --torch_checkpoint -> output_dir/model.keras (+ test top-1 with --dataset)."""
    import keras
    import numpy as np

    from keras_icckd import backbones, data, evaluation, training
    from keras_icckd.data import sources

    splits, feed, input_shape = None, None, (32, 32, 3)
    if config.is_given("dataset"):
        splits = load_splits(config)
        feed, input_shape = sources.feed_normalization_name(splits.name, splits.num_classes), splits.test_images.shape[1:]
    try:
        model = backbones.from_torch(config.torch_checkpoint, config.arch if config.is_given("arch") else None,
                                     torch_normalization=config.torch_normalization, feed_normalization=feed,
                                     input_shape=input_shape)
    except backbones.TorchImportError as e:
        raise ConfigError(f"--torch_checkpoint={config.torch_checkpoint!r}: {e}")
    normalization = model.input_normalization
    results = {"mode": "import", "arch": model.name, "torch_checkpoint": os.path.abspath(config.torch_checkpoint),
               "num_classes": model.num_classes, "torch_normalization": normalization["network"],
               "feed_normalization": normalization["feed"],
               "parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
               "flags": config.values(), "backend": keras.backend.backend(), "keras_version": keras.__version__}
    if splits is not None:
        check_fits_data(config, "torch_checkpoint", model, splits)
        mean, std = data.normalization_for(splits)
        logits, _ = evaluation.predict(model, normalise(splits.test_images, mean, std), config.eval_batch_size,
                                       embedding=False)
        results.update(dataset=splits.name, num_test=len(splits.test_labels),
                       test_top1=evaluation.top_k_accuracy(logits, splits.test_labels, 1),
                       test_top5=evaluation.top_k_accuracy(logits, splits.test_labels, 5))
    if splits is not None:
        record_metadata(model, splits, *data.normalization_for(splits))
    else:
        model.set_metadata({"normalization": {"mean": normalization["feed"]["mean"], "std": normalization["feed"]["std"]},
                            "input_shape": list(input_shape)})
    model_path = os.path.join(config.output_dir, "model.keras")
    metrics_path = os.path.join(config.output_dir, "metrics.json")
    training.atomic_save_model(model, model_path)
    training.atomic_write_json(results, metrics_path)
    return RunOutputs(results, {"model": model_path, "metrics": metrics_path})


def plain(model):
    """Whether `model` is a plain model (keras_icckd.deploy.load_plain) rather than a backbone or a TFLite file."""
    return hasattr(model, "keras_icckd_metadata") and not isinstance(getattr(model, "output", None), dict)


def run_evaluate(config):
    """--mode=evaluate: metrics.json and evaluation.png of --model on the test set: a .keras file of a run (a
    backbone or teacher), an exported plain .keras file or a .tflite file."""
    import keras

    from keras_icckd import deploy, evaluation, export, training

    path = config.model
    if path.endswith(".tflite"):
        try:
            model = export.TFLiteRunner(path)
        except Exception as e:  # noqa: BLE001  (the interpreter raises several types on bad files)
            raise ConfigError(f"--model={path!r} is not a readable .tflite file: {e}")
        classes, shape = int(model.output["shape"][-1]), tuple(int(d) for d in model.input["shape"][1:])
        name = os.path.basename(path)
    else:
        try:
            model = export.load_student(path)
        except export.ExportError as e:
            try:  # an exported plain model (--export_formats=keras): built-in layers, logits out
                model = deploy.load_plain(path)
            except export.ExportError as bad:
                raise ConfigError(f"--model={path!r}: {bad}")
            if model is None:
                raise ConfigError(f"--model={path!r}: {e}, nor a plain model exported with --export_formats=keras "
                                  "(its metadata names no input format, or it has more than one input or output)")
        classes = int(model.outputs[0].shape[-1]) if plain(model) else model.num_classes
        shape, name = tuple(model.input.shape[1:]), model.name
    splits = load_splits(config)
    data_shape = tuple(splits.test_images.shape[1:])
    if classes != splits.num_classes or shape != data_shape:
        raise ConfigError(f"--model={path!r} was made for {classes} classes of {shape} images, but "
                             f"--dataset={config.dataset} has {splits.num_classes} classes of {data_shape} images")
    if path.endswith(".tflite"):  # the file's metadata (or, for older files, export.json beside it)
        metadata = deploy.read_metadata(path)
        report_path = os.path.join(os.path.dirname(path), "export.json")
        if metadata is None and os.path.isfile(report_path):
            metadata = {"normalization": json.load(open(report_path)).get("normalization")}
        metadata = metadata or {}
    elif plain(model):
        metadata = model.keras_icckd_metadata
    else:
        check_fits_data(config, "model", model, splits)
        metadata = model.metadata or {}
    input_format = metadata.get("input_format", "normalized")
    mean, std = model_normalization(metadata.get("normalization"), splits, f"--model={path!r}")
    logging.info("evaluating %s on %d %s test images", path, len(splits.test_labels), splits.name)
    images = (splits.test_images.astype("uint8" if input_format == "uint8" and plain(model) else "float32")
              if input_format != "normalized" else normalise(splits.test_images, mean, std))
    logits, _ = evaluation.predict(model, images, config.eval_batch_size, embedding=False)
    kind = "tflite" if path.endswith(".tflite") else "keras (plain)" if plain(model) else "keras"
    results = {"mode": "evaluate", "model": os.path.abspath(path), "format": kind, "arch": name,
               "dataset": splits.name, "num_classes": splits.num_classes, "class_names": list(splits.class_names),
               "normalization": {"mean": list(mean), "std": list(std)},
               **evaluation.evaluate_logits(logits, splits.test_labels, splits.num_classes,
                                            temperature=config.evaluate_temperature)}
    if kind == "keras" and config.diagnostic_examples:  # the embedding: a backbone's second output
        sample = splits.subset(max_test=min(config.diagnostic_examples, len(splits.test_labels)), seed=config.seed)
        _, embeddings = evaluation.predict(model, normalise(sample.test_images, mean, std), config.eval_batch_size)
        results["class_distances"] = {"num_examples": len(sample.test_labels),
                                      **training.class_distance_stats(embeddings, sample.test_labels)}
    results.update(flags=config.values(), backend=keras.backend.backend(), keras_version=keras.__version__)
    metrics_path = os.path.join(config.output_dir, "metrics.json")
    picture_path = os.path.join(config.output_dir, "evaluation.png")
    training.atomic_write_json(results, metrics_path)
    evaluation.plot_evaluation(results, picture_path, splits.class_names,
                               title=f"{name} on {results['num_test']} {splits.name} test images")
    return RunOutputs(results, {"metrics": metrics_path, "picture": picture_path})


def set_up_devices(config):
    """Joins the job of several processes (--num_processes > 1: JAX's jax.distributed, TensorFlow's
    MultiWorkerMirroredStrategy from TF_CONFIG) before any device is used, then sets --distribution
    before any model is built or loaded (the --teacher too: its variables must be laid out, or
    mirrored, like the student's). Returns the data-parallel device count."""
    from keras_icckd.training import distribution

    try:
        distribution.initialize_multi_host(config.coordinator_address, config.num_processes, config.process_id)
    except ValueError as e:
        raise ConfigError(f"--num_processes={config.num_processes}: {e}")
    try:
        return distribution.configure(config.distribution, config.model_parallel_size)
    except ValueError as e:
        raise ConfigError(f"--distribution={config.distribution!r}: {e}")


