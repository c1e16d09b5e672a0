"""Export of trained students to TFLite (LiteRT), verified against the Keras model.

`export_tflite(student, output_dir, ...)` writes, for each requested quantisation,
`model_<quantisation>.tflite` into `output_dir`:

- "float32": the plain float model;
- "float16": weights stored as float16 (computation in float32 on CPU);
- "int8": full-integer post-training quantisation, calibrated on representative images
  drawn from the training data; float input/output by default, int8 input/output with
  `int8_io=True` (then feed `round(x / scale + zero_point)`, see export.json).

The exported graph is the student's logits alone (the feature outputs and any training
machinery are dropped) and uses builtin TFLite ops only, so the files run on the plain
interpreter (no Flex delegate). Its input is the *normalised* image, as in training
(`(pixels / 255 - mean) / std`, mean and std recorded in export.json).

Batch dimension: `batch_size=None` (default) exports a dynamic batch (`shape_signature`
[-1, H, W, C]); the interpreter starts at batch 1 and takes other sizes after
`interpreter.resize_tensor_input(input_index, [n, H, W, C])` and `allocate_tensors()`.
An integer fixes the batch, as some accelerators' delegates require.

Each file is verified on export: it is run in the LiteRT interpreter on real test images
and compared with the Keras model's logits (max and mean absolute difference, top-1
agreement, top-1 accuracy and its drop). A float32 file whose logits differ by more than
`parity_tolerance` fails the export. Everything is written to a temporary folder inside
`output_dir` and moved into place only when all files pass, with export.json last; a failed
export leaves no partial file behind.

Conversion needs the TensorFlow backend. Under another backend (JAX) the conversion runs
transparently in a TensorFlow-backend subprocess (`python -m keras_icckd.export`), while
the Keras reference logits are computed here, under the backend that trained the model.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

QUANTIZATIONS = ("float32", "float16", "int8")


class ExportError(ValueError):
    """A student cannot be exported, or an exported file fails verification."""


def load_student(path):
    """Loads the backbone of a .keras file written by keras_icckd; clear errors otherwise.

    Any model file of the project: a student (--mode=student), an imported model
    (--mode=import), or a teacher (--mode=teacher), whose `ContrastiveTeacher` training wrapper
    is dropped for its backbone (the network that classifies).
    """
    from keras_icckd.backbones.base import Backbone
    from keras_icckd.models import ContrastiveTeacher
    from keras_icckd.training import load_model_file

    model = load_model_file(path, "model file", ExportError)
    if isinstance(model, ContrastiveTeacher):
        model = model.backbone
    if not isinstance(model, Backbone):
        raise ExportError(f"model file {path!r} holds a {type(model).__name__}, not a keras_icckd "
                          "student backbone")
    return model


def _as_student(model):
    from keras_icckd.backbones.base import Backbone

    if isinstance(model, str):
        model = load_student(model)
    if not isinstance(model, Backbone):
        raise ExportError(f"expected a keras_icckd student backbone or the path of its .keras file; "
                          f"got {type(model).__name__}")
    return float32_copy(model)


def float32_copy(student):
    """The student itself when it computes in float32, else a float32 rebuild with its weights.

    A student trained under a mixed dtype policy (mixed_float16 / mixed_bfloat16) keeps float32
    variables but computes in 16 bits; exports (and their parity checks) use float32 compute.
    """
    import keras

    if all(layer.compute_dtype in (None, "float32") for layer in student.layers):
        return student
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = type(student).from_config(student.get_config())
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(student.get_weights())
    return copy


def keras_logits(student, images, batch_size=256):
    """The student's inference-mode logits for `images`, float32 NumPy."""
    import keras

    return np.concatenate([
        keras.ops.convert_to_numpy(student(images[i:i + batch_size], training=False)["logits"])
        for i in range(0, len(images), batch_size)]).astype("float32")


def _check_images(images, shape, what):
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) or len(images) == 0:
        raise ExportError(f"{what} must be a non-empty (N, {', '.join(map(str, shape))}) array; "
                          f"got shape {images.shape}")
    if not np.isfinite(images).all():
        raise ExportError(f"{what} contain NaN or Inf")
    return images


