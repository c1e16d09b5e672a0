"""The one entry point of keras_icckd runs: reads flags, hands explicit arguments down.

    python experiments/run.py --flagfile=experiments/flags/quickstart.flags
    python experiments/run.py --mode=teacher --arch=resnet20 --dataset=folder --epochs=2 \
        --output_dir=runs/teacher

The backend is chosen by KERAS_BACKEND (tensorflow or jax), as everywhere in Keras.
A run writes into --output_dir: model.keras, metrics.json, curves.png and tensorboard/.
"""

import json
import math
import os
import shutil
import sys
import time
import warnings

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

FLAGS = flags.FLAGS

MODES = ("teacher", "student", "export", "import", "evaluate")
DATASETS = ("cifar10", "cifar100", "folder", "tfds", "synthetic", "tinyimagenet")

flags.DEFINE_enum("mode", "teacher", MODES, "What to run.")
flags.DEFINE_string("arch", "resnet32x4", "Backbone preset (see keras_icckd.backbones.names()).")
flags.DEFINE_enum("dataset", "folder", DATASETS,
                  "Data source. 'folder' with no --data_dir is the bundled CIFAR-10 subset.")
flags.DEFINE_string("data_dir", None,
                    "cifar10/cifar100: the python tarball or its folder; folder: a split/class/image "
                    "folder or archive (default: the bundled CIFAR-10 subset); tfds: the TFDS data_dir "
                    "(default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.DEFINE_string("tfds_name", None, "TFDS dataset name, with --dataset=tfds.")
flags.DEFINE_bool("verify_checksum", True, "Check the md5 of the canonical CIFAR tarballs.")
flags.DEFINE_integer("synthetic_classes", 10, "Classes of --dataset=synthetic.")
flags.DEFINE_integer("synthetic_train_per_class", 50, "Training images per class, --dataset=synthetic.")
flags.DEFINE_integer("synthetic_test_per_class", 10, "Test images per class, --dataset=synthetic.")
flags.DEFINE_integer("synthetic_subclasses", 1, "Sub-clusters inside each synthetic class.")
flags.DEFINE_integer("max_train_examples", 0, "Use a class-balanced subset of the training set (0: all).")
flags.DEFINE_integer("max_test_examples", 0, "Use a class-balanced subset of the test set (0: all).")
flags.DEFINE_integer("image_size", 0,
                     "Train and evaluate on image_size x image_size images (0: the dataset's own size; 224 with "
                     "--stream). In-memory datasets are resized once when loaded (PIL's antialiased bilinear "
                     "filter), e.g. --dataset=tinyimagenet --image_size=32; with --stream it is the crop size.")
flags.DEFINE_bool("stream", False,
                  "Read the data lazily instead of into memory, for datasets larger than memory: --dataset=folder "
                  "(a directory or uncompressed .tar laid out train/<class>/..., val/<class>/..., images of any "
                  "size) or --dataset=tfds. Training: RandomResizedCrop(--image_size) + flip; evaluation: resize "
                  "to --eval_resize + centre crop; ImageNet's mean and std.")
flags.DEFINE_integer("eval_resize", 0, "--stream: shorter side of evaluation images before the centre crop "
                     "(0: image_size * 256 / 224, i.e. 256 for 224).")
flags.DEFINE_integer("shuffle_window", 10000, "--stream with --dataset=tfds: examples shuffled together per epoch.")
flags.DEFINE_string("tfds_test_split", "test", "--dataset=tfds: the split evaluated (ImageNet's is 'validation').")
flags.DEFINE_integer("epochs", 240, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 256, "Evaluation batch size.")
flags.DEFINE_float("lr", 0.05, "Initial learning rate.")
flags.DEFINE_list("lr_decay_epochs", ["150", "180", "210"], "Epochs at which lr is multiplied by --lr_decay_rate.")
flags.DEFINE_float("lr_decay_rate", 0.1, "Step-decay factor.")
flags.DEFINE_float("lr_warmup_epochs", 0, "Epochs of linear learning-rate warm-up (0: none).")
flags.DEFINE_enum("optimizer", "torch_sgd", ("torch_sgd", "keras_sgd"),
                  "torch_sgd: PyTorch's SGD (L2 weight decay added to the gradient before momentum, on "
                  "every trainable weight), the published CIFAR recipe. keras_sgd: keras.optimizers.SGD "
                  "(decoupled weight decay, about 10x weaker at momentum 0.9).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (coupled with torch_sgd, decoupled with keras_sgd).")
flags.DEFINE_integer("seed", 0, "Seeds Python, NumPy, the backend and the data order.")
flags.DEFINE_bool("resume", True,
                  "Continue from output_dir/checkpoint.npz when it exists (same flags required); "
                  "--noresume starts over.")
flags.DEFINE_string("output_dir", None, "Where the run's files go (created if missing).")
flags.DEFINE_float("icc_lambda", 0.05, "Weight of the intra-class contrastive loss; 0 gives a plain CE teacher.")
flags.DEFINE_enum("views", "auto", ("auto", "1", "2"),
                  "--mode=teacher: augmented views of each image per training batch. auto: 2 when --icc_lambda > 0 "
                  "(the intra-class term needs them), else 1. 2 with --icc_lambda=0: both views go through the "
                  "network (batch norm sees them together, as in an ICC teacher) and CE is taken on the first "
                  "alone: the two-view CE control. 1 with --icc_lambda > 0 is refused.")
flags.DEFINE_float("icc_delta", 0.5, "Margin threshold delta of the ICC margin mechanism.")
flags.DEFINE_float("icc_tau", 0.1, "Temperature of the intra-class contrastive loss.")
flags.DEFINE_integer("icc_cache_size", 4096, "Slots of the cache of earlier projections (0: no cache).")
flags.DEFINE_enum("icc_margin_mode", "gate", ("gate", "hinge", "none"),
                  "Margin mechanism (reconstructed, see METHODS.md): gate | hinge | none.")
flags.DEFINE_integer("icc_projection_dim", 128, "Output size of the teacher's projection head.")
flags.DEFINE_string("init_model", None,
                    "--mode=teacher: start from the weights of this .keras file (a backbone from --mode=import "
                    "or any model the project writes; a teacher's file gives its backbone) instead of a random "
                    "--arch; its architecture replaces --arch. The fine-tuning of published teachers.")
flags.DEFINE_string("teacher", None, "--mode=student: the teacher's .keras file (from --mode=teacher or --mode=import); "
                    "without it the student trains with cross-entropy alone.")
flags.DEFINE_string("student_arch", "resnet8x4", "--mode=student: the student backbone preset.")
flags.DEFINE_string("objectives", "kd:0.9",
                    "--mode=student: weighted distillation objectives, e.g. kd:0.9,rkd:1 or "
                    "crd:0.8,kd:0.9 (names: kd, dkd, rkd, fitnet, at, crd, dcd, pckd, and msdcrd, which is "
                    "EXPERIMENTAL: reconstructed from its paper's abstract). Options in parentheses: "
                    "dkd(beta=2;warmup_epochs=20):1.")
flags.DEFINE_float("ce_weight", 0.1, "--mode=student: weight of the student's cross-entropy.")
flags.DEFINE_integer("diagnostic_examples", 1000,
                     "Held-out test images used for the per-epoch intra/inter-class distances (0: off).")
flags.DEFINE_enum("jit_compile", "auto", ("auto", "true", "false"),
                  "XLA compilation of the train step. auto: off on TensorFlow (faster on CPU), on for JAX.")
flags.DEFINE_enum("dtype_policy", "float32", ("float32", "mixed_float16", "mixed_bfloat16"),
                  "Keras dtype policy of --mode=teacher/student training: mixed_* compute in float16 / "
                  "bfloat16 with float32 variables and float32 losses (mixed_float16 adds dynamic loss "
                  "scaling). Pays off on GPUs/TPUs; slower on CPU. Exports are always float32.")
flags.DEFINE_enum("distribution", "none", ("none", "data_parallel", "model_parallel"),
                  "Several devices: data_parallel splits each batch over all devices (keras.distribution on "
                  "JAX, tf.distribute's MirroredStrategy on TensorFlow, MultiWorkerMirroredStrategy with a "
                  "multi-worker TF_CONFIG); model_parallel (JAX only) also shards conv kernels over "
                  "--model_parallel_size devices. Batch sizes and the test-set size must be multiples of "
                  "the data-parallel device count.")
flags.DEFINE_integer("model_parallel_size", 2, "--distribution=model_parallel: devices along the model axis.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: processes in the job (one per host; on TensorFlow as "
                     "many as TF_CONFIG's workers).")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's id in [0, --num_processes) (on TensorFlow, "
                     "its TF_CONFIG task index).")
