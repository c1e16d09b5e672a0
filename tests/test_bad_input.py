"""A table of bad inputs: each is refused with a clear message naming the problem, before any work.

Flag cases go through run.py's own parser and validator in-process (the same code the command
line runs; tests/test_run.py drives a sample of them through a real subprocess); API cases call
the public constructors; file cases feed truncated or foreign files.
"""

import io
import os
import sys
import tarfile
import zipfile

import keras
import numpy as np
import pytest
from absl import app
from absl import flags

from keras_icckd import backbones
from keras_icckd import cli
from keras_icckd import recipes
from keras_icckd import data
from keras_icckd import objectives
from keras_icckd import training
from keras_icckd.models import ContrastiveTeacher
from keras_icckd.models import Distiller
from keras_icckd.models import load_teacher
from keras_icckd.recipes import checks



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    net = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    teacher = str(root / "teacher.keras")
    net.save(teacher)
    text = root / "notes.keras"
    text.write_text("not a model")
    blocker = root / "a_file"
    blocker.write_text("")
    trained = root / "trained"  # a finished training run's outputs (what matters here: its mode)
    trained.mkdir()
    (trained / "metrics.json").write_text('{"mode": "teacher", "test_top1": 50.0}')
    unfinished = root / "unfinished"  # a training run killed after its first checkpoint
    unfinished.mkdir()
    (unfinished / "checkpoint.npz").write_bytes(b"")
    return {"teacher": teacher, "text": str(text), "blocker": str(blocker), "root": str(root),
            "trained": str(trained), "unfinished": str(unfinished)}


def validate(argv, files):
    """Parses argv with the command line's flags and runs the library's checks; returns the error message."""
    values = flags.FlagValues()
    cli.define_flags(values)
    argv = [a.format(**files) for a in argv]
    out = os.path.join(files["root"], "out")
    try:
        values(["run.py", f"--output_dir={out}", *argv])
        checks.validate(cli.config_from_flags(values))
    except (app.UsageError, flags.Error, recipes.ConfigError) as e:
        return str(e)
    return None


STUDENT = ["--mode=student", "--teacher={teacher}"]
EXPORT = ["--mode=export", "--model={teacher}"]

