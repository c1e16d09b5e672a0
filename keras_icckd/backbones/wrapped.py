"""Any functional Keras classifier as a keras_icckd backbone: `wrap(model, features={...})`."""

import keras
from keras import layers, ops

from keras_icckd.backbones.base import Backbone

_SOFTMAX = ("softmax",)


def _activation_name(activation):
    return getattr(activation, "__name__", str(activation)) if activation is not None else "linear"


def _producer(tensor):
    """(layer, its input tensor) of a symbolic tensor from a single-input layer."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, None
    layer, node_index = history.operation, history.node_index
    inputs = layer._inbound_nodes[node_index].input_tensors
    return layer, (inputs[0] if len(inputs) == 1 else None)


@keras.saving.register_keras_serializable(package="keras_icckd")
class ClassifierLogits(layers.Layer):
    """The logits of a Dense classifier that ends in softmax: `x @ kernel + bias`, without the softmax.

    Holds the classifier itself (the same layer, so the same variables), computes it without its
    activation.

    Args:
        classifier: a built `keras.layers.Dense` (or its serialised config).
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        if isinstance(classifier, dict):
            classifier = keras.saving.deserialize_keras_object(classifier)
        self.classifier = classifier

    def build(self, input_shape):
        if not self.classifier.built:
            self.classifier.build(input_shape)
        self.built = True

    def call(self, x):
        kernel = ops.cast(self.classifier.kernel, self.compute_dtype)
        logits = ops.matmul(ops.cast(x, self.compute_dtype), kernel)
        if self.classifier.use_bias:
            logits = logits + ops.cast(self.classifier.bias, self.compute_dtype)
        return logits

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.classifier.units,)

    def get_config(self):
        return {**super().get_config(), "classifier": keras.saving.serialize_keras_object(self.classifier)}


def _check_features(features):
    if features is None:
        return {}
    if not isinstance(features, dict):
        raise ValueError(f"features must be a dict {{output name: layer name}}; got {type(features).__name__}")
    for key, value in features.items():
        if not isinstance(key, str) or not key.isidentifier() or key == "logits":
            raise ValueError(f"features: output name {key!r} must be an identifier other than 'logits' "
                             "(e.g. 'embedding', 'feat2', 'preact2')")
        if not isinstance(value, str):
            raise ValueError(f"features[{key!r}] must be a layer name (str); got {value!r}")
    return dict(features)


def _layer_output(model, layer_name, what):
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        shown = ", ".join(names[:8] + ["..."] + names[-8:]) if len(names) > 16 else ", ".join(names)
        raise ValueError(f"{what}: model {model.name!r} has no layer named {layer_name!r}; its layers: {shown}")
    try:
        return layer.output
    except (AttributeError, ValueError) as e:
        raise ValueError(f"{what}: layer {layer_name!r} of {model.name!r} has no single output tensor "
                         f"(called more than once?): {e}")