flags.DEFINE_string("coordinator_address", None, "Multi-host JAX: host:port of process 0.")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs into output_dir/tensorboard (needs TensorFlow; "
                  "skipped with a warning without it).")
flags.DEFINE_enum("input_pipeline", "auto", ("auto", "tf_data", "numpy"),
                  "tf_data: tf.data (needs TensorFlow); numpy: keras.utils.PyDataset without TensorFlow (the "
                  "same batches); auto: tf_data when TensorFlow can be imported, else numpy (numpy with "
                  "--num_processes > 1 on JAX).")
flags.DEFINE_string("model", None, "--mode=export: a .keras file (student, imported model, or a teacher: its backbone); "
                    "--mode=evaluate: the same, or a .tflite file from --mode=export.")
flags.DEFINE_list("export_quantizations", ["float32", "float16", "int8"],
                  "--mode=export: TFLite files to write (float32, float16, int8).")
flags.DEFINE_bool("export_int8_io", False, "--mode=export: int8 input/output tensors in the int8 file.")
flags.DEFINE_integer("export_batch_size", 0, "--mode=export: fixed batch size of the TFLite files (0: dynamic).")
flags.DEFINE_integer("representative_examples", 256,
                     "--mode=export: class-balanced training images that calibrate int8.")
flags.DEFINE_float("parity_tolerance", 1e-4,
                   "--mode=export: largest allowed max |logit difference| of the float32 file.")
flags.DEFINE_string("torch_checkpoint", None,
                    "--mode=import: a PyTorch checkpoint (.pt/.pth/.th) of a CIFAR network: RepDistiller / "
                    "mdistiller / chenyaofo layouts or akamaster's option-A ResNets. --arch names the preset "
                    "(default: inferred from the keys and shapes); with --dataset, its test top-1 is measured.")
flags.DEFINE_string("torch_normalization", None,
                    "--mode=import: how the checkpoint's training images were normalised: imagenet, cifar10, "
                    "cifar100 or R,G,B,R,G,B (mean then std of pixels in [0, 1]). akamaster: imagenet.")
flags.DEFINE_float("evaluate_temperature", 4.0,
                   "--mode=evaluate: temperature T of the soft-label statistics (entropy and off-true-class mass "
                   "of softmax(z/T), the distillation temperature).")

flags.DEFINE_bool("check_flags", False, "Parse the flags (flagfiles included), print their values as JSON and "
                  "exit without running (experiments/sweep.py checks its runs with it before starting any).")

flags.mark_flag_as_required("output_dir")
OWN_FLAGS = tuple(f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__]))


def several_jax_processes():
    """Whether this run spans several JAX processes. Keras splits a tf.data pipeline between JAX
    processes only when it knows the batch size, which this project's pipelines do not state: there
    each process reads its own share of every batch, from memory with the numpy pipeline (auto picks
    it; tf_data is refused) or from the --stream (which decodes only that share)."""
    import keras

    return FLAGS.num_processes > 1 and keras.backend.backend() == "jax"


