"""The run configuration: one field per command-line flag (`--name` sets `RunConfig.name`), with the
flag's default and help, and `validate`, every check a run makes before any work.

    >>> config = RunConfig(mode="teacher", arch="resnet8", dataset="synthetic", epochs=2, output_dir="runs/t")
    >>> config.epochs, config.icc_lambda
    (2, 0.05)

The field names, defaults and value types are the flags' own (lists of strings for the list flags,
`views` as "auto" / "1" / "2"), so that a run's record (`metrics.json`'s "flags") reads the same
whichever way the run was started, and every committed flagfile keeps its meaning.
"""

import dataclasses
import json

from keras_icckd.data import datasets

MODES = ("teacher", "student", "export", "import", "evaluate")

# The input that each mode reads and no other mode does: given with another mode, it is refused
# (e.g. a teacher without mode="student" would otherwise train a teacher).
MODE_INPUTS = {"teacher": ("student",), "model": ("export", "evaluate"), "torch_checkpoint": ("import",),
               "torch_normalization": ("import",), "views": ("teacher",)}

# Options that do not change what is trained: a run may resume with different values.
RESUMABLE_CHANGES = ("output_dir", "resume", "tensorboard", "jit_compile", "distribution", "model_parallel_size",
                     "num_processes", "process_id", "coordinator_address", "input_pipeline", "check_flags")


class ConfigError(ValueError):
    """A run configuration that cannot run: names the option (as its flag, `--name=value`), the value
    received and what is allowed. Raised before any work."""


