"""The ICCKD teacher: cross-entropy plus an intra-class contrastive loss with a margin."""

import math

import keras
from keras import ops

from keras_icckd.losses import MARGIN_MODES
from keras_icckd.losses import intra_class_contrastive
from keras_icckd.losses import intra_class_objective
from keras_icckd import replicas
from keras_icckd.models.cache import IntraClassCache
from keras_icckd.models.classifier import backbone_with

_VIEW_ONLY_METRICS = ("intra", "margin_pass", "negatives")


@keras.saving.register_keras_serializable(package="keras_icckd")
class ContrastiveTeacher(replicas.MultiWorkerFixes, keras.Model):
    """A classifier trained with CE + lambda * L_intra (ICCKD, arXiv 2509.22053).

    Wraps any backbone of `keras_icckd.backbones` (a model returning a dict with "logits"
    and "embedding") and adds a projection head g (Dense - ReLU - Dense) whose L2-normalised
    output feeds the intra-class contrastive loss: the positive of an image is its other
    augmented view, the negatives are other images of the same class in the batch and in an
    `IntraClassCache` of earlier batches. A margin mechanism (default: a gate letting only
    anchors with p_y - max_{j != y} p_j > delta take part) keeps training stable.
    With `icc_lambda=0` the same class is a plain cross-entropy teacher (its projection head,
    which then takes no part in the loss, is frozen).

    Training input: `({"image": view1, "view2": view2}, labels)`, as made by
    `keras_icckd.data.make_train_dataset(..., views=2)`. With `icc_lambda > 0` a training batch
    without "view2" is refused (the intra-class term needs the second view; it would otherwise
    train with CE alone). With `icc_lambda=0` both kinds of batch train with CE on the first view
    alone: two views then only change what the backbone's batch normalisation sees (the two-view
    CE control of the converged study). Inference: `teacher(images)` returns the logits. The projection head and cache
    are training machinery; `teacher.backbone` is the network to distil from.

    The training objective lives in `compute_loss`, which the TensorFlow and the JAX
    trainers' `train_step` both call, so one implementation serves both backends.
    Progress-bar metrics: loss, ce, intra, margin_pass (fraction of anchors taking part),
    negatives (mean same-class negatives per anchor), accuracy.

    Args:
        backbone: a backbone model (or its serialised config).
        icc_lambda: weight lambda of the intra-class loss (>= 0). Default 0.05.
        icc_delta: margin threshold delta. Default 0.5 (probability margin for "gate",
            logit margin for "hinge").
        icc_tau: temperature tau (> 0). Default 0.1.
        icc_cache_size: cache slots Q (>= 0; 0 disables the cache). Default 4096.
        icc_margin_mode: "gate" (default), "hinge" or "none".
        projection_dim: output size of the projection head. Default 128.
        projection_hidden: hidden size of the head; default the embedding size.
        ce_on_both_views: also average CE over the second view. Default False.
        save_cache: write the cache into `.keras` files. Default False.

    Example:

    >>> from keras_icckd import backbones
    >>> teacher = ContrastiveTeacher(backbones.get("resnet8", num_classes=10), icc_cache_size=64)
    >>> teacher.compile(optimizer="sgd")
    >>> tuple(teacher(keras.ops.zeros((2, 32, 32, 3))).shape)
    (2, 10)
    """

    def __init__(self, backbone, icc_lambda=0.05, icc_delta=0.5, icc_tau=0.1,
                 icc_cache_size=4096, icc_margin_mode="gate", projection_dim=128,
                 projection_hidden=None, ce_on_both_views=False, save_cache=False, **kwargs):
        super().__init__(**kwargs)
        _check("icc_lambda", icc_lambda, icc_lambda >= 0 and math.isfinite(icc_lambda), ">= 0")
        _check("icc_delta", icc_delta, math.isfinite(icc_delta), "a finite number")
        _check("icc_tau", icc_tau, icc_tau > 0 and math.isfinite(icc_tau), "> 0")
        _check("icc_cache_size", icc_cache_size, int(icc_cache_size) >= 0, ">= 0")
        _check("icc_margin_mode", icc_margin_mode, icc_margin_mode in MARGIN_MODES,
               f"one of {MARGIN_MODES}")
        _check("projection_dim", projection_dim, int(projection_dim) >= 1, ">= 1")
        backbone = backbone_with(backbone, ("logits", "embedding"))
        outputs = backbone.output
        self.backbone = backbone
        self.num_classes = int(outputs["logits"].shape[-1])
        embedding_dim = int(outputs["embedding"].shape[-1])
        self.icc_lambda, self.icc_delta, self.icc_tau = float(icc_lambda), float(icc_delta), float(icc_tau)
        self.icc_cache_size, self.icc_margin_mode = int(icc_cache_size), icc_margin_mode
        self.projection_dim = int(projection_dim)
        self.projection_hidden = int(projection_hidden or embedding_dim)
        self.ce_on_both_views, self.save_cache = bool(ce_on_both_views), bool(save_cache)
        self.projection_hidden_layer = keras.layers.Dense(
            self.projection_hidden, activation="relu", name="projection_hidden")
        self.projection_output_layer = keras.layers.Dense(self.projection_dim, name="projection_output")
        self.projection_hidden_layer.build((None, embedding_dim))
        self.projection_output_layer.build((None, self.projection_hidden))
        if self.icc_lambda == 0:  # the head has no weight in the loss: keep it out of the optimizer
            self.projection_hidden_layer.trainable = self.projection_output_layer.trainable = False
        self.cache = (IntraClassCache(self.icc_cache_size, self.projection_dim,
                                      persistent=self.save_cache, name="cache")
                      if self.icc_cache_size else None)
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.intra_tracker = keras.metrics.Mean(name="intra")
        self.pass_tracker = keras.metrics.Mean(name="margin_pass")
        self.negatives_tracker = keras.metrics.Mean(name="negatives")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    def data_options(self):
        """Keyword arguments of `keras_icckd.data.make_train_dataset` (and the other pipelines) that give
        the batches this teacher trains on: two views when the intra-class term is on."""
        return {"views": 2} if self.icc_lambda > 0 else {}

    def project(self, embedding):
        """The L2-normalised projection g(f) used by the contrastive loss."""
        hidden = self.projection_hidden_layer(embedding)
        projection = ops.cast(self.projection_output_layer(hidden), "float32")
        return ops.normalize(projection, axis=-1)

    def call(self, inputs, training=None):
        images, view2 = (inputs["image"], inputs.get("view2")) if isinstance(inputs, dict) else (inputs, None)
        if view2 is None:
            return self.backbone(images, training=training)["logits"]
        batch = images.shape[0]
        outputs = self.backbone(ops.concatenate([images, view2], axis=0), training=training)
        projection = self.project(outputs["embedding"])
        logits = outputs["logits"]
        if batch is None:  # Symbolic tracing with an unknown batch size.
            batch = ops.shape(images)[0]
        return {"logits": logits[:batch], "logits_view2": logits[batch:],
                "projection": projection[:batch], "projection_view2": projection[batch:]}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del x, sample_weight
        if len(y.shape) == 2 and y.shape[-1] > 1:
            raise ValueError("a ContrastiveTeacher trains on one class per image (its intra-class term groups images "
                             f"by class), but the labels are soft rows of shape {tuple(y.shape)} (a mixing "
                             "augmentation such as MixUp or CutMix made them): train the teacher without mixing")
        # Under tf.distribute: the global batch of every replica (the negatives, the margin gate's
        # batch and the cache's writes are batch-wide), and one replica's share of the loss.
        labels = replicas.gather(ops.cast(ops.reshape(y, (-1,)), "int32"))
        y_pred = keras.tree.map_structure(replicas.gather, y_pred)
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        ce = _cross_entropy(logits, labels)
        if isinstance(y_pred, dict) and self.ce_on_both_views:
            ce = 0.5 * (ce + _cross_entropy(y_pred["logits_view2"], labels))
        total = ce
        if training and self.icc_lambda > 0 and not isinstance(y_pred, dict):
            raise ValueError(
                f"ContrastiveTeacher(icc_lambda={self.icc_lambda}) needs two views per training batch, "
                "({'image': view1, 'view2': view2}, labels), for its intra-class term; it got one view. "
                "Make the batches with keras_icckd.data.make_train_dataset(..., views=2) (or the numpy "
                "pipeline's, or an ImageStream's train_dataset(..., views=2)), or set icc_lambda=0 for a "
                "cross-entropy teacher")
        if isinstance(y_pred, dict) and self.icc_lambda > 0:
            bank, bank_labels = (self.cache.features, self.cache.labels) if self.cache else (None, None)
            per_anchor, negatives = intra_class_contrastive(
                y_pred["projection"], y_pred["projection_view2"], labels, bank, bank_labels,
                tau=self.icc_tau)
            intra, gate = intra_class_objective(
                per_anchor, logits, labels, delta=self.icc_delta, margin_mode=self.icc_margin_mode)
            if training and self.cache is not None:
                self.cache.enqueue(y_pred["projection"], labels)
            total = total + self.icc_lambda * intra
            self.intra_tracker.update_state(intra)
            self.pass_tracker.update_state(ops.mean(gate))
            self.negatives_tracker.update_state(ops.mean(negatives))
        # Weighted by batch size, like Keras' own loss tracker, so val_ce == val_loss for CE.
        self.ce_tracker.update_state(ce, sample_weight=ops.shape(labels)[0])
        self.accuracy_tracker.update_state(labels, logits)
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses]))
        return replicas.replica_share(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        if not isinstance(y_pred, dict) or self.icc_lambda == 0:  # one view (evaluation), or no intra term
            results = {k: v for k, v in results.items() if k not in _VIEW_ONLY_METRICS}
        return results

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            icc_lambda=self.icc_lambda, icc_delta=self.icc_delta, icc_tau=self.icc_tau,
            icc_cache_size=self.icc_cache_size, icc_margin_mode=self.icc_margin_mode,
            projection_dim=self.projection_dim, projection_hidden=self.projection_hidden,
            ce_on_both_views=self.ce_on_both_views, save_cache=self.save_cache)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def _cross_entropy(logits, labels):
    return ops.mean(keras.losses.sparse_categorical_crossentropy(
        labels, ops.cast(logits, "float32"), from_logits=True))


def _check(name, value, ok, allowed):
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")