def validate_flags():
    """Checks every flag before any data is loaded or model built; raises app.UsageError."""
    try:
        import keras  # noqa: F401  (starts the KERAS_BACKEND backend)
    except ImportError as e:
        raise app.UsageError(f"Keras could not start its backend (KERAS_BACKEND="
                             f"{os.environ.get('KERAS_BACKEND', '<unset: tensorflow>')}): {e}. Without TensorFlow, "
                             "train with KERAS_BACKEND=jax (see BUILD.md)")
    from keras_icckd import backbones

    def need(ok, flag, allowed):
        if not ok:
            raise app.UsageError(f"--{flag}={getattr(FLAGS, flag)!r} is not allowed: expected {allowed}")

    from keras_icckd import objectives

    from keras_icckd import export

    for name in OWN_FLAGS:
        if isinstance(FLAGS[name].value, float):
            need(math.isfinite(FLAGS[name].value), name, "a finite number")
    for name, modes in MODE_INPUTS.items():
        need(FLAGS.mode in modes or not FLAGS[name].present, name,
             f"unset unless --mode={' or --mode='.join(modes)} (it is what that mode reads; here --mode={FLAGS.mode})")
    if FLAGS.mode == "import":
        validate_import_flags(need)
    if FLAGS.mode == "evaluate":
        need(FLAGS.model and os.path.isfile(FLAGS.model) and FLAGS.model.endswith((".keras", ".tflite")), "model",
             "an existing .keras file written by keras_icckd or .tflite file written by --mode=export")
        need(FLAGS.evaluate_temperature > 0, "evaluate_temperature", "> 0")
    if FLAGS.mode == "export":
        need(FLAGS.model and os.path.isfile(FLAGS.model) and FLAGS.model.endswith(".keras"), "model",
             "an existing .keras file written by keras_icckd (a student, an imported model or a teacher)")
        need(FLAGS.export_quantizations and set(FLAGS.export_quantizations) <= set(export.QUANTIZATIONS)
             and len(set(FLAGS.export_quantizations)) == len(FLAGS.export_quantizations),
             "export_quantizations", f"distinct names from {', '.join(export.QUANTIZATIONS)}")
        need(FLAGS.export_batch_size >= 0, "export_batch_size", ">= 0 (0: dynamic)")
        need(FLAGS.representative_examples >= 1 or "int8" not in FLAGS.export_quantizations,
             "representative_examples", ">= 1 when int8 is exported")
        need(FLAGS.parity_tolerance > 0, "parity_tolerance", "> 0")
    need(FLAGS.arch in backbones.names(), "arch", f"one of {', '.join(backbones.names())}")
    if FLAGS.init_model is not None:
        need(FLAGS.mode == "teacher", "init_model", "unset unless --mode=teacher")
        need(os.path.isfile(FLAGS.init_model) and FLAGS.init_model.endswith(".keras"), "init_model",
             "an existing .keras file (from --mode=import, --mode=teacher or --mode=student)")
    if FLAGS.mode == "student":
        need(FLAGS.student_arch in backbones.names(), "student_arch",
             f"one of {', '.join(backbones.names())}")
        need(FLAGS.teacher is None or (FLAGS.teacher and os.path.isfile(FLAGS.teacher)
                                       and FLAGS.teacher.endswith(".keras")),
             "teacher", "an existing .keras file written by --mode=teacher or --mode=import (no --teacher: CE alone)")
        for name in ("objectives", "ce_weight"):
            need(FLAGS.teacher or not FLAGS[name].present, name,
                 "no value without --teacher (the student then trains with cross-entropy alone)")
        try:
            parsed = objectives.parse(FLAGS.objectives)
        except ValueError as e:
            raise app.UsageError(f"--objectives={FLAGS.objectives!r} is not allowed: {e}")
        need(parsed, "objectives", f"at least one of {', '.join(objectives.names())} as name:weight")
        need(FLAGS.ce_weight >= 0, "ce_weight", ">= 0")
    need(FLAGS.dataset != "tfds" or FLAGS.tfds_name, "tfds_name", "a TFDS name with --dataset=tfds")
    from keras_icckd import data

    if not data.tensorflow_available():  # TensorFlow-free environments (e.g. JAX on a GPU machine)
        need(FLAGS.dataset != "tfds", "dataset", "not tfds without TensorFlow (TFDS needs it; it cannot be imported)")
        need(FLAGS.mode != "export", "mode", "not export without TensorFlow (TFLite conversion needs it; it cannot "
             "be imported)")
        need(FLAGS.input_pipeline != "tf_data", "input_pipeline", "auto or numpy without TensorFlow (tf.data needs "
             "it; it cannot be imported)")
    import keras

    need(FLAGS.input_pipeline != "numpy" or keras.backend.backend() == "jax", "input_pipeline",
         "auto or tf_data on the TensorFlow backend (the numpy pipeline is the JAX backend's TensorFlow-free path)")
    need(FLAGS.dataset not in ("cifar10", "cifar100") or FLAGS.data_dir, "data_dir",
         f"a path with --dataset={FLAGS.dataset} (nothing is downloaded)")
    if FLAGS.data_dir:
        need(os.path.exists(FLAGS.data_dir), "data_dir", "an existing path")
    need(FLAGS.image_size >= 0, "image_size", ">= 0 (0: the dataset's own size)")
    need(not FLAGS.stream or FLAGS.dataset in ("folder", "tfds"), "stream",
         "False unless --dataset=folder or --dataset=tfds (the other datasets fit in memory)")
    need(not FLAGS.stream or FLAGS.mode in ("teacher", "student", "export"), "stream",
         "False with --mode=import or --mode=evaluate (they read the test set into memory)")
    need(not FLAGS.stream or FLAGS.input_pipeline != "numpy", "input_pipeline",
         "auto or tf_data with --stream (streaming reads and decodes images with tf.data)")
    need(not FLAGS.stream or FLAGS.data_dir or FLAGS.dataset == "tfds", "data_dir",
         "the image folder or .tar archive to stream with --stream --dataset=folder")
    need(FLAGS.eval_resize == 0 or FLAGS.eval_resize >= (FLAGS.image_size or 224), "eval_resize",
         "0 or at least --image_size (the evaluation crop is cut from the resized image)")
    need(FLAGS.shuffle_window >= 1, "shuffle_window", ">= 1")
    for name in ("epochs", "batch_size", "eval_batch_size", "synthetic_classes",
                 "synthetic_train_per_class", "synthetic_test_per_class", "synthetic_subclasses",
                 "icc_projection_dim"):
        need(getattr(FLAGS, name) >= 1, name, ">= 1")
    for name in ("max_train_examples", "max_test_examples", "icc_cache_size", "diagnostic_examples"):
        need(getattr(FLAGS, name) >= 0, name, ">= 0 (0 means all / off)")
    need(FLAGS.lr > 0, "lr", "> 0")
    need(0 < FLAGS.lr_decay_rate <= 1, "lr_decay_rate", "in (0, 1]")
    need(0 <= FLAGS.momentum < 1, "momentum", "in [0, 1)")
    need(FLAGS.weight_decay >= 0, "weight_decay", ">= 0")
    need(0 <= FLAGS.lr_warmup_epochs <= FLAGS.epochs, "lr_warmup_epochs", "in [0, --epochs]")
    try:
        decay = [int(e) for e in FLAGS.lr_decay_epochs]
    except ValueError:
        decay = None
    need(decay is not None and all(e >= 1 for e in decay) and decay == sorted(set(decay)),
         "lr_decay_epochs", "increasing integers >= 1")
    import keras

    need(FLAGS.distribution != "model_parallel" or keras.backend.backend() == "jax", "distribution",
         "none or data_parallel on the TensorFlow backend (model_parallel needs KERAS_BACKEND=jax; see BUILD.md)")
    need(FLAGS.model_parallel_size >= 1, "model_parallel_size", ">= 1")
    need(FLAGS.num_processes >= 1, "num_processes", ">= 1")
    need(0 <= FLAGS.process_id < FLAGS.num_processes, "process_id", "in [0, --num_processes)")
    need(FLAGS.num_processes == 1 or FLAGS.distribution != "none" or FLAGS.mode not in ("teacher", "student"),
         "distribution", "data_parallel or model_parallel with --num_processes > 1 (the processes train one model)")
    need(FLAGS.num_processes == 1 or FLAGS.coordinator_address or keras.backend.backend() == "tensorflow",
         "coordinator_address", "host:port of process 0 when --num_processes > 1 on JAX (TensorFlow reads TF_CONFIG)")
    need(not several_jax_processes() or FLAGS.input_pipeline != "tf_data", "input_pipeline",
         "auto or numpy with --num_processes > 1 on JAX (each process reads its share of every batch; Keras "
         "cannot split the tf.data pipeline between JAX processes)")
    need(FLAGS.icc_lambda >= 0, "icc_lambda", ">= 0")
    need(FLAGS.views != "1" or FLAGS.icc_lambda == 0, "views",
         "auto or 2 with --icc_lambda > 0 (the intra-class term compares two views of each image)")
    need(FLAGS.mode == "teacher" or not FLAGS["views"].present, "views",
         f"unset unless --mode=teacher (here --mode={FLAGS.mode})")
    need(-1 <= FLAGS.icc_delta <= 1 or FLAGS.icc_margin_mode != "gate", "icc_delta",
         "in [-1, 1] with --icc_margin_mode=gate (a probability margin)")
    need(FLAGS.icc_tau > 0, "icc_tau", "> 0")
    try:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        probe = os.path.join(FLAGS.output_dir, ".write_probe")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise app.UsageError(f"--output_dir={FLAGS.output_dir!r} is not writable: {e}")
    check_output_dir_mode()


