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
        labels = replicas.gather(ops.cast(ops.reshape(y, (-1,)), "int32"))
        logits = replicas.gather(y_pred)
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(logits, "float32"), from_logits=True))
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
