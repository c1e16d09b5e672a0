"""Export of trained students, each file verified in its own runtime against the Keras model.

`export_model(student, output_dir, formats=..., ...)` writes any of these formats into
`output_dir`, all computing the student's logits alone (the feature outputs and any training
machinery dropped) from the plain functional model of `keras_icckd.deploy.plain_model`:

- "keras": `model.keras`, built-in Keras layers only: loads with bare Keras, without this package;
- "saved_model": a TensorFlow SavedModel folder `saved_model/` (TF Serving; endpoint `serve`);
- "onnx": `model.onnx` (needs tf2onnx and onnxruntime, the [export] extra);
- "litert": `model_<quantisation>.tflite` for each requested quantisation (builtin ops only, the
  plain interpreter runs them, no Flex delegate):
  "float32"; "float16" (weights stored as float16, computation in float32 on CPU); "int8" (full
  integer post-training quantisation calibrated on training images; float input/output by default,
  integer input/output with `int8_io=True`, then feed `round(x / scale + zero_point)`, see export.json).

`export_tflite(...)` is `export_model(..., formats=("litert",))`, the default of `--mode=export`.

Input: `input_format="normalized"` (default) files take the image as in training,
`(pixels / 255 - mean) / std`; "pixels" files take float pixels in [0, 255] and "uint8" files uint8
pixels, the normalisation folded into the graph (the int8 LiteRT file of a "uint8" export has a
uint8 input tensor: camera pixels go in unchanged when its quantisation is (1, 0), as export.json
shows). export.json says what each file expects; every file also carries the model's metadata
(normalisation, class names, input shape; `keras_icckd.deploy.read_metadata`).

LiteRT batch dimension: `batch_size=None` (default) exports a dynamic batch (`shape_signature`
[-1, H, W, C]); the interpreter starts at batch 1 and takes other sizes after
`interpreter.resize_tensor_input(input_index, [n, H, W, C])` and `allocate_tensors()`.
An integer fixes the batch, as some accelerators' delegates require.

Verification: each file is run in its own runtime on real test images (bare Keras in a
subprocess that cannot import keras_icckd, TensorFlow's SavedModel loader, onnxruntime, the
LiteRT interpreter) and compared with the trained Keras model's logits (max and mean absolute
difference, top-1 agreement, top-1 accuracy and its drop, latency, size). A float file ("keras",
"saved_model", "onnx", LiteRT "float32") whose logits differ by more than `parity_tolerance`
fails the export. Everything is written to a temporary folder inside `output_dir` and moved into
place only when all files pass, with export.json last; a failed export leaves no partial file.

Conversion needs the TensorFlow backend (the "keras" file alone does not). Under another backend
(JAX) it runs transparently in a TensorFlow-backend subprocess (`python -m keras_icckd.export`),
which reads the plain .keras file alone; the Keras reference logits are computed here, under the
backend that trained the model.
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

from keras_icckd.deploy import ExportError

QUANTIZATIONS = ("float32", "float16", "int8")
FORMATS = ("keras", "saved_model", "onnx", "litert")
FLOAT_FILES = ("keras", "saved_model", "onnx", "float32")  # held to parity_tolerance
# the TensorFlow-side formats; "keras" is verified in bare Keras under the trained backend
_CONVERTED = ("saved_model", "onnx", "litert")


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


def check_formats(formats):
    """`formats` as a tuple of distinct names from FORMATS; ExportError otherwise."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown or len(set(formats)) != len(formats):
        raise ExportError(f"formats={formats!r}: expected distinct names from {FORMATS}")
    return formats


def missing_runtimes(formats):
    """The packages the given formats need that cannot be imported here ([] when all can)."""
    import importlib.util

    needed = {"onnx": ("onnx", "tf2onnx", "onnxruntime"), "litert": ("ai_edge_litert",)}
    return [name for f in formats for name in needed.get(f, ()) if importlib.util.find_spec(name) is None]