# The input that each mode reads and no other mode does: given with another --mode, it is refused
# (e.g. --teacher without --mode=student would otherwise train a teacher).
MODE_INPUTS = {"teacher": ("student",), "model": ("export", "evaluate"), "torch_checkpoint": ("import",),
               "torch_normalization": ("import",)}


def check_output_dir_mode():
    """Refuses an --output_dir that holds another mode's outputs (they would be overwritten or mixed)."""
    if FLAGS.mode == "export":  # writes only its own files (model_*.tflite, export.json)
        return
    metrics = os.path.join(FLAGS.output_dir, "metrics.json")
    try:
        with open(metrics) as f:
            mode = json.load(f).get("mode")
    except (OSError, ValueError, AttributeError):
        mode = None
    if mode not in (None, FLAGS.mode):
        raise app.UsageError(f"--output_dir={FLAGS.output_dir!r} holds the outputs of a --mode={mode} run "
                             f"({metrics}); --mode={FLAGS.mode} would replace them: use another --output_dir")
    if FLAGS.mode in ("import", "evaluate") and os.path.exists(os.path.join(FLAGS.output_dir, "checkpoint.npz")):
        raise app.UsageError(f"--output_dir={FLAGS.output_dir!r} holds a training run's checkpoint.npz; "
                             f"--mode={FLAGS.mode} would mix its outputs with that run's: use another --output_dir")


def validate_import_flags(need):
    """--mode=import: the checkpoint, --torch_normalization and --arch, and that torch is installed."""
    from keras_icckd import backbones
    from keras_icckd.data import sources

    need(FLAGS.torch_checkpoint and os.path.isfile(FLAGS.torch_checkpoint), "torch_checkpoint",
         "an existing PyTorch checkpoint file")
    try:
        sources.parse_normalization(FLAGS.torch_normalization, "--torch_normalization")
    except ValueError as e:
        raise app.UsageError(f"{e} (the normalisation the checkpoint was trained with)")
    archs = backbones.importable_archs()
    need(not FLAGS["arch"].present or FLAGS.arch in archs, "arch",
         f"one of {', '.join(archs)} (or no --arch: inferred from the checkpoint)")
    try:
        backbones.torch_import.import_torch()
    except ImportError as e:
        raise app.UsageError(f"--mode=import: {e}")


def load_stream():
    """--stream: the ImageStream of --dataset=folder or tfds (an index in memory, images read lazily)."""
    from keras_icckd.data import streaming

    size = FLAGS.image_size or 224
    if FLAGS.dataset == "tfds":
        stream = streaming.open_tfds_stream(FLAGS.tfds_name, FLAGS.data_dir, test_split=FLAGS.tfds_test_split,
                                            image_size=size, resize_size=FLAGS.eval_resize or None,
                                            shuffle_window=FLAGS.shuffle_window)
    else:
        stream = streaming.open_image_stream(FLAGS.data_dir, image_size=size, resize_size=FLAGS.eval_resize or None)
    return stream.subset(FLAGS.max_train_examples or None, FLAGS.max_test_examples or None, seed=FLAGS.seed)


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


def eval_sample(splits, n, split="test"):
    """(normalised float32 images, labels) of n class-balanced images of a split, in memory."""
    if is_stream(splits) and splits.train_labels is None:  # TFDS: the first n, in stored (shuffled) order
        return stream_head(splits, n, split)
    if is_stream(splits):
        return splits.subset(**{f"max_{split}": n}, seed=FLAGS.seed).eval_arrays(split)
    sample = splits.subset(**{f"max_{split}": n}, seed=FLAGS.seed)
    mean, std = normalization_of(splits)
    return normalise(getattr(sample, f"{split}_images"), mean, std), getattr(sample, f"{split}_labels")


def stream_head(stream, n, split):
    import numpy as np

    batches = stream.eval_dataset(min(n, 256), split).unbatch().take(n).batch(n).as_numpy_iterator()
    images, labels = next(batches)
    return images, np.asarray(labels, np.int32)


def load_splits():
    from keras_icckd import data

    if FLAGS.stream:
        return load_stream()
    if FLAGS.dataset == "synthetic":
        splits = data.make_synthetic(
            num_classes=FLAGS.synthetic_classes, train_per_class=FLAGS.synthetic_train_per_class,
            test_per_class=FLAGS.synthetic_test_per_class, subclasses=FLAGS.synthetic_subclasses,
            seed=FLAGS.seed)
    else:
        kwargs = {"tfds_name": FLAGS.tfds_name, "test_split": FLAGS.tfds_test_split} if FLAGS.dataset == "tfds" else {}
        if FLAGS.dataset in ("cifar10", "cifar100"):
            kwargs["verify_checksum"] = FLAGS.verify_checksum
        splits = data.load(FLAGS.dataset, FLAGS.data_dir, **kwargs)
    if FLAGS.max_train_examples or FLAGS.max_test_examples:
        splits = splits.subset(FLAGS.max_train_examples or None, FLAGS.max_test_examples or None,
                               seed=FLAGS.seed)
    if FLAGS.image_size:
        splits = splits.resized(FLAGS.image_size)
    return splits


def normalise(images, mean, std):
    """uint8 images -> float32 (pixels / 255 - mean) / std, as the input pipeline feeds them."""
    import numpy as np

    return (images.astype("float32") / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")


def check_fits_data(flag, model, splits):
    """Refuses a --teacher / --model whose classes or input shape differ from the dataset's."""
    classes, shape = int(model.output["logits"].shape[-1]), tuple(model.input.shape[1:])
    data_shape = image_shape(splits)
    if classes != splits.num_classes or shape != data_shape:
        raise app.UsageError(
            f"--{flag}={getattr(FLAGS, flag)!r} was trained for {classes} classes on {shape} images, but "
            f"--dataset={FLAGS.dataset} has {splits.num_classes} classes of {data_shape} images")
    from keras_icckd import backbones

    try:  # an imported model records the normalisation it must be fed
        backbones.check_feed_normalization(model, *normalization_of(splits),
                                           what=f"--{flag}={getattr(FLAGS, flag)!r}")
    except ValueError as e:
        raise app.UsageError(f"{e} (--dataset={FLAGS.dataset})")


def check_teacher_run(splits):
    """--teacher trained by this project (its run's metrics.json beside it): refuses a teacher trained on
    images normalised otherwise than this run's (it would see shifted inputs), and warns when it was
    trained on another dataset (e.g. a synthetic teacher for real images: its soft labels are noise)."""
    path = os.path.join(os.path.dirname(os.path.abspath(FLAGS.teacher)), "metrics.json")
    try:
        with open(path) as f:
            run_ = json.load(f)
        name, trained_mean, trained_std = run_["dataset"], run_["normalization"]["mean"], run_["normalization"]["std"]
        trained_mean, trained_std = list(map(float, trained_mean)), list(map(float, trained_std))
        if run_.get("mode") not in ("teacher", "student"):
            return
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record of how the teacher was trained (e.g. an imported model, which records its own)
    mean, std = (list(map(float, v)) for v in normalization_of(splits))
    close = (lambda a, b: len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b)))
    if not (close(trained_mean, mean) and close(trained_std, std)):
        raise app.UsageError(f"--teacher={FLAGS.teacher!r} was trained on {name} images normalised with mean "
                             f"{trained_mean}, std {trained_std} ({path}), but --dataset={FLAGS.dataset} "
                             f"({splits.name}) feeds mean {mean}, std {std}")
    if name != splits.name:
        logging.warning("--teacher=%s was trained on %s (%s), this run distils on %s: its soft labels only help "
                        "if the images are alike", FLAGS.teacher, name, path, splits.name)


