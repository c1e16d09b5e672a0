"""Deployable students: a plain functional Keras model, and the metadata that travels with a model.

`plain_model(model)` converts any keras_icckd backbone (the CIFAR and ImageNet families, imported
PyTorch networks, wrapped Keras models) into a functional `keras.Model` of Keras' built-in layers
only, with one input and the logits as its one output. Saved as `.keras` (`save_plain`), it loads
with `keras.saving.load_model` in a Python that has Keras but not keras_icckd, on any backend. The
project's own layers become built-in ones computing the same numbers:

- `FusedBatchNorm` -> `BatchNormalization` (same variables);
- the option-A shortcut (every second pixel, zero channels on both sides) -> a fixed 1 x 1
  stride-2 convolution whose kernel is the identity placed between the zero channels;
- ShuffleNet's channel split and channel shuffle -> fixed 1 x 1 convolutions (0/1 kernels);
- the input renormalisation of imported networks -> two `Rescaling` layers;
- the logits of a Dense classifier that ends in softmax -> a `Dense` without activation.

Products with 0 and 1 and sums with 0 are exact in floating point, so these give the same values
(the renormalisation up to float32 rounding). A layer without a built-in equivalent is refused with
its name.

`input_format` chooses what the plain model is fed:

- "normalized" (default): images as in training, `(pixels / 255 - mean) / std`;
- "pixels": float pixels in [0, 255], the normalisation folded into the graph (a `Rescaling`);
- "uint8": uint8 pixels, the same fold (the layer casts them).

Metadata: a dict with the normalisation a model is fed with, its class names, input shape and
dataset (`make_metadata`). A backbone holds it in its config (`Backbone.metadata`), so every
`.keras` file written by a run carries it; a plain `.keras` file holds it in the archive's
metadata.json (which Keras writes and ignores on load); `read_metadata(path)` reads it from any
file this project writes (`.keras`, `.onnx`, `.tflite`, a SavedModel folder).
"""

import json
import os
import zipfile

import numpy as np

INPUT_FORMATS = ("normalized", "pixels", "uint8")
METADATA_KEY = "keras_icckd"
SAVED_MODEL_METADATA = os.path.join("assets.extra", "keras_icckd.json")


class ExportError(ValueError):
    """A model cannot be converted or exported, or an exported file fails verification."""


# ------------------------------------------------------------------------------------------------
# Metadata


def make_metadata(*, normalization=None, class_names=None, input_shape=None, dataset=None, input_format=None):
    """A checked metadata dict; None entries are left out.

    Args:
        normalization: {"mean": [...], "std": [...]} (one value per channel, std > 0): what the
            model is fed, `(pixels / 255 - mean) / std`.
        class_names: one name per class.
        input_shape: (height, width, channels) of one image.
        dataset: the dataset's name.
        input_format: for exported files, one of INPUT_FORMATS.
    """
    metadata = {}
    if normalization is not None:
        try:
            mean, std = [float(v) for v in normalization["mean"]], [float(v) for v in normalization["std"]]
        except (TypeError, KeyError, ValueError):
            raise ExportError(f"normalization must be {{'mean': [...], 'std': [...]}}; got {normalization!r}")
        if len(mean) != len(std) or not mean or min(std) <= 0 or not np.all(np.isfinite(mean + std)):
            raise ExportError(f"normalization needs one finite mean and one std > 0 per channel; got {normalization!r}")
        metadata["normalization"] = {"mean": mean, "std": std}
    if class_names is not None:
        metadata["class_names"] = [str(name) for name in class_names]
    if input_shape is not None:
        metadata["input_shape"] = [None if d is None else int(d) for d in input_shape]
    if dataset is not None:
        metadata["dataset"] = str(dataset)
    if input_format is not None:
        if input_format not in INPUT_FORMATS:
            raise ExportError(f"input_format={input_format!r}: expected one of {INPUT_FORMATS}")
        metadata["input_format"] = input_format
    return metadata


