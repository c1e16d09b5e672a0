"""A backbone trained with cross-entropy alone (a student without a teacher, a baseline)."""

import keras
from keras import ops

from keras_icckd import replicas


def backbone_with(backbone, outputs):
    """`backbone` (or the one its serialised config describes), checked to be a keras_icckd backbone
    whose outputs, a dict, hold every name of `outputs`."""
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    found = getattr(backbone, "output", None)
    if not isinstance(found, dict) or not set(outputs) <= set(found):
        raise ValueError("backbone must be a keras_icckd backbone whose outputs are a dict with "
                         f"{' and '.join(repr(o) for o in outputs)}; got {type(backbone).__name__}")
    return backbone


def is_soft(y, num_classes):
    """Whether labels `y` are soft rows (B, num_classes), as mixing augmentations (MixUp, CutMix) make."""
    return len(y.shape) == 2 and y.shape[-1] == num_classes and num_classes > 1


def cross_entropy(y, logits):
    """(mean cross-entropy, int32 (B,) labels for the metrics, soft) for integer labels (B,) or soft label
    rows (B, C): soft-target cross-entropy then, and each row's largest class as its label."""
    if is_soft(y, int(logits.shape[-1])):
        soft = ops.cast(y, "float32")
        ce = ops.mean(keras.losses.categorical_crossentropy(soft, logits, from_logits=True))
        return ce, ops.cast(ops.argmax(soft, axis=-1), "int32"), True
    labels = ops.cast(ops.reshape(y, (-1,)), "int32")
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)), labels, False


@keras.saving.register_keras_serializable(package="keras_icckd")
class Classifier(replicas.MultiWorkerFixes, keras.Model):
    """Trains a keras_icckd backbone with the cross-entropy of its logits, nothing else.

    The plain supervised baseline ("student alone"): the same trainer, metrics and batches as
    the other models of this package, without a projection head or a teacher. Progress-bar
    metrics: loss, ce, accuracy. `classifier.backbone` is the trained network.

    Args:
        backbone: a backbone of `keras_icckd.backbones` (or its serialised config).

    Example:

    >>> from keras_icckd import backbones
    >>> model = Classifier(backbones.get("resnet8", num_classes=10))
    >>> model.compile(optimizer="sgd")
    >>> tuple(model(keras.ops.zeros((2, 32, 32, 3))).shape)
    (2, 10)
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone_with(backbone, ("logits",))
        self.num_classes = int(self.backbone.output["logits"].shape[-1])
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    def data_options(self):
        """Keyword arguments of the input pipelines: none (one view, no indices)."""
        return {}

    def call(self, inputs, training=None):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        return self.backbone(images, training=training)["logits"]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del x, sample_weight, training
        logits = replicas.gather(y_pred)
        ce, labels, _ = cross_entropy(replicas.gather(y), ops.cast(logits, "float32"))
        self.ce_tracker.update_state(ce, sample_weight=ops.shape(labels)[0])
        self.accuracy_tracker.update_state(labels, logits)
        total = ce
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses]))
        return replicas.replica_share(total)

    def get_config(self):
        config = super().get_config()
        config.update(backbone=keras.saving.serialize_keras_object(self.backbone))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
