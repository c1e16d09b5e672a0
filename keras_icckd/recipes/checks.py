"""Every check a run makes before any work: `validate(config)` raises `ConfigError` naming the option
(as its flag), the value received and what is allowed."""

import json
import math
import os

from keras_icckd.data import datasets
from keras_icckd.recipes.config import MODE_INPUTS
from keras_icckd.recipes.config import ConfigError


def several_jax_processes(config):
    """Whether this run spans several JAX processes. Keras splits a tf.data pipeline between JAX
    processes only when it knows the batch size, which this project's pipelines do not state: there
    each process reads its own share of every batch, from memory with the numpy pipeline (auto picks
    it; tf_data is refused) or from the stream (which decodes only that share)."""
    import keras

    return config.num_processes > 1 and keras.backend.backend() == "jax"


def validate(config):
    """Checks every flag before any data is loaded or model built; raises ConfigError."""
    try:
        import keras  # starts the KERAS_BACKEND backend
    except ImportError as e:
        raise ConfigError(f"Keras could not start its backend (KERAS_BACKEND="
                          f"{os.environ.get('KERAS_BACKEND', '<unset: tensorflow>')}): {e}. Without TensorFlow, "
                          "train with KERAS_BACKEND=jax (see BUILD.md)")
    from keras_icckd import backbones

    def need(ok, flag, allowed):
        if not ok:
            raise ConfigError(f"--{flag}={getattr(config, flag)!r} is not allowed: expected {allowed}")

    need(config.output_dir, "output_dir", "the folder for the run's files")

    from keras_icckd import objectives

    from keras_icckd import export

    for option in config.options():  # choices first: the CLI's enums, checked here for scripts too
        choices = config.choices(option.name)
        if choices:
            need(getattr(config, option.name) in choices, option.name, f"one of {', '.join(choices)}")
    for name, value in config.values().items():
        if isinstance(value, float):
            need(math.isfinite(value), name, "a finite number")
    for name, modes in MODE_INPUTS.items():
        need(config.mode in modes or not config.is_given(name), name,
             f"unset unless --mode={' or --mode='.join(modes)} (it is what that mode reads; here --mode={config.mode})")
    if config.mode == "import":
        validate_import(config, need)
    if config.mode == "evaluate":
        need(config.model and os.path.isfile(config.model) and config.model.endswith((".keras", ".tflite")), "model",
             "an existing .keras file written by keras_icckd (a run's model or an exported plain model) or "
             ".tflite file written by --mode=export")
        need(config.evaluate_temperature > 0, "evaluate_temperature", "> 0")
    if config.mode == "export":
        need(config.model and os.path.isfile(config.model) and config.model.endswith(".keras"), "model",
             "an existing .keras file written by keras_icckd (a student, an imported model or a teacher)")
        need(config.export_quantizations and set(config.export_quantizations) <= set(export.QUANTIZATIONS)
             and len(set(config.export_quantizations)) == len(config.export_quantizations),
             "export_quantizations", f"distinct names from {', '.join(export.QUANTIZATIONS)}")
        need(config.export_formats and set(config.export_formats) <= set(export.FORMATS)
             and len(set(config.export_formats)) == len(config.export_formats),
             "export_formats", f"distinct names from {', '.join(export.FORMATS)}")
        missing = export.missing_runtimes(config.export_formats)
        need(not missing, "export_formats", f"formats whose runtimes are installed (missing here: {', '.join(missing)}; "
             "pip install 'keras_icckd[export]')")
        need(config.export_batch_size >= 0, "export_batch_size", ">= 0 (0: dynamic)")
        need(config.representative_examples >= 1 or "int8" not in config.export_quantizations,
             "representative_examples", ">= 1 when int8 is exported")
        need(config.parity_tolerance > 0, "parity_tolerance", "> 0")
    need(config.arch in backbones.names(), "arch", f"one of {', '.join(backbones.names())}")
    if config.init_model is not None:
        need(config.mode == "teacher", "init_model", "unset unless --mode=teacher")
        need(os.path.isfile(config.init_model) and config.init_model.endswith(".keras"), "init_model",
             "an existing .keras file (from --mode=import, --mode=teacher or --mode=student)")
    if config.mode == "student":
        need(config.student_arch in backbones.names(), "student_arch",
             f"one of {', '.join(backbones.names())}")
        need(config.teacher is None or (config.teacher and os.path.isfile(config.teacher)
                                       and config.teacher.endswith(".keras")),
             "teacher", "an existing .keras file written by --mode=teacher or --mode=import (no --teacher: CE alone)")
        for name in ("objectives", "ce_weight"):
            need(config.teacher or not config.is_given(name), name,
                 "no value without --teacher (the student then trains with cross-entropy alone)")
        try:
            parsed = objectives.parse(config.objectives)
        except ValueError as e:
            raise ConfigError(f"--objectives={config.objectives!r} is not allowed: {e}")
        need(parsed, "objectives", f"at least one of {', '.join(objectives.names())} as name:weight")
        need(config.ce_weight >= 0, "ce_weight", ">= 0")
    need(config.dataset != "tfds" or config.tfds_name, "tfds_name", "a TFDS name with --dataset=tfds")
    if config.augment:
        validate_augment(config, need)
    from keras_icckd import data

    if not data.tensorflow_available():  # TensorFlow-free environments (e.g. JAX on a GPU machine)
        need(config.dataset != "tfds", "dataset", "not tfds without TensorFlow (TFDS needs it; it cannot be imported)")
        need(config.mode != "export", "mode", "not export without TensorFlow (TFLite conversion needs it; it cannot "
             "be imported)")
        need(config.input_pipeline != "tf_data", "input_pipeline", "auto or numpy without TensorFlow (tf.data needs "
             "it; it cannot be imported)")
    need(config.input_pipeline != "numpy" or keras.backend.backend() == "jax", "input_pipeline",
         "auto or tf_data on the TensorFlow backend (the numpy pipeline is the JAX backend's TensorFlow-free path)")
    dataset = datasets.get(config.dataset)
    need(config.data_dir or not dataset.needs_location or dataset.default_location() is not None, "data_dir",
         f"a path with --dataset={config.dataset} (nothing is downloaded)")
    if config.data_dir:
        need(os.path.exists(config.data_dir), "data_dir", "an existing path")
    need(config.image_size >= 0, "image_size", ">= 0 (0: the dataset's own size)")
    streamable = [name for name in datasets.names() if datasets.get(name).streamable]
    need(not config.stream or dataset.streamable, "stream",
         f"False unless --dataset={' or --dataset='.join(streamable)} (the other datasets fit in memory)")
    need(not config.stream or config.mode in ("teacher", "student", "export"), "stream",
         "False with --mode=import or --mode=evaluate (they read the test set into memory)")
    need(not config.stream or config.input_pipeline != "numpy", "input_pipeline",
         "auto or tf_data with --stream (streaming reads and decodes images with tf.data)")
    need(not config.stream or config.data_dir or config.dataset == "tfds", "data_dir",
         "the image folder or .tar archive to stream with --stream --dataset=folder")
    need(config.eval_resize == 0 or config.eval_resize >= (config.image_size or 224), "eval_resize",
         "0 or at least --image_size (the evaluation crop is cut from the resized image)")
    need(config.shuffle_window >= 1, "shuffle_window", ">= 1")
    for name in ("epochs", "batch_size", "eval_batch_size", "synthetic_classes",
                 "synthetic_train_per_class", "synthetic_test_per_class", "synthetic_subclasses",
                 "icc_projection_dim"):
        need(getattr(config, name) >= 1, name, ">= 1")
    for name in ("max_train_examples", "max_test_examples", "icc_cache_size", "diagnostic_examples"):
        need(getattr(config, name) >= 0, name, ">= 0 (0 means all / off)")
    need(config.lr > 0, "lr", "> 0")
    need(0 < config.lr_decay_rate <= 1, "lr_decay_rate", "in (0, 1]")
    need(0 <= config.momentum < 1, "momentum", "in [0, 1)")
    need(config.weight_decay >= 0, "weight_decay", ">= 0")
    need(0 <= config.lr_warmup_epochs <= config.epochs, "lr_warmup_epochs", "in [0, --epochs]")
    try:
        decay = [int(e) for e in config.lr_decay_epochs]
    except ValueError:
        decay = None
    need(decay is not None and all(e >= 1 for e in decay) and decay == sorted(set(decay)),
         "lr_decay_epochs", "increasing integers >= 1")
    need(config.distribution != "model_parallel" or keras.backend.backend() == "jax", "distribution",
         "none or data_parallel on the TensorFlow backend (model_parallel needs KERAS_BACKEND=jax; see BUILD.md)")
    need(config.model_parallel_size >= 1, "model_parallel_size", ">= 1")
    need(config.num_processes >= 1, "num_processes", ">= 1")
    need(0 <= config.process_id < config.num_processes, "process_id", "in [0, --num_processes)")
    need(config.num_processes == 1 or config.distribution != "none" or config.mode not in ("teacher", "student"),
         "distribution", "data_parallel or model_parallel with --num_processes > 1 (the processes train one model)")
    need(config.num_processes == 1 or config.coordinator_address or keras.backend.backend() == "tensorflow",
         "coordinator_address", "host:port of process 0 when --num_processes > 1 on JAX (TensorFlow reads TF_CONFIG)")
    need(not several_jax_processes(config) or config.input_pipeline != "tf_data", "input_pipeline",
         "auto or numpy with --num_processes > 1 on JAX (each process reads its share of every batch; Keras "
         "cannot split the tf.data pipeline between JAX processes)")
    need(config.icc_lambda >= 0, "icc_lambda", ">= 0")
    need(config.views != "1" or config.icc_lambda == 0, "views",
         "auto or 2 with --icc_lambda > 0 (the intra-class term compares two views of each image)")
    need(-1 <= config.icc_delta <= 1 or config.icc_margin_mode != "gate", "icc_delta",
         "in [-1, 1] with --icc_margin_mode=gate (a probability margin)")
    need(config.icc_tau > 0, "icc_tau", "> 0")
    try:
        os.makedirs(config.output_dir, exist_ok=True)
        probe = os.path.join(config.output_dir, ".write_probe")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--output_dir={config.output_dir!r} is not writable: {e}")
    check_output_dir_mode(config)


