"""Shared pieces of the CIFAR backbones: the `Backbone` base class and layer helpers.

Every backbone is a functional `keras.Model` whose single forward pass returns a dict:

- "logits": (B, num_classes);
- "embedding": the pooled penultimate feature, input of the classifier, (B, d);
- "feat0" .. "featK": each stage's feature map after its last activation ("feat0" = the stem);
- "preact0" .. "preactK": the same maps before that activation (equal to the feat where the
  stage ends without one);
- family-specific maps that a reference method uses instead (WideResNet: "stage1".."stage3").

Numerics follow PyTorch: BatchNorm epsilon 1e-5 and momentum 0.1 (Keras momentum 0.9), 3x3
convolutions padded by 1 on every side (stride-2 ones by an explicit `ZeroPadding2D(1)` and a
'valid' convolution, so results equal PyTorch's symmetric padding), weights drawn as in the
reference PyTorch definitions (see `conv_initializer`, `dense_initializer`).
"""

import math

import keras
import numpy as np
from keras import layers, ops

from keras_icckd.replicas import replica_count

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1


def conv_initializer(kernel_size, fan, mode):
    """PyTorch-equivalent kernel initialiser for a convolution.

    Args:
        kernel_size: side of the square kernel.
        fan: `out_channels` for mode "fan_out", input channels per group for mode "torch".
        mode: "fan_out" = normal(0, sqrt(2 / (k * k * out_channels))), the He initialisation
            used by the RepDistiller ResNet/WRN/VGG/MobileNetV2 definitions; "torch" = PyTorch's
            default `Conv2d` initialisation, uniform(+-1 / sqrt(k * k * in_channels_per_group)).
    """
    if mode == "fan_out":
        return keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (kernel_size ** 2 * fan)))
    if mode == "torch":
        bound = 1.0 / math.sqrt(kernel_size ** 2 * fan)
        return keras.initializers.RandomUniform(-bound, bound)
    raise ValueError(f"mode must be 'fan_out' or 'torch'; got {mode!r}")


def dense_initializer(fan_in, mode):
    """(kernel, bias) initialisers of a classifier, as in the PyTorch reference.

    mode "torch": PyTorch's `nn.Linear` default, uniform(+-1/sqrt(fan_in)) for both;
    "torch_zero_bias": the same kernel, zero bias; "normal": normal(0, 0.01) kernel, zero bias.
    """
    bound = 1.0 / math.sqrt(fan_in)
    uniform = keras.initializers.RandomUniform(-bound, bound)
    if mode == "torch":
        return uniform, keras.initializers.RandomUniform(-bound, bound)
    if mode == "torch_zero_bias":
        return uniform, "zeros"
    if mode == "normal":
        return keras.initializers.RandomNormal(0.0, 0.01), "zeros"
    raise ValueError(f"mode must be 'torch', 'torch_zero_bias' or 'normal'; got {mode!r}")


