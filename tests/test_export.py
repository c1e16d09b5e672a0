"""Export: every format verified in its runtime, TFLite parity on real images, int8, fixed batches,
raw-pixel input, JAX-trained models, bad input, CLI."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from helpers import REPO_ROOT, backend
from keras_icckd import backbones, data, deploy, export
from keras_icckd.models import ContrastiveTeacher

RUN = os.path.join(REPO_ROOT, "experiments", "run.py")


def normalise(images, splits):
    mean, std = data.normalization_for(splits)
    return (images.astype("float32") / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")


@pytest.fixture(scope="module")
def real():
    """Real CIFAR-10 images (the bundled subset): 1000 to train on, 200 to verify on."""
    splits = data.load("folder").subset(max_train=1000, max_test=200, seed=0)
    return (normalise(splits.train_images, splits), splits.train_labels,
            normalise(splits.test_images, splits), splits.test_labels)


@pytest.fixture(scope="module")
def student(real):
    """A resnet8 trained for two epochs on real images, so that its logits mean something."""
    keras.utils.set_random_seed(0)
    model = backbones.get("resnet8", num_classes=10)
    trainer = keras.Model(model.input, model.output["logits"])
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(real[0], real[1], batch_size=64, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(student, real, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    report = export.export_tflite(student, out, test_images=real[2], test_labels=real[3],
                                  representative_images=real[0][:100], latency_runs=5)
    return out, report


def op_names(path):
    from ai_edge_litert.interpreter import Interpreter

    return {op["op_name"] for op in Interpreter(model_path=path)._get_ops_details()}


def test_export_writes_three_verified_files(exported, real):
    out, report = exported
    assert sorted(os.listdir(out)) == ["export.json", "model_float16.tflite", "model_float32.tflite",
                                       "model_int8.tflite"]
    assert json.load(open(os.path.join(out, "export.json"))) == json.loads(json.dumps(report))
    files = report["files"]
    assert files["float32"]["max_abs_diff"] <= 1e-4
    assert files["float32"]["top1_agreement"] == 1.0
    assert files["float16"]["top1_agreement"] >= 0.97
    assert files["int8"]["top1_agreement"] >= 0.8  # most of a real sample
    assert abs(files["int8"]["top1_drop"]) <= 10.0
    assert report["keras_top1"] > 15.0  # the model learnt something from real images
    # sizes: float16 about half of float32, int8 about a quarter
    assert files["float16"]["size_kb"] < 0.6 * files["float32"]["size_kb"]
    assert files["int8"]["size_kb"] < 0.4 * files["float32"]["size_kb"]
    assert report["trained_backend"] == backend()
    for name in files:
        ops = op_names(os.path.join(out, f"model_{name}.tflite"))
        assert ops and not any(op.lower().startswith("flex") for op in ops), ops
        assert files[name]["shape_signature"] == [-1, 32, 32, 3]  # dynamic batch
        assert files[name]["latency_ms"] > 0


def test_exported_file_runs_on_the_plain_interpreter_at_any_batch(exported, student, real):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.path.join(exported[0], "model_float32.tflite"))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [7, 32, 32, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, real[2][:7])
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = keras.ops.convert_to_numpy(student(real[2][:7], training=False)["logits"])
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_fixed_batch_and_int8_io(student, real, tmp_path):
    report = export.export_tflite(student, str(tmp_path), test_images=real[2][:50], test_labels=real[3][:50],
                                  representative_images=real[0][:50], quantizations=("float32", "int8"),
                                  int8_io=True, batch_size=8, latency_runs=2)
    assert report["files"]["float32"]["shape_signature"] == [8, 32, 32, 3]  # 50 = 6 x 8 + 2: padded
    assert report["files"]["float32"]["max_abs_diff"] <= 1e-4
    assert report["files"]["int8"]["input_dtype"] == "int8"
    assert report["files"]["int8"]["top1_agreement"] >= 0.7
    assert sorted(os.listdir(tmp_path)) == ["export.json", "model_float32.tflite", "model_int8.tflite"]


_TRAIN_UNDER_JAX = textwrap.dedent("""
    import sys
    import keras, numpy as np
    from keras_icckd import backbones
    keras.utils.set_random_seed(0)
    model = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    trainer = keras.Model(model.input, model.output["logits"])
    trainer.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    trainer.fit(rng.normal(size=(32, 16, 16, 3)), np.arange(32) % 3, epochs=1, verbose=0)
    assert keras.backend.backend() == "jax"
    model.save(sys.argv[1])