def flag_values():
    return {name: FLAGS[name].value for name in OWN_FLAGS}


# Flags that do not change what is trained: a run may resume with different values.
RESUMABLE_CHANGES = ("output_dir", "resume", "tensorboard", "jit_compile", "distribution", "model_parallel_size",
                     "num_processes", "process_id", "coordinator_address", "input_pipeline", "check_flags")


RUN_OUTPUTS = ("checkpoint.npz", "model.keras", "metrics.json", "curves.png")  # what a training run writes


def resume_point(path):
    """(record, completed epochs) of the run's checkpoint, or (None, 0) for a fresh start."""
    from keras_icckd import training

    directory, writer = os.path.dirname(path), FLAGS.process_id == 0
    for name in os.listdir(directory) if writer else ():  # temp files of writes that a kill interrupted
        if name.startswith(tuple(f".{n}." for n in RUN_OUTPUTS)):
            os.remove(os.path.join(directory, name))
    if not os.path.exists(path):
        finished = os.path.join(directory, "metrics.json")
        if FLAGS.resume and os.path.exists(finished):
            raise app.UsageError(f"--output_dir={FLAGS.output_dir!r} holds a finished run ({finished}) without the "
                                 "checkpoint.npz to resume from; use another --output_dir, or --noresume to train "
                                 "anew there (replacing its outputs)")
        return None, 0
    if not FLAGS.resume:  # the earlier run's files are removed when the new one starts training (run)
        return None, 0
    try:
        record = training.read_checkpoint(path)[0]
    except training.CheckpointError as e:
        raise app.UsageError(f"{e}; delete it or pass --noresume to start over")
    settings = {k: v for k, v in flag_values().items() if k not in RESUMABLE_CHANGES}
    saved = {k: v for k, v in record.get("flags", {}).items() if k not in RESUMABLE_CHANGES}
    for k in set(settings) - set(saved):  # a flag newer than the checkpoint ran at its default
        saved[k] = FLAGS[k].default
    changed = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
    if changed:
        diff = ", ".join(f"--{k}={saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise app.UsageError(f"--output_dir={FLAGS.output_dir!r} holds a checkpoint of a run with other "
                             f"flags ({diff}); use another --output_dir, or --noresume to start over")
    return record, int(record["epoch"])


def build_teacher(splits, steps):
    """--mode=teacher: a ContrastiveTeacher (lambda 0: the CE teacher). Returns the run's pieces."""
    from keras_icckd.models import ContrastiveTeacher

    # A CE teacher (one view) leaves the projection head without gradients, as intended.
    warnings.filterwarnings("ignore", message=r"Gradients do not exist for variables \['projection_")
    if FLAGS.init_model:
        from keras_icckd.models import load_teacher

        try:
            backbone = load_teacher(FLAGS.init_model)
        except ValueError as e:
            raise app.UsageError(f"--init_model={FLAGS.init_model!r}: {e}")
        check_fits_data("init_model", backbone, splits)
    else:
        backbone = new_backbone("arch", splits)
    arch = backbone.name
    teacher = ContrastiveTeacher(
        backbone, icc_lambda=FLAGS.icc_lambda, icc_delta=FLAGS.icc_delta, icc_tau=FLAGS.icc_tau,
        icc_cache_size=FLAGS.icc_cache_size, icc_margin_mode=FLAGS.icc_margin_mode,
        projection_dim=FLAGS.icc_projection_dim)
    views = (2 if FLAGS.icc_lambda > 0 else 1) if FLAGS.views == "auto" else int(FLAGS.views)
    return dict(model=teacher, saved=teacher, backbone=backbone, views=views,
                data_options={}, title=f"{arch} teacher, lambda={FLAGS.icc_lambda}",
                results={"arch": arch, "init_model": FLAGS.init_model and os.path.abspath(FLAGS.init_model)})


def new_backbone(flag, splits):
    """The --arch / --student_arch backbone for the data's classes and image size (an image size that the
    network's downsampling reduces to nothing is a usage error)."""
    from keras_icckd import backbones

    shape = image_shape(splits)
    try:
        return backbones.get(FLAGS[flag].value, num_classes=splits.num_classes, input_shape=shape)
    except ValueError as e:
        import re

        size = f"--image_size={FLAGS.image_size}" if FLAGS.image_size else "the size the data is read at"
        # Keras wraps the reason in the failing layer's call: keep the reason, without terminal colours
        lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
        reason = [line for line in lines if not line.startswith(("Exception encountered", "Arguments received", "•"))]
        raise app.UsageError(f"--{flag}={FLAGS[flag].value!r} cannot be built for {shape[0]}x{shape[1]} images "
                             f"({size}): {(reason or lines)[0]}")


KNOWN_CLASSES = {"cifar10": 10, "cifar100": 100}
_TEACHER = {}


def load_student_teacher():
    """--mode=student: the --teacher model, loaded once; checked against the dataset's class count
    right away when the flags tell it (cifar10, cifar100, synthetic), before any data is read."""
    from keras_icckd.models import load_teacher

    if FLAGS.teacher not in _TEACHER:
        try:
            teacher = load_teacher(FLAGS.teacher)
        except ValueError as e:
            raise app.UsageError(f"--teacher={FLAGS.teacher!r}: {e}")
        classes = int(teacher.output["logits"].shape[-1])
        expected = KNOWN_CLASSES.get(FLAGS.dataset, FLAGS.synthetic_classes if FLAGS.dataset == "synthetic" else None)
        if expected is not None and classes != expected:
            raise app.UsageError(f"--teacher={FLAGS.teacher!r} was trained for {classes} classes, but "
                                 f"--dataset={FLAGS.dataset} has {expected} classes")
        _TEACHER[FLAGS.teacher] = teacher
    return _TEACHER[FLAGS.teacher]


def build_plain_student(splits):
    """--mode=student without --teacher: the --student_arch backbone trained with CE alone, saved plain."""
    from keras_icckd.models import ContrastiveTeacher

    student = new_backbone("student_arch", splits)
    # lambda 0: cross-entropy alone; its unused projection head is frozen and not saved.
    model = ContrastiveTeacher(student, icc_lambda=0.0, icc_cache_size=0)
    return dict(model=model, saved=student, backbone=student, views=1, data_options={},
                title=f"{FLAGS.student_arch} student, cross-entropy alone",
                results={"arch": FLAGS.student_arch, "teacher": None, "objectives": {}, "ce_weight": 1.0})