FLAG_CASES = [
    (["--arch=resnet9"], "--arch='resnet9' is not allowed: expected one of mobilenetv1_imagenet, mobilenetv2,"),
    ([*STUDENT, "--student_arch=resnet7"], "--student_arch='resnet7' is not allowed: expected one of"),
    (["--dataset=imagenet"], "value should be one of <cifar10|cifar100|folder|tfds|synthetic|tinyimagenet>"),
    (["--mode=train"], "value should be one of <teacher|student|export|import|evaluate>"),
    (["--optimizer=adam"], "value should be one of <torch_sgd|keras_sgd>"),
    (["--dtype_policy=float16"], "value should be one of <float32|mixed_float16|mixed_bfloat16>"),
    (["--epochs=0"], "--epochs=0 is not allowed: expected >= 1"),
    (["--batch_size=-4"], "--batch_size=-4 is not allowed: expected >= 1"),
    (["--eval_batch_size=0"], "--eval_batch_size=0 is not allowed"),
    (["--synthetic_classes=0"], "--synthetic_classes=0 is not allowed"),
    (["--max_train_examples=-1"], "--max_train_examples=-1 is not allowed: expected >= 0"),
    (["--icc_cache_size=-5"], "--icc_cache_size=-5 is not allowed"),
    (["--icc_lambda=-0.1"], "--icc_lambda=-0.1 is not allowed: expected >= 0"),
    (["--icc_delta=1.5"], "--icc_delta=1.5 is not allowed: expected in [-1, 1] with --icc_margin_mode=gate"),
    (["--icc_tau=0"], "--icc_tau=0.0 is not allowed: expected > 0"),
    (["--views=1"], "--views='1' is not allowed: expected auto or 2 with --icc_lambda > 0"),
    (["--views=3"], "value should be one of <auto|1|2>"),
    ([*STUDENT, "--views=2"], "--views='2' is not allowed: expected unset unless --mode=teacher"),
    (["--icc_margin_mode=soft"], "value should be one of <gate|hinge|none>"),
    (["--lr=0"], "--lr=0.0 is not allowed: expected > 0"),
    (["--lr_decay_rate=1.5"], "--lr_decay_rate=1.5 is not allowed: expected in (0, 1]"),
    (["--lr_decay_epochs=5,3"], "--lr_decay_epochs=['5', '3'] is not allowed: expected increasing integers"),
    (["--lr_decay_epochs=ten"], "--lr_decay_epochs=['ten'] is not allowed"),
    (["--lr_warmup_epochs=-1"], "--lr_warmup_epochs=-1.0 is not allowed: expected in [0, --epochs]"),
    (["--momentum=1"], "--momentum=1.0 is not allowed: expected in [0, 1)"),
    (["--weight_decay=-1e-4"], "--weight_decay=-0.0001 is not allowed: expected >= 0"),
    (["--epochs=many"], "flag --epochs=many: invalid literal for int()"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    ([*STUDENT, "--objectives=kd:0.9,crd2:1"], "unknown name 'crd2'"),
    ([*STUDENT, "--objectives=kd:x"], "--objectives='kd:x' is not allowed"),
    ([*STUDENT, "--objectives="], "--objectives='' is not allowed"),
    ([*STUDENT, "--ce_weight=-1"], "--ce_weight=-1.0 is not allowed: expected >= 0"),
    (["--mode=student", "--teacher=/nonexistent/t.keras"], "--teacher='/nonexistent/t.keras' is not allowed"),
    (["--mode=student"], None),  # no --teacher: the student trains with cross-entropy alone
    (["--mode=student", "--objectives=kd:1"], "--objectives='kd:1' is not allowed: expected no value without --teacher"),
    (["--mode=student", "--ce_weight=0.5"], "--ce_weight=0.5 is not allowed: expected no value without --teacher"),
    (["--mode=student", "--teacher="], "--teacher='' is not allowed"),
    (["--mode=evaluate"], "--model=None is not allowed: expected an existing .keras file written by keras_icckd (a run"),
    (["--mode=evaluate", "--model={text}", "--evaluate_temperature=0"], "--evaluate_temperature=0.0 is not allowed"),
    (["--dataset=cifar100"], "--data_dir=None is not allowed: expected a path with --dataset=cifar100"),
    (["--dataset=folder", "--data_dir=/nonexistent/cifar"], "--data_dir='/nonexistent/cifar' is not allowed"),
    (["--dataset=tfds"], "--tfds_name=None is not allowed"),
    (["--image_size=-1"], "--image_size=-1 is not allowed: expected >= 0"),
    (["--num_processes=2"], "--distribution='none' is not allowed: expected data_parallel or model_parallel with "
                            "--num_processes > 1"),
    (["--distribution=data_parallel", "--num_processes=2", "--process_id=2"],
     "--process_id=2 is not allowed: expected in [0, --num_processes)"),
    (["--dataset=tinyimagenet", "--stream"], "--stream=True is not allowed: expected False unless --dataset=folder"),
    (["--dataset=folder", "--stream"], "--data_dir=None is not allowed: expected the image folder or .tar archive"),
    (["--dataset=tfds", "--tfds_name=x", "--stream", "--eval_resize=200"], "--eval_resize=200 is not allowed"),
    (["--dataset=tfds", "--tfds_name=x", "--stream", "--shuffle_window=0"], "--shuffle_window=0 is not allowed"),
    (["--output_dir={blocker}/sub"], "is not writable"),
    (["--mode=export"], "--model=None is not allowed"),
    (["--mode=export", "--model={text}"], None),  # an existing .keras path passes here; loading refuses it
    ([*EXPORT, "--export_quantizations=int4"], "--export_quantizations=['int4'] is not allowed"),
    ([*EXPORT, "--export_quantizations=int8,int8"], "distinct names"),
    ([*EXPORT, "--export_batch_size=-1"], "--export_batch_size=-1 is not allowed"),
    ([*EXPORT, "--parity_tolerance=0"], "--parity_tolerance=0.0 is not allowed"),
    ([*EXPORT, "--representative_examples=0"], "--representative_examples=0 is not allowed"),
    (["--mode=import"], "--torch_checkpoint=None is not allowed: expected an existing PyTorch checkpoint file"),
    (["--mode=import", "--torch_checkpoint={text}"],
     "--torch_normalization=None is not allowed: expected one of cifar10, cifar100, imagenet, tinyimagenet or six numbers"),
    (["--mode=import", "--torch_checkpoint={text}", "--torch_normalization=0.5,0.5,0.5,0.2,0.2"],
     "--torch_normalization='0.5,0.5,0.5,0.2,0.2' is not allowed"),
    (["--mode=import", "--torch_checkpoint={text}", "--torch_normalization=imagenet"], None),
    # every float flag must be finite (inf would pass a ">= 0" check, nan fails only as a NaN loss later)
    (["--icc_lambda=inf"], "--icc_lambda=inf is not allowed: expected a finite number"),
    (["--icc_tau=inf"], "--icc_tau=inf is not allowed: expected a finite number"),
    (["--icc_margin_mode=hinge", "--icc_delta=nan"], "--icc_delta=nan is not allowed: expected a finite number"),
    (["--lr=inf"], "--lr=inf is not allowed: expected a finite number"),
    (["--weight_decay=inf"], "--weight_decay=inf is not allowed: expected a finite number"),
    ([*STUDENT, "--ce_weight=inf"], "--ce_weight=inf is not allowed: expected a finite number"),
    # the input that only one mode reads, given with another mode (e.g. a teacher trained in place of a student)
    (["--teacher={teacher}", "--student_arch=resnet8"],
     "--teacher='{teacher}' is not allowed: expected unset unless --mode=student (it is what that mode reads; "
     "here --mode=teacher)"),
    ([*STUDENT, "--model={teacher}"], "--model='{teacher}' is not allowed: expected unset unless --mode=export or "
                                      "--mode=evaluate"),
    (["--torch_checkpoint={text}"], "--torch_checkpoint='{text}' is not allowed: expected unset unless --mode=import"),
    # an output_dir holding another mode's outputs, or a training run's checkpoint for import / evaluate
    (["--mode=evaluate", "--model={teacher}", "--output_dir={trained}"],
     "--output_dir='{trained}' holds the outputs of a --mode=teacher run ({trained}/metrics.json); "
     "--mode=evaluate would replace them"),
    ([*STUDENT, "--output_dir={trained}"], "holds the outputs of a --mode=teacher run"),
    (["--output_dir={trained}"], None),  # the same mode: resumed or refused by the checkpoint's flags (test_run)
    (["--mode=import", "--torch_checkpoint={text}", "--torch_normalization=imagenet", "--output_dir={unfinished}"],
     "--output_dir='{unfinished}' holds a training run's checkpoint.npz; --mode=import would mix"),
    ([*EXPORT, "--output_dir={trained}"], None),  # export writes only its own files beside a run's
]


@pytest.mark.parametrize("argv, message", FLAG_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_flag_is_refused_with_its_name_value_and_what_is_allowed(files, argv, message):
    error = validate(argv, files)
    if message is None:
        assert error is None
    else:
        assert error is not None and message.format(**files) in error, error


@pytest.mark.parametrize("argv, message", [
    (["--input_pipeline=tf_data"], "--input_pipeline='tf_data' is not allowed: expected auto or numpy without "
                                   "TensorFlow"),
    (["--dataset=tfds", "--tfds_name=cifar10"], "--dataset='tfds' is not allowed: expected not tfds without TensorFlow"),
    (EXPORT, "--mode='export' is not allowed: expected not export without TensorFlow"),
])
def test_what_needs_tensorflow_is_refused_where_it_cannot_be_imported(files, monkeypatch, argv, message):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError now
    error = validate(argv, files)
    assert error is not None and message in error, error


def test_the_numpy_input_pipeline_is_for_jax(files):
    error = validate(["--input_pipeline=numpy"], files)
    if keras.backend.backend() == "jax":
        assert error is None
    else:
        assert "--input_pipeline='numpy' is not allowed: expected auto or tf_data on the TensorFlow backend" in error


def test_model_parallel_and_the_coordinator_address_are_for_jax(files):
    jax = keras.backend.backend() == "jax"
    error = validate(["--distribution=model_parallel"], files)
    assert error is None if jax else "--distribution='model_parallel' is not allowed: expected none or " \
        "data_parallel on the TensorFlow backend" in error, error
    error = validate(["--distribution=data_parallel", "--num_processes=2"], files)  # TensorFlow reads TF_CONFIG
    assert error is None if not jax else "--coordinator_address=None is not allowed: expected host:port of " \
        "process 0 when --num_processes > 1 on JAX" in error, error


def test_several_jax_processes_read_their_shares_with_the_numpy_pipeline(files, tmp_path):
    """Keras cannot split this project's tf.data pipelines between JAX processes (their batch size
    is not static): with several JAX processes each process reads its own share, with the numpy
    pipeline (auto picks it) or from the stream (tests/test_multi_host.py)."""
    jax = keras.backend.backend() == "jax"
    job = ["--distribution=data_parallel", "--num_processes=2", "--coordinator_address=127.0.0.1:1"]
    error = validate([*job, "--input_pipeline=tf_data"], files)
    assert error is None if not jax else "--input_pipeline='tf_data' is not allowed: expected auto or numpy with " \
        "--num_processes > 1 on JAX" in error, error
    assert validate([*job, "--dataset=folder", f"--data_dir={tmp_path}", "--stream"], files) is None
    assert validate([*job, "--input_pipeline=auto"], files) is None


def test_a_flagfile_with_an_unknown_flag_is_refused(files, tmp_path):
    flagfile = tmp_path / "bad.flags"
    flagfile.write_text("--arch=resnet8\n--learning_rate=0.1\n")
    assert "Unknown command line flag 'learning_rate'" in validate([f"--flagfile={flagfile}"], files)


def _backbone(classes=3, shape=(16, 16, 3)):
    return backbones.get("resnet8", num_classes=classes, input_shape=shape)


API_CASES = [
    (lambda: backbones.get("resnet9", num_classes=3), "resnet9"),
    (lambda: ContrastiveTeacher(_backbone(), icc_tau=0), "icc_tau=0 is not allowed"),
    (lambda: ContrastiveTeacher(_backbone(), icc_lambda=-1), "icc_lambda=-1 is not allowed"),
    (lambda: ContrastiveTeacher(_backbone(), icc_margin_mode="soft"), "icc_margin_mode='soft' is not allowed"),
    (lambda: ContrastiveTeacher(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])),
     "backbone must be a keras_icckd backbone"),
    (lambda: Distiller(_backbone(5), _backbone(3), "kd:1"), "teacher has 5 classes but the student has 3"),
    (lambda: Distiller(_backbone(3, (32, 32, 3)), _backbone(3), "kd:1"), "teacher input shape"),
    (lambda: Distiller(_backbone(), _backbone(), "kd:1", ce_weight=-1), "ce_weight=-1"),
    (lambda: Distiller(_backbone(), _backbone(), "kd:1", num_train=0), "num_train=0"),
    (lambda: Distiller(_backbone(), _backbone(), "crd:1"), "num_train"),
    (lambda: objectives.parse("kd:-1"), "weight must be a finite number >= 0"),
    (lambda: objectives.parse("kd:0.9,kd:1"), "objective 'kd' is given twice"),
    (lambda: training.TorchSGD(momentum=1.0), "momentum=1.0: expected in [0, 1)"),
    (lambda: training.TorchSGD(weight_decay=-1), "weight_decay=-1: expected >= 0"),
    (lambda: training.epoch_step_decay(0.1, 10, [3, 2]), "decay_epochs=[3, 2]"),
    (lambda: training.epoch_step_decay(0.1, 10, [2], decay_rate=0), "decay_rate=0"),
    (lambda: data.make_train_dataset(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), 8, seed=0,
                                     mean=(0.5,) * 3, std=(0.2,) * 3), "batch_size must be an integer between 1"),
    (lambda: data.make_train_dataset(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), 2, seed=0,
                                     mean=(0.5,) * 3, std=(0.2,) * 3, views=3), "views must be 1 or 2"),
    (lambda: data.make_train_dataset(np.zeros((4, 8, 8, 3), np.float32), np.zeros(4), 2, seed=0,
                                     mean=(0.5,) * 3, std=(0.2,) * 3), "images must be a uint8 array"),
    (lambda: data.load("imagenet"), "Unknown data source 'imagenet'"),
    (lambda: data.load("cifar10"), "needs data_dir"),
]