def check_metadata(metadata):
    """`metadata` (a dict as `make_metadata` gives, or None) checked and in canonical form."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ExportError(f"metadata must be a dict; got {type(metadata).__name__}")
    known = {"normalization", "class_names", "input_shape", "dataset", "input_format"}
    if set(metadata) - known:
        raise ExportError(f"metadata has unknown keys {sorted(set(metadata) - known)}; known: {sorted(known)}")
    return make_metadata(**metadata)


def _zip_metadata(path):
    with zipfile.ZipFile(path) as archive:
        if "metadata.json" not in archive.namelist():
            return None
        record = json.loads(archive.read("metadata.json"))
        if METADATA_KEY in record:
            return record[METADATA_KEY]
        if "config.json" not in archive.namelist():
            return None
        config = json.loads(archive.read("config.json"))
    # a file written by a training run: the backbone's config (a teacher's: its backbone's)
    inner = config.get("config", {})
    if isinstance(inner.get("backbone"), dict):
        inner = inner["backbone"].get("config", {})
    return inner.get("metadata")


def _tflite_metadata(path):
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        data = bytearray(f.read())
    if data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_KEY.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def read_metadata(path):
    """The metadata a model file carries (a dict), or None when it has none.

    Reads `.keras` files (a run's backbone or teacher, or a plain model), `.tflite` and `.onnx`
    files and SavedModel folders written by this project.
    """
    try:
        if os.path.isdir(path):
            record = os.path.join(path, SAVED_MODEL_METADATA)
            return json.load(open(record)) if os.path.isfile(record) else None
        if path.endswith(".tflite"):
            return _tflite_metadata(path)
        if path.endswith(".onnx"):
            import onnx

            props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
            return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
        if zipfile.is_zipfile(path):
            return _zip_metadata(path)
    except Exception as e:  # noqa: BLE001  (flatbuffer, protobuf and zip readers raise many types)
        raise ExportError(f"cannot read the metadata of {path!r}: {e}") from e
    return None


def write_keras_metadata(path, metadata):
    """Adds `metadata` to the metadata.json of the .keras archive at `path` (rewritten atomically)."""
    temp = path + ".metadata-tmp"
    try:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                data = source.read(item.filename)
                if item.filename == "metadata.json":
                    data = json.dumps({**json.loads(data), METADATA_KEY: metadata}).encode()
                target.writestr(item, data)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def write_tflite_metadata(path, metadata):
    """Adds `metadata` to a .tflite flatbuffer as the named metadata entry "keras_icckd"."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    model.buffers = (model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(path, "wb") as f:
        f.write(builder.Output())


def write_onnx_metadata(path, metadata):
    """Adds `metadata` to an .onnx file's metadata_props under "keras_icckd"."""
    import onnx

    model = onnx.load(path)
    prop = model.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, path)


def write_saved_model_metadata(path, metadata):
    """Writes `metadata` to assets.extra/keras_icckd.json inside a SavedModel folder."""
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, SAVED_MODEL_METADATA), "w") as f:
        json.dump(metadata, f)


# ------------------------------------------------------------------------------------------------
# The plain model


def as_backbone(model):
    """The classifying backbone of a model, a teacher (its backbone) or a .keras path."""
    from keras_icckd.backbones.base import Backbone
    from keras_icckd.models import ContrastiveTeacher

    if isinstance(model, str):
        from keras_icckd.export import load_student

        model = load_student(model)
    if isinstance(model, ContrastiveTeacher):
        model = model.backbone
    if not isinstance(model, Backbone):
        raise ExportError(f"expected a keras_icckd student backbone (a student, an imported model or a teacher) "
                          f"or the path of its .keras file; got {type(model).__name__}")
    return model


def is_builtin(operation):
    """Whether `operation` is one of Keras' own layers or operations (loadable without this package)."""
    import keras

    cls = type(operation)
    if not cls.__module__.startswith("keras.src."):
        return False
    if isinstance(operation, keras.layers.Layer) and not isinstance(operation, keras.Model):
        return getattr(keras.layers, cls.__name__, None) is cls
    return not isinstance(operation, keras.Model)  # keras.ops operations in a functional graph


def _fixed_conv(name, kernel):
    """A bias-free 1 x 1 convolution with a fixed (in, out) 0/1 kernel; returns (layer, weights)."""
    from keras import layers

    layer = layers.Conv2D(kernel.shape[1], 1, use_bias=False, name=name)
    return layer, [kernel.reshape((1, 1) + kernel.shape).astype("float32")]