def build_student(splits, steps):
    """--mode=student: a Distiller from the --teacher file into a --student_arch student."""
    from keras_icckd.models import Distiller

    if not FLAGS.teacher:
        return build_plain_student(splits)
    teacher = load_student_teacher()
    check_fits_data("teacher", teacher, splits)
    check_teacher_run(splits)
    student = new_backbone("student_arch", splits)
    try:
        distiller = Distiller(student, teacher, FLAGS.objectives, ce_weight=FLAGS.ce_weight,
                              num_train=count(splits, "train"))
        data_options = distiller.data_options()
        for objective in distiller.objective_layers:
            if getattr(objective, "experimental", False):
                logging.warning("objective %r is EXPERIMENTAL (reconstructed from the paper's abstract; "
                                "see its docstring)", objective.name)
    except ValueError as e:
        raise app.UsageError(f"--objectives={FLAGS.objectives!r} with teacher {teacher.name} and student "
                             f"{FLAGS.student_arch}: {e}")
    return dict(model=distiller, saved=student, backbone=student, views=1,
                data_options=data_options,
                title=f"{FLAGS.student_arch} <- {teacher.name}, {FLAGS.objectives}",
                results={"arch": FLAGS.student_arch, "teacher": os.path.abspath(FLAGS.teacher),
                         "teacher_arch": teacher.name, "objectives": distiller.weighted_objectives,
                         "ce_weight": FLAGS.ce_weight},
                teacher=teacher)