@pytest.mark.parametrize("make, message", API_CASES)
def test_bad_api_argument_raises_value_error_naming_it(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value), str(info.value)


def test_truncated_or_foreign_model_files_are_refused(files, tmp_path):
    blob = open(files["teacher"], "rb").read()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="is not a .keras model file"):
        load_teacher(str(truncated))
    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("config.json", '{"class_name": "Nothing"}')
    with pytest.raises(ValueError, match="could not be loaded as a keras_icckd model"):
        load_teacher(str(foreign))
    with pytest.raises(ValueError, match="is not a .keras model file"):
        load_teacher(files["text"])


def _image_archive(path, bad=None):
    """A split/class/image tar.gz of 2 classes; `bad` replaces the first training image's bytes."""
    from PIL import Image

    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                for i in range(2):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, format="PNG")
                    payload = buf.getvalue()
                    if bad is not None and (split, cls, i) == ("train", "cat", 0):
                        payload = bad
                    info = tarfile.TarInfo(f"d/{split}/{cls}/{i}.png")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def test_corrupt_dataset_archives_are_refused(tmp_path):
    good = str(tmp_path / "good.tar.gz")
    _image_archive(good)
    assert data.load("folder", good).num_classes == 2
    truncated = tmp_path / "truncated.tar.gz"
    blob = open(good, "rb").read()
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="not a readable tar archive"):
        data.load("folder", str(truncated))
    wrong = str(tmp_path / "wrong.tar.gz")
    _image_archive(wrong, bad=b"this is a text file, not a PNG image")
    with pytest.raises(data.DataError, match="Cannot read image .*0.png"):
        data.load("folder", wrong)


def test_there_are_at_least_30_cases():
    assert len(FLAG_CASES) + len(API_CASES) + 3 >= 30