def _option(help, default=None, choices=None, default_factory=None):
    """A field with its flag's help; `choices`: the allowed values, or a function returning them (read when
    a run is checked, so that a registry's later additions count)."""
    metadata = {"help": help, "choices": choices if callable(choices) or not choices else tuple(choices)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class RunConfig:
    """Everything one run is: the command line's flags as fields (see each field's help with
    `RunConfig.help(name)` or `keras-icckd --helpfull`). Build one directly, or from flags with
    `keras_icckd.cli`; run it with `keras_icckd.recipes.run(config)`.

    `given` names the fields that were set explicitly (the CLI passes the flags present on its
    command line); a field outside it counts as given when its value differs from the default.
    """

    mode: str = _option(
        "What to run.",
        default='teacher', choices=MODES)
    arch: str = _option(
        "Backbone preset (see keras_icckd.backbones.names()).",
        default='resnet32x4')
    dataset: str = _option(
        "Data source, a name registered in keras_icckd.data.datasets. 'folder' with no --data_dir is the "
        "bundled CIFAR-10 subset.",
        default='folder', choices=datasets.names)
    data_dir: str | None = _option(
        "cifar10/cifar100: the python tarball or its folder; folder: a split/class/image folder or "
        "archive (default: the bundled CIFAR-10 subset); tfds: the TFDS data_dir (default $TFDS_DATA_DIR "
        "or ~/tensorflow_datasets); tinyimagenet: its archive or folder (default: found in "
        "$KERAS_ICCKD_DATA or the checkout's ../shared/datasets).",
        default=None)
    tfds_name: str | None = _option(
        "TFDS dataset name, with --dataset=tfds.",
        default=None)
    verify_checksum: bool = _option(
        "Check the md5 of the canonical CIFAR tarballs.",
        default=True)
    synthetic_classes: int = _option(
        "Classes of --dataset=synthetic.",
        default=10)
    synthetic_train_per_class: int = _option(
        "Training images per class, --dataset=synthetic.",
        default=50)
    synthetic_test_per_class: int = _option(
        "Test images per class, --dataset=synthetic.",
        default=10)
    synthetic_subclasses: int = _option(
        "Sub-clusters inside each synthetic class.",
        default=1)
    max_train_examples: int = _option(
        "Use a class-balanced subset of the training set (0: all).",
        default=0)
    max_test_examples: int = _option(
        "Use a class-balanced subset of the test set (0: all).",
        default=0)
    image_size: int = _option(
        "Train and evaluate on image_size x image_size images (0: the dataset's own size; 224 with "
        "--stream). In-memory datasets are resized once when loaded (PIL's antialiased bilinear filter), "
        "e.g. --dataset=tinyimagenet --image_size=32; with --stream it is the crop size.",
        default=0)
    stream: bool = _option(
        "Read the data lazily instead of into memory, for datasets larger than memory: --dataset=folder "
        "(a directory or uncompressed .tar laid out train/<class>/..., val/<class>/..., images of any "
        "size) or --dataset=tfds. Training: RandomResizedCrop(--image_size) + flip; evaluation: resize to"
        " --eval_resize + centre crop; ImageNet's mean and std.",
        default=False)
    eval_resize: int = _option(
        "--stream: shorter side of evaluation images before the centre crop (0: image_size * 256 / 224, "
        "i.e. 256 for 224).",
        default=0)
    shuffle_window: int = _option(
        "--stream with --dataset=tfds: examples shuffled together per epoch.",
        default=10000)
    tfds_test_split: str = _option(
        "--dataset=tfds: the split evaluated (ImageNet's is 'validation').",
        default='test')
    epochs: int = _option(
        "Training epochs.",
        default=240)
    batch_size: int = _option(
        "Training batch size.",
        default=64)
    eval_batch_size: int = _option(
        "Evaluation batch size.",
        default=256)
    lr: float = _option(
        "Initial learning rate.",
        default=0.05)
    lr_decay_epochs: list = _option(
        "Epochs at which lr is multiplied by --lr_decay_rate.",
        default_factory=lambda: ['150', '180', '210'])
    lr_decay_rate: float = _option(
        "Step-decay factor.",
        default=0.1)
    lr_warmup_epochs: float = _option(
        "Epochs of linear learning-rate warm-up (0: none).",
        default=0.0)
    optimizer: str = _option(
        "torch_sgd: PyTorch's SGD (L2 weight decay added to the gradient before momentum, on every "
        "trainable weight), the published CIFAR recipe. keras_sgd: keras.optimizers.SGD (decoupled weight"
        " decay, about 10x weaker at momentum 0.9).",
        default='torch_sgd', choices=('torch_sgd', 'keras_sgd'))
    momentum: float = _option(
        "SGD momentum.",
        default=0.9)
    weight_decay: float = _option(
        "Weight decay (coupled with torch_sgd, decoupled with keras_sgd).",
        default=0.0005)
    seed: int = _option(
        "Seeds Python, NumPy, the backend and the data order.",
        default=0)
    resume: bool = _option(
        "Continue from output_dir/checkpoint.npz when it exists (same flags required); --noresume starts "
        "over.",
        default=True)
    output_dir: str | None = _option(
        "Where the run's files go (created if missing).",
        default=None)
    icc_lambda: float = _option(
        "Weight of the intra-class contrastive loss; 0 gives a plain CE teacher.",
        default=0.05)
    views: str = _option(
        "--mode=teacher: augmented views of each image per training batch. auto: 2 when --icc_lambda > 0 "
        "(the intra-class term needs them), else 1. 2 with --icc_lambda=0: both views go through the "
        "network (batch norm sees them together, as in an ICC teacher) and CE is taken on the first "
        "alone: the two-view CE control. 1 with --icc_lambda > 0 is refused.",
        default='auto', choices=('auto', '1', '2'))
    icc_delta: float = _option(
        "Margin threshold delta of the ICC margin mechanism.",
        default=0.5)
    icc_tau: float = _option(
        "Temperature of the intra-class contrastive loss.",
        default=0.1)
    icc_cache_size: int = _option(
        "Slots of the cache of earlier projections (0: no cache).",
        default=4096)
    icc_margin_mode: str = _option(
        "Margin mechanism (reconstructed, see METHODS.md): gate | hinge | none.",
        default='gate', choices=('gate', 'hinge', 'none'))
    icc_projection_dim: int = _option(
        "Output size of the teacher's projection head.",
        default=128)
    init_model: str | None = _option(
        "--mode=teacher: start from the weights of this .keras file (a backbone from --mode=import or any"
        " model the project writes; a teacher's file gives its backbone) instead of a random --arch; its "
        "architecture replaces --arch. The fine-tuning of published teachers.",
        default=None)
    teacher: str | None = _option(
        "--mode=student: the teacher's .keras file (from --mode=teacher or --mode=import); without it the"
        " student trains with cross-entropy alone.",
        default=None)
    student_arch: str = _option(
        "--mode=student: the student backbone preset.",
        default='resnet8x4')
    objectives: str = _option(
        "--mode=student: weighted distillation objectives, e.g. kd:0.9,rkd:1 or crd:0.8,kd:0.9 (names: "
        "those of keras_icckd.objectives.names(); EXPERIMENTAL ones are reconstructed from their paper's "
        "abstract). Options in parentheses: dkd(beta=2;warmup_epochs=20):1.",
        default='kd:0.9')
    ce_weight: float = _option(
        "--mode=student: weight of the student's cross-entropy.",
        default=0.1)
    diagnostic_examples: int = _option(
        "Held-out test images used for the per-epoch intra/inter-class distances (0: off).",
        default=1000)
    jit_compile: str = _option(
        "XLA compilation of the train step. auto: off on TensorFlow (faster on CPU), on for JAX.",
        default='auto', choices=('auto', 'true', 'false'))
    dtype_policy: str = _option(
        "Keras dtype policy of --mode=teacher/student training: mixed_* compute in float16 / bfloat16 "
        "with float32 variables and float32 losses (mixed_float16 adds dynamic loss scaling). Pays off on"
        " GPUs/TPUs; slower on CPU. Exports are always float32.",
        default='float32', choices=('float32', 'mixed_float16', 'mixed_bfloat16'))
    distribution: str = _option(
        "Several devices: data_parallel splits each batch over all devices (keras.distribution on JAX, "
        "tf.distribute's MirroredStrategy on TensorFlow, MultiWorkerMirroredStrategy with a multi-worker "
        "TF_CONFIG); model_parallel (JAX only) also shards conv kernels over --model_parallel_size "
        "devices. Batch sizes and the test-set size must be multiples of the data-parallel device count.",
        default='none', choices=('none', 'data_parallel', 'model_parallel'))
    model_parallel_size: int = _option(
        "--distribution=model_parallel: devices along the model axis.",
        default=2)
    num_processes: int = _option(
        "Multi-host: processes in the job (one per host; on TensorFlow as many as TF_CONFIG's workers).",
        default=1)
    process_id: int = _option(
        "Multi-host: this process's id in [0, --num_processes) (on TensorFlow, its TF_CONFIG task index).",
        default=0)
    coordinator_address: str | None = _option(
        "Multi-host JAX: host:port of process 0.",
        default=None)
    tensorboard: bool = _option(
        "Write TensorBoard logs into output_dir/tensorboard (needs TensorFlow; skipped with a warning "
        "without it).",
        default=True)
    input_pipeline: str = _option(
        "tf_data: tf.data (needs TensorFlow); numpy: keras.utils.PyDataset without TensorFlow (the same "
        "batches); auto: tf_data when TensorFlow can be imported, else numpy (numpy with --num_processes "
        "> 1 on JAX).",
        default='auto', choices=('auto', 'tf_data', 'numpy'))
    augment: str = _option(
        "Extra augmentation with Keras preprocessing layers, after the crop and flip, in order: e.g. "
        "'randaugment,mixup(alpha=0.2)' (names: keras_icckd.data.augment.LAYERS; options in parentheses, ';' "
        "between them). Seeded per (seed, epoch, batch): resume stays exact. mixup/cutmix mix images and labels "
        "(soft-label CE; the teacher sees the same mixed images): --mode=student only. Empty: none.",
        default='')
    model: str | None = _option(
        "--mode=export: a .keras file (student, imported model, or a teacher: its backbone); "
        "--mode=evaluate: the same, or a .tflite file from --mode=export.",
        default=None)
    export_quantizations: list = _option(
        "--mode=export: TFLite files to write (float32, float16, int8).",
        default_factory=lambda: ['float32', 'float16', 'int8'])
    export_formats: list = _option(
        "--mode=export: formats to write, each verified in its own runtime: keras (model.keras, built-in Keras "
        "layers only: loads without keras_icckd), saved_model (TF Serving), onnx (needs the [export] extra), "
        "litert (the TFLite files of --export_quantizations).",
        default_factory=lambda: ['litert'])
    export_input: str = _option(
        "--mode=export: what the exported files take: normalized ((pixels / 255 - mean) / std, as in "
        "training), pixels (float pixels in [0, 255]) or uint8 (uint8 pixels; the int8 TFLite file then has a "
        "uint8 input tensor): the pixel forms fold the normalisation into the graph.",
        default='normalized', choices=('normalized', 'pixels', 'uint8'))
    export_int8_io: bool = _option(
        "--mode=export: int8 input/output tensors in the int8 file.",
        default=False)
    export_batch_size: int = _option(
        "--mode=export: fixed batch size of the TFLite files (0: dynamic).",
        default=0)
    representative_examples: int = _option(
        "--mode=export: class-balanced training images that calibrate int8.",
        default=256)
    parity_tolerance: float = _option(
        "--mode=export: largest allowed max |logit difference| of the float32 file.",
        default=0.0001)
    torch_checkpoint: str | None = _option(
        "--mode=import: a PyTorch checkpoint (.pt/.pth/.th) of a CIFAR network: RepDistiller / mdistiller"
        " / chenyaofo layouts or akamaster's option-A ResNets. --arch names the preset (default: inferred"
        " from the keys and shapes); with --dataset, its test top-1 is measured.",
        default=None)
    torch_normalization: str | None = _option(
        "--mode=import: how the checkpoint's training images were normalised: imagenet, cifar10, cifar100"
        " or R,G,B,R,G,B (mean then std of pixels in [0, 1]). akamaster: imagenet.",
        default=None)
    evaluate_temperature: float = _option(
        "--mode=evaluate: temperature T of the soft-label statistics (entropy and off-true-class mass of "
        "softmax(z/T), the distillation temperature).",
        default=4.0)

    given: frozenset = dataclasses.field(default=frozenset(), repr=False, compare=False,
                                         metadata={"internal": True})

    def __post_init__(self):
        for name in ("lr_decay_epochs", "export_quantizations", "export_formats"):  # the flags' form: a list of strings
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            setattr(self, name, [str(v) for v in value])
        self.views = str(self.views)
        self.given = frozenset(self.given)

    @classmethod
    def options(cls):
        """The option fields (every field but `given`), in flag order."""
        return tuple(f for f in dataclasses.fields(cls) if not f.metadata.get("internal"))

    @classmethod
    def defaults(cls):
        """{name: default value} of every option."""
        return {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                for f in cls.options()}

    @classmethod
    def choices(cls, name):
        """The allowed values of an option (None: any value of its type that the checks accept)."""
        choices = next(f.metadata["choices"] for f in cls.options() if f.name == name)
        return tuple(choices()) if callable(choices) else choices

    @classmethod
    def help(cls, name):
        return next(f.metadata["help"] for f in cls.options() if f.name == name)

    def values(self):
        """{name: value} of every option: what a run records as its "flags"."""
        return {f.name: getattr(self, f.name) for f in self.options()}

    def is_given(self, name):
        """Whether an option was set: named in `given`, or different from its default."""
        return name in self.given or getattr(self, name) != self.defaults()[name]

    def replace(self, **changes):
        """A copy with some options changed (they count as given)."""
        return dataclasses.replace(self, given=self.given | set(changes), **changes)

    def to_json(self):
        return json.dumps(self.values())