def _check_arguments(formats, quantizations, batch_size, representative_images, test_images, test_labels,
                     parity_tolerance, shape):
    formats = check_formats(formats)
    quantizations = tuple(quantizations)
    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if not quantizations or unknown or len(set(quantizations)) != len(quantizations):
        raise ExportError(f"quantizations={quantizations!r}: expected distinct names from {QUANTIZATIONS}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                   or batch_size < 1):
        raise ExportError(f"batch_size={batch_size!r}: expected None (dynamic) or an integer >= 1")
    if "litert" in formats and "int8" in quantizations and representative_images is None:
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
    missing = missing_runtimes(formats)
    if missing:
        raise ExportError(f"formats {list(formats)} need {missing}, which cannot be imported here: "
                          "pip install 'keras_icckd[export]'")
    return formats, quantizations, representative_images, test_images, test_labels


def to_pixels(images, normalization):
    """Normalised images of 8-bit pixels back to their pixels, float32 in [0, 255] (exact integers)."""
    mean = np.asarray(normalization["mean"], "float64")
    std = np.asarray(normalization["std"], "float64")
    return np.clip(np.round((images * std + mean) * 255.0), 0, 255).astype("float32")


def export_tflite(student, output_dir, **kwargs):
    """`export_model(student, output_dir, formats=("litert",), **kwargs)`: the LiteRT files alone."""
    return export_model(student, output_dir, formats=("litert",), **kwargs)


def export_model(student, output_dir, *, test_images, formats=("litert",), test_labels=None,
                 representative_images=None, quantizations=QUANTIZATIONS, int8_io=False, batch_size=None,
                 parity_tolerance=1e-4, input_format="normalized", normalization=None, class_names=None,
                 latency_runs=50):
    """Exports a student to the given formats in `output_dir`, verifies each file, writes export.json.

    Args:
        student: a keras_icckd backbone (the student), a teacher, or the path of its .keras file.
        output_dir: destination folder (created if missing).
        test_images: (N, H, W, C) normalised images on which every file is compared with the
            Keras model (the pixel formats get the same images as pixels).
        formats: any of FORMATS ("keras", "saved_model", "onnx", "litert"). Default ("litert",).
        test_labels: optional (N,) labels: adds top-1 accuracy and its drop per file.
        representative_images: normalised training images calibrating int8 (required for it).
        quantizations: LiteRT files, any of "float32", "float16", "int8". Default all three.
        int8_io: integer input and output tensors in the int8 file. Default False (float I/O).
        batch_size: LiteRT: None for a dynamic batch (default), or a fixed batch size.
        parity_tolerance: largest allowed max |logit difference| of a float file. Default 1e-4.
        input_format: "normalized" (default), "pixels" (float 0-255) or "uint8": what the files take.
        normalization: {"mean": [...], "std": [...]} the images are normalised with; default the
            model's metadata. Recorded in export.json and in every file; needed by the pixel formats.
        class_names: optional class names recorded with it; default the model's metadata.
        latency_runs: single-image invocations timed per file (median reported). Default 50.

    Returns:
        The report written to export.json: per file ("keras", "saved_model", "onnx", and the
        quantisation names of the LiteRT files) the file, format, input, size_kb, max_abs_diff,
        mean_abs_diff, top1_agreement, (top1, top1_drop), latency_ms; plus the Keras top-1.

    Raises:
        ExportError: bad arguments, a model that is not an exportable student, a missing runtime, or
            a float file that breaks parity. Nothing is left in output_dir in that case.
    """
    import keras

    from keras_icckd import deploy
    from keras_icckd.data import tensorflow_available

    converted = [f for f in check_formats(formats) if f in _CONVERTED]
    if converted and not tensorflow_available():
        raise ExportError(f"formats {converted} need TensorFlow (tensorflow-cpu, see requirements.txt), which cannot "
                          "be imported here; training on JAX does not, export on a machine that has it (the "
                          "plain .keras file, format 'keras', does not need it)")
    student = float32_copy(deploy.as_backbone(student))
    shape = tuple(student.input.shape[1:])
    formats, quantizations, representative_images, test_images, test_labels = _check_arguments(
        formats, quantizations, batch_size, representative_images, test_images, test_labels, parity_tolerance, shape)
    if class_names is not None and len(class_names) != student.num_classes:
        raise ExportError(f"{len(class_names)} class_names for a model of {student.num_classes} classes")
    plain = deploy.plain_model(student, input_format=input_format, normalization=normalization)
    metadata = plain.keras_icckd_metadata = deploy.make_metadata(**{
        **plain.keras_icckd_metadata, **({} if class_names is None else {"class_names": list(class_names)})})
    feed = test_images if input_format == "normalized" else to_pixels(test_images, metadata["normalization"])
    os.makedirs(output_dir, exist_ok=True)
    reference = keras_logits(student, test_images)
    settings = dict(formats=list(formats), quantizations=list(quantizations) if "litert" in formats else [],
                    int8_io=bool(int8_io), batch_size=batch_size, parity_tolerance=float(parity_tolerance),
                    input_format=input_format, normalization=metadata.get("normalization"),
                    class_names=metadata.get("class_names"), latency_runs=int(latency_runs),
                    trained_backend=keras.backend.backend())
    staging = tempfile.mkdtemp(prefix=".export-", dir=os.path.abspath(output_dir))
    try:
        plain_path = os.path.join(staging, "model.keras")
        deploy.save_plain(plain, plain_path, metadata)
        arrays = dict(test_images=feed, reference=reference)
        if test_labels is not None:
            arrays["test_labels"] = test_labels
        if representative_images is not None:
            arrays["representative_images"] = representative_images if input_format == "normalized" \
                else to_pixels(representative_images, metadata["normalization"])
        report = {**settings, "num_test": int(len(test_images)),
                  "num_representative": 0 if representative_images is None else int(len(representative_images)),
                  "files": {}}
        if test_labels is not None:
            report["keras_top1"] = 100.0 * float(np.mean(np.argmax(reference, -1) == test_labels))
        if "keras" in formats:
            report["files"]["keras"] = _check_parity("keras", verify_keras(plain_path, arrays, settings), settings)
        if converted:
            if keras.backend.backend() == "tensorflow":
                files = _convert_and_verify(plain, staging, arrays, settings)
            else:
                files = _convert_in_subprocess(staging, arrays, settings)
            report["files"].update(files)
        names = [os.path.basename(entry["file"]) for entry in report["files"].values()]
        for name in names:
            target = os.path.join(output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        from keras_icckd.training import atomic_write_json

        atomic_write_json(report, os.path.join(output_dir, "export.json"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _check_parity(name, entry, settings):
    if name in FLOAT_FILES and not entry["max_abs_diff"] <= settings["parity_tolerance"]:
        what = "float32 TFLite" if name == "float32" else name
        raise ExportError(f"{what} parity broken: max |logit difference| {entry['max_abs_diff']:.3g} > "
                          f"parity_tolerance {settings['parity_tolerance']:g}")
    return entry


def compare(logits, reference, test_labels=None):
    """Agreement of a file's logits with the Keras reference (and accuracy with labels)."""
    logits = np.asarray(logits, "float32")
    diff = np.abs(logits - reference)
    entry = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "top1_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))}
    if test_labels is not None:
        entry["top1"] = 100.0 * float(np.mean(np.argmax(logits, -1) == test_labels))
        entry["top1_drop"] = 100.0 * float(np.mean(np.argmax(reference, -1) == test_labels)) - entry["top1"]
    return entry


def _size_kb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files) / 1024.0
    return os.path.getsize(path) / 1024.0


def _median_ms(function, image, runs):
    function(image[None])  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function(image[None])
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _input_entry(settings, dtype):
    fmt = settings["input_format"]
    return {"format": fmt, "dtype": dtype,
            "expects": "(pixels / 255 - mean) / std" if fmt == "normalized" else "pixels in [0, 255]"}


def _file_entry(path, fmt, logits, arrays, settings, latency_ms=None, dtype="float32"):
    entry = {"file": os.path.basename(path), "format": fmt, "input": _input_entry(settings, dtype),
             "size_kb": _size_kb(path), **compare(logits, arrays["reference"], arrays.get("test_labels"))}
    if latency_ms is not None:
        entry["latency_ms"] = latency_ms
    return entry


# The "keras" file is run by bare Keras: a child process whose imports of keras_icckd fail, so a
# file that needed the package would fail to load there.
_BARE_KERAS = """
import importlib.abc, json, sys, time
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "keras_icckd" or name.startswith("keras_icckd."):
            raise ImportError("keras_icckd is not importable here (bare Keras check)")
sys.meta_path.insert(0, _Refuse())
import numpy as np, keras
model_path, arrays_path, out_path, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = keras.saving.load_model(model_path)
images = np.load(arrays_path)["test_images"].astype(model.inputs[0].dtype)
logits = np.concatenate([np.asarray(model.predict_on_batch(images[i:i + 256])) for i in range(0, len(images), 256)])
times = []
for i in range(runs + 1 if runs else 0):  # compiled inference, batch 1 (the first call traces)
    start = time.perf_counter(); model.predict_on_batch(images[:1])
    times.append(time.perf_counter() - start)
classes = sorted({type(layer).__module__.split(".")[0] for layer in model.layers})
np.savez(out_path, logits=logits, latency_ms=1000.0 * float(np.median(times[1:])) if runs else -1.0)
print(json.dumps({"backend": keras.backend.backend(), "layer_packages": classes}))
"""


def bare_keras_env(backend):
    """Environment of a child Python that sees neither this checkout nor PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return dict(env, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")


def verify_keras(path, arrays, settings):
    """Runs the plain .keras file in bare Keras (a subprocess, the trained backend); its report entry."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    arrays_path, out_path = os.path.join(folder, "keras_input.npz"), os.path.join(folder, "keras_output.npz")
    np.savez(arrays_path, test_images=arrays["test_images"])
    try:
        result = subprocess.run([sys.executable, "-c", _BARE_KERAS, path, arrays_path, out_path,
                                 str(settings["latency_runs"])], env=bare_keras_env(settings["trained_backend"]),
                                cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise ExportError("the plain .keras file does not run in bare Keras: "
                              + (lines[-1] if lines else f"exit code {result.returncode}"))
        with np.load(out_path) as out:
            logits, latency = out["logits"], float(out["latency_ms"])
    finally:
        for leftover in (arrays_path, out_path):
            if os.path.exists(leftover):
                os.remove(leftover)
    dtype = "uint8" if settings["input_format"] == "uint8" else "float32"
    return _file_entry(path, "keras", logits, arrays, settings, latency if latency >= 0 else None, dtype)


def _convert_in_subprocess(staging, arrays, settings):
    """Runs `_convert_and_verify` under the TensorFlow backend in a child process."""
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
        raise ExportError("conversion under the TensorFlow backend failed: "
                          + (lines[-1] if lines else f"exit code {result.returncode}"))
    with open(os.path.join(staging, "report.json")) as f:
        return json.load(f)


def _inference_function(plain, batch_size):
    import tensorflow as tf

    shape = tuple(plain.input.shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((batch_size,) + shape, plain.input.dtype, name="images")])
    def logits(images):
        return {"logits": plain(images, training=False)}

    return logits.get_concrete_function()


def float_input(plain):
    """`plain` with a float32 input instead of uint8 (the same layers: its first one casts)."""
    import keras

    inputs = keras.Input(tuple(plain.input.shape[1:]), dtype="float32", name=plain.input.name)
    return keras.Model(inputs, plain(inputs), name=plain.name)


def _converter(function, quantization, representative_images, int8_io, pixel_input):
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
        if pixel_input:  # uint8 pixels in: quantised with the calibrated range of [0, 255]
            converter.inference_input_type = tf.uint8
        elif int8_io:
            converter.inference_input_type = tf.int8
        if int8_io:
            converter.inference_output_type = tf.int8
    return converter


class TFLiteRunner:
    """Runs a .tflite file in the LiteRT interpreter on float images (quantising integer inputs)."""

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
        x, dtype = images, self.input["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = images / scale + zero if scale else images
            x = np.clip(np.round(x), info.min, info.max).astype(dtype)
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
    entry = {"file": os.path.basename(path), "format": "litert", "size_kb": os.path.getsize(path) / 1024.0,
             **compare(runner(test_images), reference, test_labels),
             "input_dtype": np.dtype(runner.input["dtype"]).name,
             "input_quantization": [float(v) for v in runner.input["quantization"]],
             "shape_signature": [int(v) for v in runner.input["shape_signature"]]}
    if latency_runs:
        entry["latency_ms"] = runner.latency_ms(test_images[0], latency_runs)
    return entry


def _saved_model(plain, path, arrays, settings):
    import tensorflow as tf

    from keras_icckd import deploy

    plain.export(path, format="tf_saved_model", verbose=False)
    deploy.write_saved_model_metadata(path, plain.keras_icckd_metadata)
    loaded = tf.saved_model.load(path)  # kept: its variables die with it
    serve = loaded.serve
    images = arrays["test_images"].astype(plain.input.dtype)
    logits = np.concatenate([serve(tf.constant(images[i:i + 256])).numpy() for i in range(0, len(images), 256)])
    latency = _median_ms(lambda x: serve(tf.constant(x)).numpy(), images[0], settings["latency_runs"]) \
        if settings["latency_runs"] else None
    return _file_entry(path, "saved_model", logits, arrays, settings, latency, plain.input.dtype)


def _onnx(plain, path, arrays, settings):
    import onnxruntime

    from keras_icckd import deploy

    plain.export(path, format="onnx", verbose=False)
    deploy.write_onnx_metadata(path, plain.keras_icckd_metadata)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = arrays["test_images"].astype(plain.input.dtype)
    logits = np.concatenate([session.run(None, {name: images[i:i + 256]})[0] for i in range(0, len(images), 256)])
    latency = _median_ms(lambda x: session.run(None, {name: x}), images[0], settings["latency_runs"]) \
        if settings["latency_runs"] else None
    return _file_entry(path, "onnx", logits, arrays, settings, latency, plain.input.dtype)


def _litert(plain, staging, arrays, settings):
    from keras_icckd import deploy

    pixel_input = settings["input_format"] == "uint8"
    files = {}
    for name in settings["quantizations"]:
        # the int8 file of a uint8 export quantises float pixels into a uint8 input tensor itself
        function = _inference_function(float_input(plain) if name == "int8" and pixel_input else plain,
                                       settings["batch_size"])
        converter = _converter(function, name, arrays.get("representative_images"), settings["int8_io"], pixel_input)
        path = os.path.join(staging, f"model_{name}.tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        deploy.write_tflite_metadata(path, plain.keras_icckd_metadata)
        entry = verify(path, arrays["test_images"], arrays["reference"], arrays.get("test_labels"),
                       settings["latency_runs"])
        entry["input"] = _input_entry(settings, entry["input_dtype"])
        files[name] = _check_parity(name, entry, settings)
    return files


def _convert_and_verify(plain, staging, arrays, settings):
    """Converts to the TensorFlow-side formats in `staging` and verifies them; their report entries."""
    files = {}
    plain(np.zeros((1,) + tuple(plain.input.shape[1:]), plain.input.dtype))  # Keras exports called models only
    if "saved_model" in settings["formats"]:
        path = os.path.join(staging, "saved_model")
        files["saved_model"] = _check_parity("saved_model", _saved_model(plain, path, arrays, settings), settings)
    if "onnx" in settings["formats"]:
        path = os.path.join(staging, "model.onnx")
        files["onnx"] = _check_parity("onnx", _onnx(plain, path, arrays, settings), settings)
    if "litert" in settings["formats"]:
        files.update(_litert(plain, staging, arrays, settings))
    return files


def _subprocess_main(staging):
    """Entry of the TensorFlow-backend child: reads the staged plain model and inputs, writes report.json."""
    import keras

    from keras_icckd import deploy

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the export child must run under KERAS_BACKEND=tensorflow")
    with open(os.path.join(staging, "settings.json")) as f:
        settings = json.load(f)
    with np.load(os.path.join(staging, "arrays.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    try:
        path = os.path.join(staging, "model.keras")
        plain = keras.saving.load_model(path)
        plain.keras_icckd_metadata = deploy.read_metadata(path)
        report = _convert_and_verify(plain, staging, arrays, settings)
    except ExportError as e:
        with open(os.path.join(staging, "error.txt"), "w") as f:
            f.write(str(e))
        raise SystemExit(3)
    with open(os.path.join(staging, "report.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: TensorFlow-side conversion child of export_model")
    parser.add_argument("staging")
    _subprocess_main(parser.parse_args().staging)