def _check_arguments(quantizations, batch_size, representative_images, test_images, test_labels,
                     parity_tolerance, shape):
    quantizations = tuple(quantizations)
    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if not quantizations or unknown or len(set(quantizations)) != len(quantizations):
        raise ExportError(f"quantizations={quantizations!r}: expected distinct names from {QUANTIZATIONS}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                   or batch_size < 1):
        raise ExportError(f"batch_size={batch_size!r}: expected None (dynamic) or an integer >= 1")
    if "int8" in quantizations and representative_images is None:
        raise ExportError("int8 quantisation needs representative_images (training images that "
                          "calibrate the activation ranges)")
    if not parity_tolerance > 0:
        raise ExportError(f"parity_tolerance={parity_tolerance!r}: expected > 0")
    if representative_images is not None:
        representative_images = _check_images(representative_images, shape, "representative_images")
    if test_images is None:
        raise ExportError("test_images are needed: every exported file is verified on them")
    test_images = _check_images(test_images, shape, "test_images")
    if test_labels is not None:
        test_labels = np.asarray(test_labels).reshape(-1)
        if len(test_labels) != len(test_images):
            raise ExportError(f"{len(test_labels)} test_labels for {len(test_images)} test_images")
    return quantizations, representative_images, test_images, test_labels


def export_tflite(student, output_dir, *, test_images, test_labels=None, representative_images=None,
                  quantizations=QUANTIZATIONS, int8_io=False, batch_size=None, parity_tolerance=1e-4,
                  normalization=None, latency_runs=50):
    """Exports a student to TFLite files in `output_dir`, verifies them and writes export.json.

    Args:
        student: a keras_icckd backbone (the student) or the path of its .keras file.
        output_dir: destination folder (created if missing).
        test_images: (N, H, W, C) normalised images on which every file is compared with the
            Keras model.
        test_labels: optional (N,) labels: adds top-1 accuracy and its drop per file.
        representative_images: normalised training images calibrating int8 (required for it).
        quantizations: any of "float32", "float16", "int8". Default all three.
        int8_io: int8 input and output tensors in the int8 file. Default False (float I/O).
        batch_size: None for a dynamic batch (default), or a fixed batch size.
        parity_tolerance: largest allowed max |logit difference| of the float32 file. Default 1e-4.
        normalization: optional {"mean": [...], "std": [...]} recorded in export.json.
        latency_runs: single-image invocations timed per file (median reported). Default 50.

    Returns:
        The report written to export.json: per quantisation the file, size_kb, max_abs_diff,
        mean_abs_diff, top1_agreement, (top1, top1_drop), latency_ms; plus the Keras top-1.

    Raises:
        ExportError: bad arguments, a file that is not an exportable student, or a float32
            file that breaks parity. Nothing is left in output_dir in that case.
    """
    import keras

    from keras_icckd.data import tensorflow_available

    if not tensorflow_available():
        raise ExportError("TFLite export needs TensorFlow (tensorflow-cpu, see requirements.txt), which cannot "
                          "be imported here; training on JAX does not, export on a machine that has it")
    student = _as_student(student)
    shape = tuple(student.input.shape[1:])
    quantizations, representative_images, test_images, test_labels = _check_arguments(
        quantizations, batch_size, representative_images, test_images, test_labels, parity_tolerance, shape)
    os.makedirs(output_dir, exist_ok=True)
    reference = keras_logits(student, test_images)
    settings = dict(quantizations=list(quantizations), int8_io=bool(int8_io), batch_size=batch_size,
                    parity_tolerance=float(parity_tolerance), normalization=normalization,
                    latency_runs=int(latency_runs), trained_backend=keras.backend.backend())
    staging = tempfile.mkdtemp(prefix=".export-", dir=output_dir)
    try:
        arrays = dict(test_images=test_images, reference=reference)
        if test_labels is not None:
            arrays["test_labels"] = test_labels
        if representative_images is not None:
            arrays["representative_images"] = representative_images
        if keras.backend.backend() == "tensorflow":
            report = _convert_and_verify(student, staging, arrays, settings)
        else:
            report = _convert_in_subprocess(student, staging, arrays, settings)
        for name in quantizations:
            os.replace(os.path.join(staging, f"model_{name}.tflite"), os.path.join(output_dir, f"model_{name}.tflite"))
        from keras_icckd.training import atomic_write_json

        atomic_write_json(report, os.path.join(output_dir, "export.json"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _convert_in_subprocess(student, staging, arrays, settings):
    """Runs `_convert_and_verify` under the TensorFlow backend in a child process."""
    model_path = os.path.join(staging, "student.keras")
    student.save(model_path)
    np.savez(os.path.join(staging, "arrays.npz"), **arrays)
    with open(os.path.join(staging, "settings.json"), "w") as f:
        json.dump(settings, f)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "keras_icckd.export", staging], env=env,
                            capture_output=True, text=True)
    error_path = os.path.join(staging, "error.txt")
    if os.path.exists(error_path):
        with open(error_path) as f:
            raise ExportError(f.read().strip())
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise ExportError("TFLite conversion under the TensorFlow backend failed: "
                          + (lines[-1] if lines else f"exit code {result.returncode}"))
    with open(os.path.join(staging, "report.json")) as f:
        return json.load(f)


def _inference_function(student, batch_size):
    import tensorflow as tf

    shape = tuple(student.input.shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((batch_size,) + shape, tf.float32, name="images")])
    def logits(images):
        return {"logits": student(images, training=False)["logits"]}

    return logits.get_concrete_function()