""")


def test_a_model_trained_under_jax_exports(tmp_path):
    path = str(tmp_path / "jax_student.keras")
    env = dict(os.environ, KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-c", _TRAIN_UNDER_JAX, path], env=env, check=True, capture_output=True,
                   timeout=300)
    images = np.random.default_rng(1).normal(size=(20, 16, 16, 3)).astype("float32")
    out = str(tmp_path / "out")
    report = export.export_tflite(path, out, test_images=images, quantizations=("float32",), latency_runs=0)
    assert report["files"]["float32"]["max_abs_diff"] <= 1e-4
    assert os.path.getsize(os.path.join(out, "model_float32.tflite")) > 0


def test_every_format_with_uint8_input_is_verified_in_its_own_runtime(student, real, tmp_path):
    splits = data.load("folder")
    mean, std = data.normalization_for(splits)
    normalization = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    out = str(tmp_path / "all")
    report = export.export_model(student, out, formats=("keras", "saved_model", "onnx", "litert"),
                                 input_format="uint8", test_images=real[2][:100], test_labels=real[3][:100],
                                 representative_images=real[0][:100], normalization=normalization,
                                 class_names=splits.class_names, latency_runs=2)
    assert sorted(os.listdir(out)) == ["export.json", "model.keras", "model.onnx", "model_float16.tflite",
                                       "model_float32.tflite", "model_int8.tflite", "saved_model"]
    files = report["files"]
    assert [files[k]["format"] for k in ("keras", "saved_model", "onnx", "float32")] == \
        ["keras", "saved_model", "onnx", "litert"]
    for name in ("keras", "saved_model", "onnx", "float32"):  # the float files, against the trained model
        assert files[name]["max_abs_diff"] <= 1e-4 and files[name]["top1_agreement"] == 1.0, (name, files[name])
        assert files[name]["input"] == {"format": "uint8", "dtype": "uint8", "expects": "pixels in [0, 255]"}
        assert files[name]["latency_ms"] > 0 and files[name]["size_kb"] > 10
    assert files["int8"]["input_dtype"] == "uint8" and files["int8"]["top1_agreement"] >= 0.8
    assert report["input_format"] == "uint8" and report["normalization"] == normalization
    for entry in files.values():  # every file carries the metadata
        metadata = deploy.read_metadata(os.path.join(out, entry["file"]))
        assert metadata["normalization"] == normalization and metadata["input_format"] == "uint8", entry["file"]
        assert metadata["class_names"] == list(splits.class_names) and metadata["input_shape"] == [32, 32, 3]
    # the int8 file takes raw camera pixels: its uint8 input tensor quantises [0, 255] as (scale 1, zero 0)
    runner = export.TFLiteRunner(os.path.join(out, "model_int8.tflite"))
    scale, zero = runner.input["quantization"]
    pixels = export.to_pixels(real[2][:100], normalization)
    if (scale, zero) == (1.0, 0):
        runner.interpreter.resize_tensor_input(runner.input["index"], [100, 32, 32, 3])
        runner.interpreter.allocate_tensors()
        runner.interpreter.set_tensor(runner.input["index"], pixels.astype("uint8"))
        runner.interpreter.invoke()
        raw = runner.interpreter.get_tensor(runner.output["index"])
        np.testing.assert_array_equal(np.argmax(raw, -1), np.argmax(runner(pixels), -1))
    reference = export.keras_logits(student, real[2][:100])
    assert np.mean(np.argmax(runner(pixels), -1) == np.argmax(reference, -1)) >= 0.8


def test_pixel_formats_fold_the_normalisation_and_need_one(student, real, tmp_path):
    out = str(tmp_path / "pixels")
    with pytest.raises(export.ExportError, match="records none"):
        export.export_model(student, out, formats=("keras",), input_format="pixels", test_images=real[2][:20],
                            latency_runs=0)
    assert not os.path.exists(out)  # refused before anything is written
    mean, std = data.normalization_for(data.load("folder"))
    report = export.export_model(student, out, formats=("keras", "litert"), quantizations=("float32",),
                                 input_format="pixels", test_images=real[2][:20], latency_runs=0,
                                 normalization={"mean": list(mean), "std": list(std)})
    assert report["files"]["keras"]["input"]["dtype"] == "float32" and report["files"]["float32"]["max_abs_diff"] <= 1e-4
    plain = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert plain.inputs[0].name == "pixels" and plain.layers[1].name == "normalize"


def test_a_relative_output_dir_works_for_every_runtime(student, real, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bare-Keras and TensorFlow children run elsewhere: paths made absolute
    report = export.export_model(student, "relative/out", formats=("keras", "onnx"), test_images=real[2][:10],
                                 latency_runs=0, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert sorted(os.listdir(tmp_path / "relative" / "out")) == ["export.json", "model.keras", "model.onnx"]
    assert report["files"]["keras"]["max_abs_diff"] <= 1e-4


def test_a_float_file_of_any_format_that_breaks_parity_leaves_nothing(student, real, tmp_path):
    # (the plain .keras file can equal the model exactly, the ONNX file cannot: one of them fails)
    assert_refused(tmp_path, "(keras|onnx) parity broken", student, formats=("keras", "onnx"), test_images=real[2][:10],
                   parity_tolerance=1e-12, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})


def test_a_missing_runtime_is_named_before_any_work(student, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert export.missing_runtimes(("keras", "onnx")) == ["onnxruntime"]
    assert_refused(tmp_path, r"need \['onnxruntime'\].*keras_icckd\[export\]", student, formats=("onnx",))
    assert_refused(tmp_path, "formats=", student, formats=("keras", "tflite"))


# ---------------------------------------------------------------- bad input

def assert_refused(tmp_path, message, model, **kwargs):
    out = tmp_path / "out"
    arguments = dict(test_images=np.zeros((4, 32, 32, 3), "float32"), latency_runs=0)
    arguments.update(kwargs)
    with pytest.raises(export.ExportError, match=message):
        export.export_model(model, str(out), **arguments)
    assert not out.exists() or not os.listdir(out), os.listdir(out)


def test_bad_inputs_are_refused_and_leave_nothing(student, tmp_path):
    text = tmp_path / "notes.keras"
    text.write_text("not a zip")
    assert_refused(tmp_path, "is not a .keras model file", str(text))
    assert_refused(tmp_path, "does not exist", str(tmp_path / "missing.keras"))
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF")
    assert_refused(tmp_path, "is not a .keras model file", str(h5))
    assert_refused(tmp_path, "needs representative_images", student)  # int8 in the defaults
    assert_refused(tmp_path, "quantizations", student, quantizations=("float32", "int4"))
    assert_refused(tmp_path, "batch_size", student, quantizations=("float32",), batch_size=0)
    assert_refused(tmp_path, "test_images must be", student, quantizations=("float32",),
                   test_images=np.zeros((4, 16, 16, 3), "float32"))
    assert_refused(tmp_path, "test_labels", student, quantizations=("float32",), test_labels=np.arange(3))
    assert_refused(tmp_path, "expected a keras_icckd student backbone", keras.Sequential([keras.layers.Dense(2)]))


def test_a_teacher_file_gives_its_backbone_and_foreign_files_are_refused(tmp_path):
    teacher = ContrastiveTeacher(backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3)), icc_cache_size=0)
    teacher.save(str(tmp_path / "teacher.keras"))
    loaded = export.load_student(str(tmp_path / "teacher.keras"))
    assert type(loaded).__name__ == "ResNet" and loaded.name == teacher.backbone.name
    for mine, theirs in zip(loaded.weights, teacher.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs))
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    foreign.save(str(tmp_path / "foreign.keras"))
    assert_refused(tmp_path, "holds a Sequential", str(tmp_path / "foreign.keras"))


def test_broken_float32_parity_fails_loudly_and_leaves_nothing(student, real, tmp_path):
    # An impossible tolerance stands in for a conversion that changes the logits.
    assert_refused(tmp_path, "float32 TFLite parity broken", student, quantizations=("float32", "float16"),
                   test_images=real[2][:10], parity_tolerance=1e-12)


# ---------------------------------------------------------------- the CLI

def cli(args):
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=600)


def test_cli_export_and_its_errors(student, tmp_path):
    path = str(tmp_path / "student.keras")
    student.save(path)
    out = str(tmp_path / "export")
    common = ["--mode=export", "--max_train_examples=200", "--max_test_examples=100",
              "--representative_examples=50"]
    result = cli([*common, f"--model={path}", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model_int8.tflite" in result.stdout and "Keras top-1 on 100" in result.stdout
    report = json.load(open(os.path.join(out, "export.json")))
    assert report["files"]["float32"]["max_abs_diff"] <= 1e-4 and report["num_test"] == 100
    assert report["num_representative"] == 50 and report["normalization"]["mean"][0] == pytest.approx(0.4914)

    for args, message in (
            ([f"--model={tmp_path / 'none.keras'}"], "is not allowed: expected an existing .keras file"),
            ([f"--model={path}", "--export_quantizations=float32,int4"], "--export_quantizations"),
            ([f"--model={path}", "--representative_examples=0"], "--representative_examples=0"),
            ([f"--model={path}", "--dataset=synthetic", "--synthetic_classes=3"], "trained for 10 classes"),
            ([f"--model={path}", "--parity_tolerance=1e-12"], "float32 TFLite parity broken")):
        bad_out = str(tmp_path / "bad")
        result = cli([*common, *args, f"--output_dir={bad_out}"])
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr[-2000:])
        assert not os.path.exists(bad_out) or not os.listdir(bad_out)


def test_cli_exports_every_format_for_raw_pixels_and_evaluates_the_int8_file(tmp_path):
    # A student trained by the CLI records its normalisation and class names: export and evaluate
    # take them from the file, and the uint8 TFLite file is evaluated on raw pixels.
    student = str(tmp_path / "student")
    train = cli(["--mode=student", "--student_arch=resnet8", "--epochs=1", "--lr_decay_epochs=", "--notensorboard",
                 "--max_train_examples=200", "--max_test_examples=100", "--batch_size=50", f"--output_dir={student}"])
    assert train.returncode == 0, train.stderr[-3000:]
    metadata = deploy.read_metadata(os.path.join(student, "model.keras"))
    assert metadata["normalization"]["mean"][0] == pytest.approx(0.4914) and len(metadata["class_names"]) == 10
    out = str(tmp_path / "export")
    result = cli(["--mode=export", f"--model={student}/model.keras", "--max_train_examples=200",
                  "--max_test_examples=100", "--representative_examples=50", "--export_formats=keras,saved_model,onnx,litert",
                  "--export_input=uint8", "--export_quantizations=float32,int8", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.keras", "saved_model", "model.onnx", "model_float32.tflite", "model_int8.tflite"):
        assert name in result.stdout and os.path.exists(os.path.join(out, name)), name
    report = json.load(open(os.path.join(out, "export.json")))
    assert report["class_names"] == metadata["class_names"] and report["input_format"] == "uint8"
    evaluated = cli(["--mode=evaluate", f"--model={out}/model_int8.tflite", "--max_test_examples=100",
                     "--diagnostic_examples=0", f"--output_dir={tmp_path / 'evaluate'}"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    record = json.load(open(tmp_path / "evaluate" / "metrics.json"))
    assert record["test_top1"] == pytest.approx(report["files"]["int8"]["top1"], abs=1e-6)
    bad = cli(["--mode=export", f"--model={student}/model.keras", "--export_formats=keras,tflite",
               f"--output_dir={tmp_path / 'bad'}"])
    assert bad.returncode != 0 and "--export_formats=['keras', 'tflite'] is not allowed" in bad.stderr, bad.stderr[-2000:]