def run(builder, factor):
    """Loads the data, builds the mode's model, trains it, writes model.keras, metrics.json, curves.png.

    `factor`: the data-parallel device count of the distribution that `set_up_devices` set.
    """
    import keras
    import numpy as np

    from keras_icckd import data
    from keras_icckd import training
    from keras_icckd import version

    start = time.time()
    checkpoint_path = os.path.join(FLAGS.output_dir, "checkpoint.npz")
    record, initial_epoch = resume_point(checkpoint_path)
    keras.utils.set_random_seed(FLAGS.seed)
    from keras_icckd.training import distribution

    splits = load_splits()
    mean, std = normalization_of(splits)
    num_train = count(splits, "train")
    if FLAGS.batch_size > num_train:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} is larger than the {num_train} training images")
    sizes = {"--batch_size": FLAGS.batch_size, "--eval_batch_size": FLAGS.eval_batch_size,
             "--max_test_examples": count(splits, "test"),
             "--diagnostic_examples": min(FLAGS.diagnostic_examples, count(splits, "test"))}
    try:
        distribution.check_even_split(sizes, factor)
    except ValueError as e:
        raise app.UsageError(f"{e} (--distribution={FLAGS.distribution}); every batch is split evenly")
    steps = data.steps_per_epoch(num_train, FLAGS.batch_size)
    run_ = builder(splits, steps)
    model = run_["model"]
    train_ds = None
    # TensorFlow's workers split tf.data through Keras (validate_flags refuses the numpy pipeline
    # there); each JAX process reads its own share (the NumPy pipeline, or the stream) and Keras is
    # told not to split it again.
    shard = {"shard": (FLAGS.process_id, FLAGS.num_processes)} if several_jax_processes() else {}
    if shard and keras.distribution.distribution() is not None:
        keras.distribution.distribution().auto_shard_dataset = False
    if is_stream(splits):  # tf.data streaming; validate_flags refuses --stream with --input_pipeline=numpy
        if initial_epoch < FLAGS.epochs:
            train_ds = splits.train_dataset(FLAGS.batch_size, seed=FLAGS.seed, views=run_["views"],
                                            epochs=FLAGS.epochs, initial_epoch=initial_epoch, **run_["data_options"],
                                            **shard)
        test_ds, pipeline_name = splits.eval_dataset(FLAGS.eval_batch_size, **shard), "tf.data streaming"
    else:
        pipeline = data.input_pipeline("numpy" if shard else FLAGS.input_pipeline)
        if initial_epoch < FLAGS.epochs:
            train_ds = pipeline.make_train_dataset(
                splits.train_images, splits.train_labels, FLAGS.batch_size, seed=FLAGS.seed, mean=mean,
                std=std, views=run_["views"], epochs=FLAGS.epochs, initial_epoch=initial_epoch,
                **run_["data_options"], **shard)
        test_ds = pipeline.make_eval_dataset(splits.test_images, splits.test_labels,
                                             FLAGS.eval_batch_size, mean=mean, std=std, **shard)
        pipeline_name = pipeline.__name__
    logging.info("data: %s, %d train / %d test images, %d classes, %d view(s), input pipeline %s", splits.name,
                 num_train, count(splits, "test"), splits.num_classes, run_["views"], pipeline_name)
    schedule = training.epoch_step_decay(
        FLAGS.lr, steps, [int(e) for e in FLAGS.lr_decay_epochs if int(e) < FLAGS.epochs],
        FLAGS.lr_decay_rate, warmup_epochs=FLAGS.lr_warmup_epochs)
    if FLAGS.optimizer == "torch_sgd":
        optimizer = training.TorchSGD(schedule, momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=FLAGS.momentum,
                                         weight_decay=FLAGS.weight_decay or None)
    jit = {"auto": keras.backend.backend() == "jax", "true": True, "false": False}[FLAGS.jit_compile]
    model.compile(optimizer=optimizer, jit_compile=jit)
    if record is not None:
        try:
            training.restore_checkpoint(model, checkpoint_path)
        except training.CheckpointError as e:
            raise app.UsageError(f"{e}; delete it or pass --noresume to start over")
        if initial_epoch < FLAGS.epochs:
            logging.info("resuming %s after epoch %d of %d", FLAGS.output_dir, initial_epoch, FLAGS.epochs)
        else:
            logging.info("%s holds a finished run (%d epochs): writing its outputs again without training; "
                         "--noresume trains it anew", FLAGS.output_dir, FLAGS.epochs)

    writer = FLAGS.process_id == 0  # multi-host: process 0 writes, every process reads the checkpoint
    if record is None and writer:
        # A fresh start (no checkpoint, or --noresume): an earlier run's outputs go now that the data and
        # the model are ready, so that a failure from here on cannot leave them looking like this run's
        # (its TensorBoard logs too: they would be drawn as one run with the new one's).
        for name in RUN_OUTPUTS:
            if os.path.exists(os.path.join(FLAGS.output_dir, name)):
                os.remove(os.path.join(FLAGS.output_dir, name))
        shutil.rmtree(os.path.join(FLAGS.output_dir, "tensorboard"), ignore_errors=True)
    callbacks = []
    several = FLAGS.num_processes > 1  # predict() cannot return arrays that span other processes' devices
    if FLAGS.diagnostic_examples and several:
        logging.warning("--diagnostic_examples: the class-distance diagnostics are off with --num_processes > 1")
    if FLAGS.diagnostic_examples and not several:
        n = min(FLAGS.diagnostic_examples, count(splits, "test"))
        callbacks.append(training.ClassDistanceDiagnostics(run_["backbone"], *eval_sample(splits, n),
                                                           FLAGS.eval_batch_size))
    recorder = training.RunRecorder(checkpoint_path if writer else None, history=record["history"] if record else (),
                                    elapsed=record["elapsed"] if record else 0.0,
                                    extra={"flags": flag_values()}, start=start)
    callbacks += [training.StopOnNonFinite(), recorder]
    if FLAGS.tensorboard and writer and not data.tensorflow_available():
        logging.warning("--tensorboard: TensorBoard logs need TensorFlow, which cannot be imported here; "
                        "none are written (--notensorboard silences this)")
    elif FLAGS.tensorboard and writer:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(FLAGS.output_dir, "tensorboard"),
                                                     write_graph=False))
    if train_ds is not None:
        try:
            model.fit(train_ds, epochs=FLAGS.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=test_ds, callbacks=callbacks, shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)
        except training.NonFiniteLossError as e:
            last = f"{checkpoint_path} (after epoch {len(recorder.rows)})" if recorder.rows \
                else "none (no epoch completed)"
            print(f"training stopped: {e}. Last good checkpoint: {last}", file=sys.stderr)
            sys.exit(1)
    rows = recorder.rows
    if several:  # process 0 writes alone: no more collective operations (a new variable would be one)
        distribution.configure("none")
    if not writer:
        print(f"process {FLAGS.process_id}: training done; process 0 writes the outputs")
        return

    model_path = os.path.join(FLAGS.output_dir, "model.keras")
    metrics_path = os.path.join(FLAGS.output_dir, "metrics.json")
    curves_path = os.path.join(FLAGS.output_dir, "curves.png")
    training.atomic_save_model(run_["saved"], model_path)
    tops = [r["test_top1"] for r in rows if "test_top1" in r]
    results = {
        "mode": FLAGS.mode, **run_["results"], "dataset": splits.name,
        "num_classes": splits.num_classes, "num_train": num_train,
        "num_test": count(splits, "test"), "views": run_["views"],
        "normalization": {"mean": list(mean), "std": list(std)},
        "test_top1": tops[-1], "best_test_top1": max(tops), "best_epoch": 1 + tops.index(max(tops)),
        "history": rows, "flags": flag_values(), "backend": keras.backend.backend(),
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
    print(f"test top-1: {results['test_top1']:.2f}% (best {results['best_test_top1']:.2f}%), "
          f"{results['wall_seconds']:.0f} s on {results['backend']}")
    print(f"model:   {os.path.abspath(model_path)}")
    print(f"results: {os.path.abspath(metrics_path)}")
    print(f"curves:  {os.path.abspath(curves_path)}")


STREAM_EXPORT_TEST_IMAGES = 1000


def run_export():
    """--mode=export: the --model student to TFLite files in output_dir, verified on test images."""
    from keras_icckd import export

    try:
        student = export.load_student(FLAGS.model)
    except export.ExportError as e:
        raise app.UsageError(f"--model={FLAGS.model!r}: {e}")
    splits = load_splits()
    check_fits_data("model", student, splits)
    mean, std = normalization_of(splits)
    representative = None
    if "int8" in FLAGS.export_quantizations:
        n = min(FLAGS.representative_examples, count(splits, "train"))
        representative = eval_sample(splits, n, "train")[0]
    # A stream verifies on a class-balanced sample (--max_test_examples, default STREAM_EXPORT_TEST_IMAGES).
    test_images, test_labels = eval_sample(splits, min(FLAGS.max_test_examples or STREAM_EXPORT_TEST_IMAGES,
                                                        count(splits, "test")) if is_stream(splits)
                                           else count(splits, "test"))
    logging.info("exporting %s: verified on %d %s test images", FLAGS.model, len(test_labels), splits.name)
    try:
        report = export.export_tflite(
            student, FLAGS.output_dir, test_images=test_images, test_labels=test_labels,
            representative_images=representative, quantizations=FLAGS.export_quantizations,
            int8_io=FLAGS.export_int8_io, batch_size=FLAGS.export_batch_size or None,
            parity_tolerance=FLAGS.parity_tolerance, normalization={"mean": list(mean), "std": list(std)})
    except export.ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Keras top-1 on {report['num_test']} {splits.name} test images: {report['keras_top1']:.2f}%")
    print(f"{'file':<22} {'KB':>8} {'top-1 %':>8} {'drop':>6} {'agree %':>8} {'max|dz|':>9} {'ms/img':>7}")
    for entry in report["files"].values():
        print(f"{entry['file']:<22} {entry['size_kb']:8.1f} {entry['top1']:8.2f} {entry['top1_drop']:6.2f} "
              f"{100 * entry['top1_agreement']:8.2f} {entry['max_abs_diff']:9.2e} {entry['latency_ms']:7.3f}")
    print(f"report: {os.path.abspath(os.path.join(FLAGS.output_dir, 'export.json'))}")


def run_import():
    """--mode=import: --torch_checkpoint -> output_dir/model.keras (+ test top-1 with --dataset)."""
    import keras
    import numpy as np

    from keras_icckd import backbones, data, evaluation, training
    from keras_icckd.data import sources

    splits, feed, input_shape = None, None, (32, 32, 3)
    if FLAGS["dataset"].present:
        splits = load_splits()
        feed, input_shape = sources.feed_normalization_name(splits.name, splits.num_classes), splits.test_images.shape[1:]
    try:
        model = backbones.from_torch(FLAGS.torch_checkpoint, FLAGS.arch if FLAGS["arch"].present else None,
                                     torch_normalization=FLAGS.torch_normalization, feed_normalization=feed,
                                     input_shape=input_shape)
    except backbones.TorchImportError as e:
        raise app.UsageError(f"--torch_checkpoint={FLAGS.torch_checkpoint!r}: {e}")
    normalization = model.input_normalization
    results = {"mode": "import", "arch": model.name, "torch_checkpoint": os.path.abspath(FLAGS.torch_checkpoint),
               "num_classes": model.num_classes, "torch_normalization": normalization["network"],
               "feed_normalization": normalization["feed"],
               "parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
               "flags": flag_values(), "backend": keras.backend.backend(), "keras_version": keras.__version__}
    if splits is not None:
        check_fits_data("torch_checkpoint", model, splits)
        mean, std = data.normalization_for(splits)
        logits, _ = evaluation.predict(model, normalise(splits.test_images, mean, std), FLAGS.eval_batch_size,
                                       embedding=False)
        results.update(dataset=splits.name, num_test=len(splits.test_labels),
                       test_top1=evaluation.top_k_accuracy(logits, splits.test_labels, 1),
                       test_top5=evaluation.top_k_accuracy(logits, splits.test_labels, 5))
    model_path = os.path.join(FLAGS.output_dir, "model.keras")
    metrics_path = os.path.join(FLAGS.output_dir, "metrics.json")
    training.atomic_save_model(model, model_path)
    training.atomic_write_json(results, metrics_path)
    print(f"imported {FLAGS.torch_checkpoint} as {model.name} ({model.num_classes} classes, "
          f"{results['parameters']:,} parameters)")
    if splits is not None:
        print(f"test top-1 on {results['num_test']} {splits.name} test images: {results['test_top1']:.2f}%")
    print(f"model:   {os.path.abspath(model_path)}")
    print(f"results: {os.path.abspath(metrics_path)}")


def run_evaluate():
    """--mode=evaluate: metrics.json and evaluation.png of --model (.keras or .tflite) on the test set."""
    import keras
    import numpy as np

    from keras_icckd import data, evaluation, export, training

    path = FLAGS.model
    if path.endswith(".tflite"):
        try:
            model = export.TFLiteRunner(path)
        except Exception as e:  # noqa: BLE001  (the interpreter raises several types on bad files)
            raise app.UsageError(f"--model={path!r} is not a readable .tflite file: {e}")
        classes, shape = int(model.output["shape"][-1]), tuple(int(d) for d in model.input["shape"][1:])
        name = os.path.basename(path)
    else:
        try:
            model = export.load_student(path)
        except export.ExportError as e:
            raise app.UsageError(f"--model={path!r}: {e}")
        classes, shape, name = model.num_classes, tuple(model.input.shape[1:]), model.name
    splits = load_splits()
    data_shape = tuple(splits.test_images.shape[1:])
    if classes != splits.num_classes or shape != data_shape:
        raise app.UsageError(f"--model={path!r} was made for {classes} classes of {shape} images, but "
                             f"--dataset={FLAGS.dataset} has {splits.num_classes} classes of {data_shape} images")
    mean, std = data.normalization_for(splits)
    if path.endswith(".tflite"):  # export.json beside the file records what it is fed
        report_path = os.path.join(os.path.dirname(path), "export.json")
        recorded = json.load(open(report_path)).get("normalization") if os.path.isfile(report_path) else None
        if recorded and not (np.allclose(recorded["mean"], mean, atol=1e-6) and np.allclose(recorded["std"], std, atol=1e-6)):
            raise app.UsageError(f"--model={path!r} was exported for images normalised with {recorded} ({report_path}), "
                                 f"but --dataset={FLAGS.dataset} is normalised with mean {list(mean)}, std {list(std)}")
    else:
        check_fits_data("model", model, splits)
    logging.info("evaluating %s on %d %s test images", path, len(splits.test_labels), splits.name)
    logits, _ = evaluation.predict(model, normalise(splits.test_images, mean, std), FLAGS.eval_batch_size,
                                   embedding=False)
    results = {"mode": "evaluate", "model": os.path.abspath(path), "format": "tflite" if path.endswith(".tflite")
               else "keras", "arch": name, "dataset": splits.name, "num_classes": splits.num_classes,
               "class_names": list(splits.class_names), "normalization": {"mean": list(mean), "std": list(std)},
               **evaluation.evaluate_logits(logits, splits.test_labels, splits.num_classes,
                                            temperature=FLAGS.evaluate_temperature)}
    if not path.endswith(".tflite") and FLAGS.diagnostic_examples:
        sample = splits.subset(max_test=min(FLAGS.diagnostic_examples, len(splits.test_labels)), seed=FLAGS.seed)
        _, embeddings = evaluation.predict(model, normalise(sample.test_images, mean, std), FLAGS.eval_batch_size)
        results["class_distances"] = {"num_examples": len(sample.test_labels),
                                      **training.class_distance_stats(embeddings, sample.test_labels)}
    results.update(flags=flag_values(), backend=keras.backend.backend(), keras_version=keras.__version__)
    metrics_path = os.path.join(FLAGS.output_dir, "metrics.json")
    picture_path = os.path.join(FLAGS.output_dir, "evaluation.png")
    training.atomic_write_json(results, metrics_path)
    evaluation.plot_evaluation(results, picture_path, splits.class_names,
                               title=f"{name} on {results['num_test']} {splits.name} test images")
    soft = results["soft_labels"]
    print(f"{name} on {results['num_test']} {splits.name} test images: top-1 {results['test_top1']:.2f}%, "
          f"top-5 {results['test_top5']:.2f}%, ECE {results['ece']:.4f} ({results['ece_bins']} bins)")
    print(f"soft labels at T={soft['temperature']:g}: entropy {soft['mean_entropy']:.4f} nats, off-class mass "
          f"{soft['mean_off_class_mass']:.4f}; within-class std (mean over classes): entropy "
          f"{soft['mean_over_classes']['entropy_std']:.4f}, off-class mass "
          f"{soft['mean_over_classes']['off_class_mass_std']:.4f}")
    if "class_distances" in results:
        print(f"intra/inter-class distance ratio: {results['class_distances']['intra_inter_ratio']:.4f} "
              f"({results['class_distances']['num_examples']} test images)")
    print(f"results: {os.path.abspath(metrics_path)}")
    print(f"picture: {os.path.abspath(picture_path)}")


def set_up_devices():
    """Joins the job of several processes (--num_processes > 1: JAX's jax.distributed, TensorFlow's
    MultiWorkerMirroredStrategy from TF_CONFIG) before any device is used, then sets --distribution
    before any model is built or loaded (the --teacher too: its variables must be laid out, or
    mirrored, like the student's). Returns the data-parallel device count."""
    from keras_icckd.training import distribution

    try:
        distribution.initialize_multi_host(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ValueError as e:
        raise app.UsageError(f"--num_processes={FLAGS.num_processes}: {e}")
    try:
        return distribution.configure(FLAGS.distribution, FLAGS.model_parallel_size)
    except ValueError as e:
        raise app.UsageError(f"--distribution={FLAGS.distribution!r}: {e}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.check_flags:
        defaults = {name: FLAGS[name].default for name in OWN_FLAGS}
        print(json.dumps({"flags": flag_values(), "defaults": defaults, "resumable_changes": RESUMABLE_CHANGES}))
        return
    validate_flags()
    if FLAGS.mode == "export":
        run_export()
        return
    if FLAGS.mode == "import":
        run_import()
        return
    if FLAGS.mode == "evaluate":
        run_evaluate()
        return
    import keras

    keras.config.set_dtype_policy(FLAGS.dtype_policy)
    factor = set_up_devices()
    if FLAGS.mode == "student" and FLAGS.teacher:
        load_student_teacher()  # a foreign or mismatched teacher fails before any data is read
    run({"teacher": build_teacher, "student": build_student}[FLAGS.mode], factor)


def tf_error_text(message):
    """The reason in a TensorFlow error message, without node names, stack notes and op suffixes."""
    import re

    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "File ", "[[")
    lines = [line.strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith(skip)] or [message.strip()]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0])
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text)