def _converter(function, quantization, representative_images, int8_io):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([representative_images[i:i + 1]]
                                                    for i in range(len(representative_images)))
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter


class TFLiteRunner:
    """Runs a .tflite file in the LiteRT interpreter on float images (quantising int8 I/O)."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        signature = self.input["shape_signature"]
        self.fixed_batch = None if signature[0] == -1 else int(signature[0])
        self.batch = None

    def _resize(self, batch):
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch] + list(self.input["shape"][1:]))
            self.interpreter.allocate_tensors()
            self.batch = batch

    def _invoke(self, images):
        x = images
        if self.input["dtype"] == np.int8:
            scale, zero = self.input["quantization"]
            x = np.clip(np.round(images / scale + zero), -128, 127).astype(np.int8)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] == np.int8:
            scale, zero = self.output["quantization"]
            out = (out.astype("float32") - zero) * scale
        return out.astype("float32")

    def __call__(self, images, chunk=100):
        step = self.fixed_batch or chunk
        outputs = []
        for i in range(0, len(images), step):
            part = images[i:i + step]
            n = len(part)
            if self.fixed_batch and n < step:  # pad the last chunk of a fixed-batch model
                part = np.concatenate([part, np.repeat(part[-1:], step - n, axis=0)])
            self._resize(len(part))
            outputs.append(self._invoke(part)[:n])
        return np.concatenate(outputs)

    def latency_ms(self, image, runs):
        """Median milliseconds per image over `runs` invocations (of the fixed batch if any)."""
        batch = self.fixed_batch or 1
        images = np.repeat(image[None], batch, axis=0)
        self._resize(batch)
        self._invoke(images)  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self._invoke(images)
            times.append(time.perf_counter() - start)
        return 1000.0 * float(np.median(times)) / batch


def verify(path, test_images, reference, test_labels=None, latency_runs=50):
    """Compares a .tflite file with reference logits; returns the per-file report entry."""
    runner = TFLiteRunner(path)
    logits = runner(test_images)
    diff = np.abs(logits - reference)
    entry = {"file": os.path.basename(path), "size_kb": os.path.getsize(path) / 1024.0,
             "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "top1_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1))),
             "input_dtype": np.dtype(runner.input["dtype"]).name,
             "input_quantization": [float(v) for v in runner.input["quantization"]],
             "shape_signature": [int(v) for v in runner.input["shape_signature"]]}
    if test_labels is not None:
        entry["top1"] = 100.0 * float(np.mean(np.argmax(logits, -1) == test_labels))
        entry["top1_drop"] = 100.0 * float(np.mean(np.argmax(reference, -1) == test_labels)) - entry["top1"]
    if latency_runs:
        entry["latency_ms"] = runner.latency_ms(test_images[0], latency_runs)
    return entry


def _convert_and_verify(student, staging, arrays, settings):
    """Converts and verifies every quantisation into `staging`; returns the report (TF backend)."""
    function = _inference_function(student, settings["batch_size"])
    test_images, reference = arrays["test_images"], arrays["reference"]
    labels = arrays.get("test_labels")
    report = {**settings, "num_test": int(len(test_images)),
              "num_representative": int(len(arrays["representative_images"]))
              if "representative_images" in arrays else 0, "files": {}}
    if labels is not None:
        report["keras_top1"] = 100.0 * float(np.mean(np.argmax(reference, -1) == labels))
    for name in settings["quantizations"]:
        converter = _converter(function, name, arrays.get("representative_images"), settings["int8_io"])
        path = os.path.join(staging, f"model_{name}.tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        entry = verify(path, test_images, reference, labels, settings["latency_runs"])
        report["files"][name] = entry
        if name == "float32" and not entry["max_abs_diff"] <= settings["parity_tolerance"]:
            raise ExportError(f"float32 TFLite parity broken: max |logit difference| "
                              f"{entry['max_abs_diff']:.3g} > parity_tolerance {settings['parity_tolerance']:g}")
    return report


def _subprocess_main(staging):
    """Entry of the TensorFlow-backend child: reads the staged inputs, writes report.json."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the export child must run under KERAS_BACKEND=tensorflow")
    with open(os.path.join(staging, "settings.json")) as f:
        settings = json.load(f)
    with np.load(os.path.join(staging, "arrays.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    try:
        student = load_student(os.path.join(staging, "student.keras"))
        report = _convert_and_verify(student, staging, arrays, settings)
    except ExportError as e:
        with open(os.path.join(staging, "error.txt"), "w") as f:
            f.write(str(e))
        raise SystemExit(3)
    with open(os.path.join(staging, "report.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: TFLite conversion child of export_tflite")
    parser.add_argument("staging")
    _subprocess_main(parser.parse_args().staging)