def _replacement(layer, args):
    """(function of the layer's inputs giving its outputs, [(new layer, weights)]) for a custom layer."""
    from keras import layers

    from keras_icckd.backbones.base import ChannelShuffle, ChannelSplit, FusedBatchNorm, InputRenormalization
    from keras_icckd.backbones.resnet import OptionAShortcut
    from keras_icckd.backbones.wrapped import ClassifierLogits

    if isinstance(layer, FusedBatchNorm):
        new = layers.BatchNormalization.from_config(layer.get_config())
        return new, [(new, layer.get_weights())]
    channels = int(args[0].shape[-1]) if args and hasattr(args[0], "shape") else None
    if isinstance(layer, OptionAShortcut):
        kernel = np.zeros((channels, channels + 2 * layer.pad))
        kernel[np.arange(channels), layer.pad + np.arange(channels)] = 1.0
        new = layers.Conv2D(kernel.shape[1], 1, strides=2, use_bias=False, name=layer.name)
        return new, [(new, [kernel.reshape((1, 1) + kernel.shape).astype("float32")])]
    if isinstance(layer, ChannelSplit):
        eye = np.eye(channels)
        first, w1 = _fixed_conv(f"{layer.name}_0", eye[:, :layer.index])
        second, w2 = _fixed_conv(f"{layer.name}_1", eye[:, layer.index:])
        return (lambda x: (first(x), second(x))), [(first, w1), (second, w2)]
    if isinstance(layer, ChannelShuffle):
        n = np.arange(channels)
        permutation = (n % layer.groups) * (channels // layer.groups) + n // layer.groups
        kernel = np.zeros((channels, channels))
        kernel[permutation, n] = 1.0
        new, weights = _fixed_conv(layer.name, kernel)
        return new, [(new, weights)]
    if isinstance(layer, InputRenormalization):
        feed_mean, feed_std = np.array(layer.feed_mean), np.array(layer.feed_std)
        mean, std = np.array(layer.network_mean), np.array(layer.network_std)
        to_pixels = layers.Rescaling(feed_std.tolist(), feed_mean.tolist(), name=f"{layer.name}_pixels")
        to_network = layers.Rescaling((1.0 / std).tolist(), (-mean / std).tolist(), name=layer.name)
        return (lambda x: to_network(to_pixels(x))), []
    if isinstance(layer, ClassifierLogits):
        dense = layer.classifier
        new = layers.Dense(dense.units, use_bias=dense.use_bias, name=layer.name)
        return new, [(new, dense.get_weights())]
    raise ExportError(f"layer {layer.name!r} ({type(layer).__module__}.{type(layer).__name__}) has no "
                      "built-in Keras equivalent here, so the model cannot be made plain")


def builtin_graph(model, inputs, _copies=None):
    """Runs functional `model`'s graph on the symbolic `inputs` through built-in layers only.

    Built-in layers are copied (with their weights), the project's own layers replaced (see the
    module doc), nested functional models followed; returns the outputs in `model`'s structure.
    `keras.Model(inputs, outputs)` is then a model of built-in layers computing what `model` does.
    """
    import keras

    copies = {} if _copies is None else _copies

    def convert(operation):
        if id(operation) in copies:
            return copies[id(operation)]
        if isinstance(operation, keras.Model):
            if not getattr(operation, "_nodes_by_depth", None):
                raise ExportError(f"nested model {operation.name!r} ({type(operation).__name__}) has no layer "
                                  "graph (a subclassed model) and cannot be made plain")

            def function(*args, **kwargs):
                outputs = builtin_graph(operation, args[0], copies)
                return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs
        elif not isinstance(operation, keras.layers.Layer):
            if not is_builtin(operation):
                raise ExportError(f"operation {operation.name!r} ({type(operation).__name__}) is not part of "
                                  "Keras, so the model cannot be made plain")
            function = operation  # a stateless keras.ops operation
        else:
            function = _Copy(operation)
        copies[id(operation)] = function
        return function

    return model._run_through_graph(inputs, operation_fn=convert)


class _Copy:
    """A layer's built-in copy (or replacement), made on its first call, when the input shapes are known,
    and given the original's weights once built."""

    def __init__(self, layer):
        self.layer, self.function = layer, None

    def __call__(self, *args, **kwargs):
        if self.function is not None:
            return self.function(*args, **kwargs)
        if is_builtin(self.layer):
            new = type(self.layer).from_config(self.layer.get_config())
            self.function, weights = new, [(new, self.layer.get_weights())]
        else:
            self.function, weights = _replacement(self.layer, args)
            kwargs = {}
        outputs = self.function(*args, **kwargs)
        for new, values in weights:
            new.set_weights(values)
        return outputs


def plain_model(model, *, input_format="normalized", normalization=None):
    """A functional model of built-in Keras layers computing `model`'s logits.

    Args:
        model: a keras_icckd backbone, a `ContrastiveTeacher` (its backbone is taken) or the path of
            a .keras file written by this project.
        input_format: "normalized" (default), "pixels" (float 0-255) or "uint8"; see the module doc.
        normalization: {"mean", "std"} to fold for the pixel formats; default the model's metadata.

    Returns:
        A `keras.Model` with one input ("images", or "pixels" for the pixel formats) and the logits
        as its one output, computing in float32. Its metadata (`plain.keras_icckd_metadata`) is the
        backbone's, with `input_format` and the normalisation used; `save_plain` writes it.

    Raises:
        ExportError: an unknown input format, a pixel format without a normalisation, or a layer
            with no built-in equivalent (the message names it).

    Example:
    >>> from keras_icckd import backbones
    >>> plain = plain_model(backbones.get("resnet8", num_classes=10))
    >>> all(is_builtin(layer) for layer in plain.layers), tuple(plain.output.shape)
    (True, (None, 10))
    """
    import keras
    from keras import layers

    from keras_icckd.export import float32_copy

    if input_format not in INPUT_FORMATS:
        raise ExportError(f"input_format={input_format!r}: expected one of {INPUT_FORMATS}")
    backbone = float32_copy(as_backbone(model))
    metadata = dict(backbone.metadata or {})
    if normalization is not None:
        metadata["normalization"] = make_metadata(normalization=normalization)["normalization"]
    shape = tuple(backbone.input.shape[1:])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        if input_format == "normalized":
            inputs = x = keras.Input(shape, name="images")
        else:
            if "normalization" not in metadata:
                raise ExportError(f"input_format={input_format!r} folds the normalisation into the model, but "
                                  f"{backbone.name!r} records none: pass normalization={{'mean': ..., 'std': ...}}")
            mean = np.asarray(metadata["normalization"]["mean"], "float64")
            std = np.asarray(metadata["normalization"]["std"], "float64")
            if len(mean) != shape[-1]:
                raise ExportError(f"the normalisation has {len(mean)} channels, the model's input {shape[-1]}")
            inputs = keras.Input(shape, dtype="uint8" if input_format == "uint8" else "float32", name="pixels")
            x = layers.Rescaling((1.0 / (255.0 * std)).tolist(), (-mean / std).tolist(), name="normalize")(inputs)
        outputs = builtin_graph(backbone, x)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        plain = keras.Model(inputs, logits, name=backbone.name)
    finally:
        keras.config.set_dtype_policy(previous)
    foreign = [layer.name for layer in plain.layers if not isinstance(layer, keras.layers.InputLayer)
               and not is_builtin(layer)]
    if foreign:
        raise ExportError(f"layers {foreign} of the converted model are not built-in Keras layers")
    plain.keras_icckd_metadata = make_metadata(**{**metadata, "input_shape": shape, "input_format": input_format})
    return plain


def load_plain(path):
    """The plain model in a .keras file written by `save_plain` (an export's model.keras), its metadata as
    `keras_icckd_metadata`; None when `path` holds no such model (no metadata with an input format, or not
    one input and one logits output), e.g. a training run's file, which `export.load_student` reads.

    Raises:
        ExportError: the file says it is a plain model of this project but does not load.
    """
    import keras

    metadata = read_metadata(path) if path.endswith(".keras") else None
    if not metadata or "input_format" not in metadata:
        return None
    try:
        plain = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001  (Keras raises several types on bad archives)
        raise ExportError(f"{path!r} holds a plain model's metadata but does not load: {e}") from e
    if not isinstance(plain, keras.Model) or len(plain.inputs) != 1 or len(plain.outputs) != 1:
        return None
    plain.keras_icckd_metadata = check_metadata(metadata)
    return plain


def save_plain(plain, path, metadata=None):
    """Saves a plain model as .keras (atomically), its metadata in the archive's metadata.json."""
    from keras_icckd.training import atomic_save_model

    metadata = check_metadata(metadata if metadata is not None else getattr(plain, "keras_icckd_metadata", None))
    temp = path + ".plain-tmp.keras"
    try:
        atomic_save_model(plain, temp)
        if metadata:
            write_keras_metadata(temp, metadata)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