def check_output_dir_mode(config):
    """Refuses an --output_dir that holds another mode's outputs (they would be overwritten or mixed)."""
    if config.mode == "export":  # writes only its own files (model_*.tflite, export.json)
        return
    metrics = os.path.join(config.output_dir, "metrics.json")
    try:
        with open(metrics) as f:
            mode = json.load(f).get("mode")
    except (OSError, ValueError, AttributeError):
        mode = None
    if mode not in (None, config.mode):
        raise ConfigError(f"--output_dir={config.output_dir!r} holds the outputs of a --mode={mode} run "
                          f"({metrics}); --mode={config.mode} would replace them: use another --output_dir")
    if config.mode in ("import", "evaluate") and os.path.exists(os.path.join(config.output_dir, "checkpoint.npz")):
        raise ConfigError(f"--output_dir={config.output_dir!r} holds a training run's checkpoint.npz; "
                          f"--mode={config.mode} would mix its outputs with that run's: use another --output_dir")


def validate_import(config, need):
    """--mode=import: the checkpoint, --torch_normalization and --arch, and that torch is installed."""
    from keras_icckd import backbones
    from keras_icckd.data import sources

    need(config.torch_checkpoint and os.path.isfile(config.torch_checkpoint), "torch_checkpoint",
         "an existing PyTorch checkpoint file")
    try:
        sources.parse_normalization(config.torch_normalization, "--torch_normalization")
    except ValueError as e:
        raise ConfigError(f"{e} (the normalisation the checkpoint was trained with)")
    archs = backbones.importable_archs()
    need(not config.is_given("arch") or config.arch in archs, "arch",
         f"one of {', '.join(archs)} (or no --arch: inferred from the checkpoint)")
    try:
        backbones.torch_import.import_torch()
    except ImportError as e:
        raise ConfigError(f"--mode=import: {e}")