@keras.saving.register_keras_serializable(package="keras_icckd")
class WrappedBackbone(Backbone):
    """A functional Keras classifier seen as a keras_icckd backbone (see `wrap`).

    Args:
        model: a functional (or Sequential) `keras.Model` with one image input (or its
            serialised config).
        features: {output name: layer name} of extra outputs; see `wrap`.
        logits: name of the layer whose output is the logits; default the model's only output.
        name: model name; default `model.name`.
    """

    def __init__(self, model, features=None, logits=None, name=None, **kwargs):
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model; got {type(model).__name__}")
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if not inputs or not outputs:
            raise ValueError(f"model {model.name!r} ({type(model).__name__}) has no layer graph: wrap takes a "
                             "functional or Sequential model built on a keras.Input (a subclassed model has no "
                             "named intermediate tensors)")
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"model {model.name!r} must have one image input (batch, height, width, channels); "
                             f"got inputs {[tuple(i.shape) for i in inputs]}")
        features = _check_features(features)
        if logits is None:
            if len(outputs) != 1:
                raise ValueError(f"model {model.name!r} has {len(outputs)} outputs: pass logits=<name of the layer "
                                 "whose output is the logits>")
            logits_tensor = outputs[0]
        else:
            logits_tensor = _layer_output(model, logits, "logits")
        if len(logits_tensor.shape) != 2:
            raise ValueError(f"the logits of {model.name!r} must have shape (batch, classes); got "
                             f"{tuple(logits_tensor.shape)}")
        logits_tensor, classifier = self._pre_softmax(model, logits_tensor)
        named = {"logits": logits_tensor}
        if "embedding" not in features and classifier is not None:
            embedding = self._classifier_input(classifier)
            if embedding is not None:
                named["embedding"] = embedding
        for key, layer_name in features.items():
            named[key] = _layer_output(model, layer_name, f"features[{key!r}]")
        if "embedding" in named and len(named["embedding"].shape) != 2:
            raise ValueError(f"features['embedding'] must be a pooled (batch, dim) tensor; layer "
                             f"{features.get('embedding')!r} gives {tuple(named['embedding'].shape)} (tap a "
                             "global pooling or flatten layer)")
        outputs, seen = {}, {}
        for key, tensor in named.items():  # one tensor cannot be two outputs: later ones get a copy
            outputs[key] = layers.Identity(name=f"{key}_copy")(tensor) if id(tensor) in seen else tensor
            seen[id(tensor)] = key
        config = dict(model=keras.saving.serialize_keras_object(model), features=features, logits=logits)
        name = name or model.name
        super().__init__(inputs=inputs[0], outputs=outputs, name=name, **kwargs)
        self._backbone_config = dict(config, name=name)
        # The name, not the layer: a layer attribute would be tracked (and saved) a second time.
        self._classifier_layer = None if classifier is None else outputs["logits"]._keras_history.operation.name
        self.num_classes = int(logits_tensor.shape[-1])
        self.embedding_dim = int(named["embedding"].shape[-1]) if "embedding" in named else None
        feature_names = sorted((k for k in outputs if k.startswith("feat") and k[4:].isdigit()),
                               key=lambda k: int(k[4:]))
        self.feature_names = tuple(feature_names)
        self.preact_names = tuple(k for k in sorted(outputs) if k.startswith("preact"))
        self.num_stages = len(feature_names)
        self.stage_channels = tuple(int(outputs[k].shape[-1]) for k in feature_names)

    @staticmethod
    def _pre_softmax(model, tensor):
        """(logits tensor before any softmax, the Dense classifier producing it or None)."""
        layer, source = _producer(tensor)
        if isinstance(layer, layers.Softmax) or (
                type(layer) is layers.Activation and _activation_name(layer.activation) in _SOFTMAX):
            tensor = source  # a separate softmax layer: take its input
            layer, source = _producer(tensor)
        if isinstance(layer, layers.Dense):
            activation = _activation_name(layer.activation)
            if activation in _SOFTMAX:
                return ClassifierLogits(layer, name=f"{layer.name}_logits")(source), layer
            if activation != "linear":
                raise ValueError(f"the classifier {layer.name!r} of {model.name!r} ends in {activation}, not in "
                                 "logits or a softmax; build it without an activation")
            return tensor, layer
        if layer is not None and _activation_name(getattr(layer, "activation", None)) in _SOFTMAX:
            raise ValueError(f"the output layer {layer.name!r} of {model.name!r} applies a softmax inside a "
                             f"{type(layer).__name__}; build the model without it (keras.applications: "
                             "classifier_activation=None) or pass logits=<a layer giving the logits>")
        return tensor, None

    @staticmethod
    def _classifier_input(classifier):
        """The pooled feature a Dense classifier reads (through any Dropout), or None."""
        tensor = classifier._inbound_nodes[0].input_tensors[0]
        layer, source = _producer(tensor)
        while isinstance(layer, layers.Dropout) and source is not None:
            tensor = source
            layer, source = _producer(tensor)
        return tensor if len(tensor.shape) == 2 else None

    @property
    def classifier(self):
        """The Dense layer that computes the logits (kernel: (embedding_dim, num_classes))."""
        if self._classifier_layer is None:
            raise ValueError(f"the logits of {self.name!r} do not come from a Dense layer, so it has no classifier "
                             "(kernel, bias) for objectives that read one")
        layer = self.get_layer(self._classifier_layer)
        return layer.classifier if isinstance(layer, ClassifierLogits) else layer


def wrap(model, features=None, logits=None, name=None):
    """Wraps a functional Keras classifier into a backbone that the objectives and models accept.

    The result is a `Backbone`: one forward pass returns a dict with "logits" and the named
    feature taps, so it can be a `ContrastiveTeacher`'s backbone, a `Distiller`'s student or
    teacher, be saved and loaded as .keras and exported to TFLite. The wrapped model shares its
    layers (and weights) with `model`.

    - Logits: the model's only output (or the output of layer `logits`). A model that ends in a
      softmax (keras.applications' default `classifier_activation="softmax"`) is not refused:
      its pre-softmax logits are taken instead, from a separate Softmax/Activation layer's input
      or by computing its Dense classifier without the activation (the same weights). A Dense
      classifier with another activation is refused.
    - "embedding": when the logits come from a Dense layer on a pooled (batch, dim) tensor, that
      tensor (through any Dropout) is the embedding, as in the zoo; `features["embedding"]`
      names another layer.
    - Feature taps: `features={"feat2": "block_6_expand_relu", ...}` adds the output of each named
      layer under the given output name. The feature objectives read "feat<k>" (FitNet's hint
      stage, AT's stages), "preact<k>" and "embedding" (RKD, CRD, PCKD, DCD); an objective whose
      output is missing is refused when the `Distiller` is built, with the name it needs.
      With no features, the logit objectives (KD, DKD) work.

    Args:
        model: a functional or Sequential `keras.Model` with one image input.
        features: optional {output name: layer name}.
        logits: optional name of the layer whose output is the logits.
        name: name of the backbone; default the model's name.

    Returns:
        A `WrappedBackbone`.

    Example:
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    >>> x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="fc")(x))
    >>> backbone = wrap(model, features={"feat1": "conv"})
    >>> sorted(backbone.output), backbone.embedding_dim
    (['embedding', 'feat1', 'logits'], 4)
    """
    return WrappedBackbone(model, features=features, logits=logits, name=name)