@keras.saving.register_keras_serializable(package="keras_icckd")
class FusedBatchNorm(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs TensorFlow's fused kernel on the TF backend.

    Same arguments, variables, statistics and results as the Keras layer. Keras 3 normalises
    with separate operations (the moments, then the normalisation, each with its own gradient),
    which costs a pass over the activation per operation; on the TensorFlow backend this layer
    runs one `FusedBatchNormV3` operation (and one for its gradient) instead, for channels-last
    4-D inputs without a mask, renorm or synchronised statistics. On the CPU benchmark machine
    that makes a resnet20 <- resnet56 KD step 1.26x and a resnet56 CE step 1.3-1.4x
    faster (experiments/results/performance.md). Everywhere else (the JAX backend, where XLA
    fuses the operations itself, other ranks, the options above) it is the Keras layer.

    The moving statistics are updated exactly as Keras does, with the biased batch variance
    (the fused kernel returns the unbiased one; it is rescaled by (n - 1) / n).

    Args:
        Those of `keras.layers.BatchNormalization`.

    Example:

    >>> layer = FusedBatchNorm(epsilon=1e-5, momentum=0.9)
    >>> tuple(layer(np.ones((2, 4, 4, 3), "float32"), training=True).shape)
    (2, 4, 4, 3)
    """

    def _fused(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and not self.renorm and not self.synchronized
                and self.center and self.scale and replica_count() == 1)

    def _moments(self, inputs, mask):
        # tf.distribute with several replicas: statistics of the global batch (all-reduced), as
        # on one device and as JAX's data parallelism computes them; not a config change, so
        # saved models stay loadable on JAX.
        if mask is None and not self.synchronized and replica_count() > 1:
            return ops.moments(inputs, axes=self._reduction_axes, synchronized=True)
        return super()._moments(inputs, mask)

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")  # statistics in float32, as the Keras layer computes them
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True)
            count = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
            variance = variance * (tf.maximum(count - 1.0, 1.0) / count)  # unbiased -> biased
            momentum = self.momentum
            self.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=moving_mean, variance=moving_variance, epsilon=self.epsilon,
                is_training=False)
        return ops.cast(y, self.compute_dtype)


def batch_norm(x, name):
    return FusedBatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def relu(x, name):
    return layers.ReLU(name=name)(x)


def conv(x, filters, kernel_size, stride=1, *, name, depthwise=False, use_bias=False,
         init="fan_out"):
    """A square convolution with PyTorch's padding of (kernel_size - 1) / 2 on every side.

    `depthwise=True` is PyTorch's `groups=in_channels` with one filter per channel (`filters`
    must then equal the input channels).
    """
    pad = (kernel_size - 1) // 2
    if pad and stride > 1:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same" if pad else "valid"
    in_channels = x.shape[-1]
    if depthwise:
        if filters != in_channels:
            raise ValueError(f"a depthwise conv keeps its channels; got {in_channels} -> {filters}")
        fan = filters if init == "fan_out" else 1
        return layers.DepthwiseConv2D(
            kernel_size, strides=stride, padding=padding, use_bias=use_bias,
            depthwise_initializer=conv_initializer(kernel_size, fan, init), name=name)(x)
    fan = filters if init == "fan_out" else in_channels
    bias_init = "zeros"
    if use_bias and init == "torch":
        bias_init = conv_initializer(kernel_size, fan, init)
    return layers.Conv2D(
        filters, kernel_size, strides=stride, padding=padding, use_bias=use_bias,
        kernel_initializer=conv_initializer(kernel_size, fan, init),
        bias_initializer=bias_init, name=name)(x)


def conv_bn(x, filters, kernel_size, stride=1, *, name, activation=True, **conv_kwargs):
    """conv -> BatchNorm (-> ReLU); layers named `{name}_conv`, `{name}_bn`, `{name}_relu`."""
    x = conv(x, filters, kernel_size, stride, name=f"{name}_conv", **conv_kwargs)
    x = batch_norm(x, f"{name}_bn")
    return relu(x, f"{name}_relu") if activation else x


def residual_block(x, planes, stride, prefix, *, bottleneck=False, shortcut=None):
    """He et al.'s residual block as the reference codebases build it; returns (pre-ReLU sum, output).

    Basic: conv3x3(stride)-BN-ReLU, conv3x3-BN. Bottleneck: conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU,
    conv1x1-BN to 4 * planes (torchvision's v1.5: the stride on the 3x3). The shortcut is the
    identity when the shape is kept, else `shortcut(x)` when given (e.g. the option-A padding
    shortcut), else a conv1x1(stride)-BN projection. Layers are named `{prefix}_1`, `_2`, `_3`,
    `_down`, `_add`, `_out`, the names the PyTorch importer maps.
    """
    out_planes = planes * (4 if bottleneck else 1)
    residual = x
    if stride != 1 or x.shape[-1] != out_planes:
        residual = shortcut(x) if shortcut is not None else conv_bn(
            x, out_planes, 1, stride, name=f"{prefix}_down", activation=False)
    if bottleneck:
        h = conv_bn(x, planes, 1, name=f"{prefix}_1")
        h = conv_bn(h, planes, 3, stride, name=f"{prefix}_2")
        h = conv_bn(h, out_planes, 1, name=f"{prefix}_3", activation=False)
    else:
        h = conv_bn(x, planes, 3, stride, name=f"{prefix}_1")
        h = conv_bn(h, planes, 3, name=f"{prefix}_2", activation=False)
    pre = layers.Add(name=f"{prefix}_add")([h, residual])
    return pre, relu(pre, f"{prefix}_out")


def classifier_head(x, num_classes, init):
    """Global average pooling + Dense classifier; returns (embedding, logits)."""
    embedding = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    kernel_init, bias_init = dense_initializer(embedding.shape[-1], init)
    logits = layers.Dense(num_classes, kernel_initializer=kernel_init,
                          bias_initializer=bias_init, name="classifier")(embedding)
    return embedding, logits


@keras.saving.register_keras_serializable(package="keras_icckd")
class ChannelSplit(layers.Layer):
    """Splits the channel axis at `index` into two tensors (ShuffleNetV2's SplitBlock)."""

    def __init__(self, index, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, x):
        return x[..., :self.index], x[..., self.index:]

    def compute_output_shape(self, input_shape):
        head = tuple(input_shape[:-1])
        return head + (self.index,), head + (input_shape[-1] - self.index,)

    def get_config(self):
        return {**super().get_config(), "index": self.index}


@keras.saving.register_keras_serializable(package="keras_icckd")
class ChannelShuffle(layers.Layer):
    """ShuffleNet channel shuffle for channels-last tensors.

    Output channel n takes input channel (n % g) * (C / g) + n // g, exactly PyTorch's
    `x.view(N, g, C // g, H, W).permute(0, 2, 1, 3, 4)` on channels-first tensors.
    """

    def __init__(self, groups=2, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({self.groups})")
        n = np.arange(channels)
        self._permutation = (n % self.groups) * (channels // self.groups) + n // self.groups

    def call(self, x):
        return ops.take(x, self._permutation, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="keras_icckd")
class InputRenormalization(layers.Layer):
    """Maps images normalised one way to the same images normalised another way, per channel.

    With pixels p in [0, 1], the input is x = (p - feed_mean) / feed_std (how this project feeds
    every model) and the output (p - network_mean) / network_std (what a network trained
    elsewhere expects), computed in that order: p = x * feed_std + feed_mean first. As the first
    layer of a backbone it keeps the network's zero padding at the image borders exact, which
    folding the affine map into the first convolution would not.

    Args:
        feed_mean, feed_std: per-channel constants of the input's normalisation.
        network_mean, network_std: per-channel constants of the output's normalisation.

    Example:

    >>> layer = InputRenormalization([0.5] * 3, [0.25] * 3, [0.0] * 3, [1.0] * 3)
    >>> keras.ops.convert_to_numpy(layer(np.full((1, 1, 1, 3), 2.0, "float32")))[0, 0, 0]
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, feed_mean, feed_std, network_mean, network_std, **kwargs):
        super().__init__(**kwargs)
        values = [[float(v) for v in values] for values in (feed_mean, feed_std, network_mean, network_std)]
        if len({len(v) for v in values}) != 1 or min(values[1] + values[3]) <= 0:
            raise ValueError("feed_mean, feed_std, network_mean and network_std must have one value per "
                             f"channel, the stds > 0; got {values}")
        self.feed_mean, self.feed_std, self.network_mean, self.network_std = values

    def build(self, input_shape):
        if input_shape[-1] != len(self.feed_mean):
            raise ValueError(f"{len(self.feed_mean)} channels of normalisation constants for inputs of "
                             f"shape {tuple(input_shape)}")

    def call(self, x):
        def constant(values):
            return ops.convert_to_tensor(np.asarray(values, "float32"), dtype=x.dtype)

        pixels = x * constant(self.feed_std) + constant(self.feed_mean)
        return (pixels - constant(self.network_mean)) / constant(self.network_std)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "feed_mean": self.feed_mean, "feed_std": self.feed_std,
                "network_mean": self.network_mean, "network_std": self.network_std}


def _check_normalization(spec, what):
    ok = isinstance(spec, dict) and {"mean", "std"} <= set(spec) <= {"name", "mean", "std"}
    if ok:
        try:
            name = spec.get("name")
            mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
            ok = (name is None or isinstance(name, str)) and len(mean) == len(std) >= 1 \
                and np.all(np.isfinite(mean + std)) and min(std) > 0
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ValueError(f"input_normalization[{what!r}] must be a dict with 'mean' and 'std' (one "
                         f"value per channel, std > 0) and an optional 'name'; got {spec!r}")
    return {"name": name, "mean": mean, "std": std}


def canonical_input_normalization(spec):
    """Checks a backbone's `input_normalization` argument; returns it in canonical form or None.

    Args:
        spec: None, or {"network": {"name", "mean", "std"}, "feed": {"name", "mean", "std"}}:
            the normalisation the network's weights expect and the one it is fed ("name" may be
            None; `keras_icckd.data.parse_normalization` builds these from names or numbers).
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"network", "feed"}:
        raise ValueError("input_normalization must be None or a dict with the keys 'network' and 'feed'; "
                         f"got {spec!r}")
    return {key: _check_normalization(spec[key], key) for key in ("network", "feed")}


def check_feed_normalization(model, mean, std, what="model"):
    """Refuses to feed `model` images normalised with (mean, std) when it was built for others.

    A backbone imported from another framework records the normalisation it must be fed
    (`model.input_normalization["feed"]`); a model without one accepts any.

    Args:
        model: a keras_icckd backbone.
        mean, std: per-channel constants the data is normalised with.
        what: how the model is named in the error message.

    Raises:
        ValueError: the constants differ (beyond 1e-6) from the recorded ones.
    """
    spec = getattr(model, "input_normalization", None)
    if spec is None:
        return
    feed = spec["feed"]
    same = len(mean) == len(feed["mean"]) and np.allclose(mean, feed["mean"], rtol=0, atol=1e-6) \
        and np.allclose(std, feed["std"], rtol=0, atol=1e-6)
    if not same:
        label = f" ({feed['name']})" if feed.get("name") else ""
        raise ValueError(f"{what} expects images normalised with mean {feed['mean']}, std {feed['std']}{label}, "
                         f"but the data is normalised with mean {list(mean)}, std {list(std)}")


def _check_args(num_classes, input_shape):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and all(
        (d is None and i < 2) or (isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                  and d >= 1)
        for i, d in enumerate(input_shape))
    if not ok:
        raise ValueError(
            "input_shape must be (height, width, channels) with positive integers "
            f"(height/width may be None); got {input_shape!r}")
    return int(num_classes), tuple(None if d is None else int(d) for d in input_shape)


class Backbone(keras.Model):
    """Base of the backbones: checks the shared arguments and assembles the output dict.

    Subclasses build their graph and call `_build_backbone(...)` instead of
    `keras.Model.__init__`; their first layer takes `self._normalized_inputs(inputs, kwargs)`.
    Attributes set here: `feature_names` ("feat0".."featK"), `preact_names`, `stage_channels`
    (channels of each feat), `num_stages` (K + 1), `embedding_dim`, `num_classes`,
    `input_normalization`; `classifier` is the final Dense layer.

    Every backbone takes the keyword argument `input_normalization` (default None): for weights
    trained elsewhere on inputs normalised another way, {"network": ..., "feed": ...} (see
    `canonical_input_normalization`) puts an `InputRenormalization` layer named
    "input_normalization" first, so that images normalised the "feed" way give the network
    exactly the inputs it was trained on. It is part of the config; models saved without it
    load unchanged.
    """

    @staticmethod
    def _inputs(num_classes, input_shape):
        num_classes, input_shape = _check_args(num_classes, input_shape)
        return num_classes, input_shape, keras.Input(shape=input_shape, name="images")

    @staticmethod
    def _normalized_inputs(inputs, kwargs):
        """`inputs`, through an `InputRenormalization` when kwargs hold an input_normalization."""
        spec = canonical_input_normalization(kwargs.get("input_normalization"))
        if spec is None:
            return inputs
        feed, network = spec["feed"], spec["network"]
        return InputRenormalization(feed["mean"], feed["std"], network["mean"], network["std"],
                                    name="input_normalization")(inputs)

    def _build_backbone(self, inputs, feats, preacts, embedding, logits, config, name,
                        extra_outputs=None, **kwargs):
        if len(feats) != len(preacts):
            raise ValueError("feats and preacts must have the same length")
        normalization = canonical_input_normalization(kwargs.pop("input_normalization", None))
        outputs = {"logits": logits, "embedding": embedding}
        for i, (feat, preact) in enumerate(zip(feats, preacts)):
            outputs[f"feat{i}"] = feat
            # One tensor cannot be two outputs: stages without a final activation get a copy.
            outputs[f"preact{i}"] = layers.Identity(name=f"preact{i}")(preact) \
                if preact is feat else preact
        outputs.update(extra_outputs or {})  # family-specific maps, e.g. WRN's "stage<k>"
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        if normalization is not None:
            if not any(layer.name == "input_normalization" for layer in self.layers):
                raise ValueError(f"{type(self).__name__} does not apply input_normalization: its first "
                                 "layer must take self._normalized_inputs(inputs, kwargs)")
            config = dict(config, input_normalization=normalization)
        self._backbone_config = dict(config, name=name)
        self.num_classes = int(logits.shape[-1])
        self.embedding_dim = int(embedding.shape[-1])
        self.num_stages = len(feats)
        self.stage_channels = tuple(int(f.shape[-1]) for f in feats)
        self.feature_names = tuple(f"feat{i}" for i in range(len(feats)))
        self.preact_names = tuple(f"preact{i}" for i in range(len(feats)))

    @property
    def input_normalization(self):
        """{"network": ..., "feed": ...} of an `InputRenormalization` first layer, or None."""
        return self._backbone_config.get("input_normalization")

    @property
    def classifier(self):
        """The final Dense layer (kernel: (embedding_dim, num_classes))."""
        return self.get_layer("classifier")

    @property
    def metadata(self):
        """What travels with the model (`keras_icckd.deploy.make_metadata`): the normalisation it is
        fed, its class names, input shape and dataset; None until `set_metadata`. Saved in the config."""
        return self._backbone_config.get("metadata")

    def set_metadata(self, metadata):
        """Records `metadata` (a dict as `keras_icckd.deploy.make_metadata` gives, or None)."""
        from keras_icckd.deploy import check_metadata

        metadata = check_metadata(metadata)
        self._backbone_config = {k: v for k, v in self._backbone_config.items() if k != "metadata"}
        if metadata:
            self._backbone_config["metadata"] = metadata

    def get_config(self):
        return dict(self._backbone_config)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        metadata = config.pop("metadata", None)
        model = cls(**config)
        model.set_metadata(metadata)
        return model