def validate_augment(config, need):
    """--augment: known layers and options; mixing only where soft labels can be trained on."""
    from keras_icckd import objectives
    from keras_icckd.data import augment

    try:
        items = augment.parse(config.augment)
    except ValueError as e:
        raise ConfigError(f"--augment={config.augment!r} is not allowed: {e}")
    need(config.mode in ("teacher", "student"), "augment", "unset unless --mode=teacher or --mode=student (it "
         "augments training batches)")
    need(not config.stream, "augment", "unset with --stream (it applies to the in-memory pipelines)")
    need(config.num_processes == 1 and config.distribution == "none", "augment",
         "unset with several devices or processes (it applies to the batches of one process)")
    mixing = [name for name, _ in items if name in augment.MIXING]
    if mixing:
        need(config.mode == "student", "augment", f"no mixing layer ({', '.join(mixing)}) with --mode=teacher: the ICC "
             "teacher groups images by class, and mixed images have none")
        if config.teacher:
            readers = [item if isinstance(item, str) else item.registry_name
                       for item, _ in objectives.parse(config.objectives)
                       if (objectives.get(item) if isinstance(item, str) else item).uses_labels]
            need(not readers, "augment", f"no mixing layer ({', '.join(mixing)}) with the objectives {readers}: they "
                 "read each image's label, which mixing replaces by soft mixtures")