def data_problem(error):
    """The one line that ends a run on a data problem (naming the flag and the file), or None for other errors."""
    from keras_icckd import data

    message = str(error)
    if not isinstance(error, data.DataError):
        tf = sys.modules.get("tensorflow")
        decoding = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError,
                    tf.errors.UnknownError) if tf is not None else ()
        if not (FLAGS.stream and isinstance(error, decoding)):
            return None
        message = "an image could not be read: " + tf_error_text(message)
    if FLAGS.data_dir:
        where = f"--data_dir={FLAGS.data_dir}"
    elif FLAGS.dataset == "synthetic":
        where = "--dataset=synthetic"
    else:
        where = f"--data_dir (default for --dataset={FLAGS.dataset}: {data.default_data_dir(FLAGS.dataset)})"
    if FLAGS.dataset == "tfds":
        where += f" --tfds_name={FLAGS.tfds_name}"
    return f"data error: {where}: {' '.join(message.split())}"


def cli_main(argv):
    """`main`, ending every usage error and data problem with one line on stderr and exit code 1 (no
    traceback, and not absl's page of flag help before the line that matters)."""
    try:
        main(argv)
    except app.UsageError as e:
        print(f"run.py: error: {e}\n(python experiments/run.py --helpshort lists the flags)", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001  (only data problems are caught; the rest is raised again)
        line = data_problem(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(cli_main)
