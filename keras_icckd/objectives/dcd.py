"""DCD: Giakoumoglou, Stathaki, "Discriminative and Consistent Representation Distillation",
arXiv 2407.11802 (2024)."""

import keras

from keras_icckd import losses
from keras_icckd.objectives.base import EmbeddingHeads, Objective, register


@register("dcd")
class DCD(EmbeddingHeads, Objective):
    """In-batch contrastive distillation with a learnable scale and a consistency term.

    Dense heads map the student's and the teacher's `feature` to `feature_dim`; the rows are
    L2-normalised (h_s, h_t). With s = min(exp(t), max_scale) for a learnable scalar t and a
    learnable bias b, the logits z_ij = s * <h_s_i, h_t_j> + b give

        L = -(1/B) sum_i log_softmax(z)_ii + w * KL(softmax(z, axis=0)^T || softmax(z, axis=1)),

    InfoNCE with the same image's teacher embedding as the positive, plus the consistency term
    (batch-mean KL) of weight w = 0.5 (see `losses.dcd`). The paper's total is
    CE + KD + DCD: combine it with KD, e.g. `Distiller(..., "kd:0.9,dcd:1")`.

    Paper vs released code: the paper calls t and b learnable, and by default (`learnable=True`)
    they are trainable variables of this layer, trained with the heads. The authors' released
    CIFAR code creates them as parameters but never hands them to the optimizer, so there they
    keep their initial values (t = 1, i.e. scale e, and b = 0) for the whole run;
    `learnable=False` reproduces that (non-trainable variables, out of the optimizer). The
    loss itself (heads, normalisation, clamp, InfoNCE + 0.5 KL) matches the release.

    Args:
        feature_dim: size of the projection heads. Default 128.
        init_log_scale: initial t. Default 1.0 (scale e).
        init_bias: initial b. Default 0.
        max_scale: upper clamp of exp(t). Default 10.
        consistency_weight: w. Default 0.5.
        feature: the backbone output projected on both sides. Default "embedding".
        learnable: train t and b (the paper). Default True; False freezes them (the release).

    Example:

    >>> import numpy as np
    >>> dcd = DCD()
    >>> dcd.setup({"embedding": (None, 8)}, {"embedding": (None, 16)})
    >>> dcd.log_scale.trainable, float(dcd.log_scale), len(dcd.trainable_variables)  # t, b, 2 heads
    (True, 1.0, 6)
    >>> frozen = DCD(learnable=False)
    >>> frozen.setup({"embedding": (None, 8)}, {"embedding": (None, 16)})
    >>> frozen.log_scale.trainable, len(frozen.trainable_variables)  # the 2 heads only
    (False, 4)
    >>> rng = np.random.default_rng(0)
    >>> bool(dcd({"embedding": rng.normal(size=(4, 8))}, {"embedding": rng.normal(size=(4, 16))},
    ...          np.arange(4)) > 0)
    True
    """

    def __init__(self, feature_dim=128, init_log_scale=1.0, init_bias=0.0, max_scale=10.0,
                 consistency_weight=0.5, feature="embedding", learnable=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(learnable, bool):
            raise ValueError(f"DCD learnable={learnable!r}: expected True or False")
        self.learnable = learnable
        if int(feature_dim) != feature_dim or feature_dim < 1:
            raise ValueError(f"DCD feature_dim={feature_dim!r}: expected an integer >= 1")
        if not max_scale > 0 or not consistency_weight >= 0:
            raise ValueError(f"DCD needs max_scale > 0 and consistency_weight >= 0; got "
                             f"max_scale={max_scale!r}, consistency_weight={consistency_weight!r}")
        self.feature_dim, self.feature = int(feature_dim), feature
        self.init_log_scale, self.init_bias = float(init_log_scale), float(init_bias)
        self.max_scale, self.consistency_weight = float(max_scale), float(consistency_weight)

    def setup(self, student_shapes, teacher_shapes, context=None):
        self.build_heads(student_shapes, teacher_shapes, "DCD")
        self.log_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.init_log_scale), trainable=self.learnable,
            dtype="float32", name="log_scale")
        self.bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.init_bias),
                                    trainable=self.learnable, dtype="float32", name="bias")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        h_s, h_t = self.embed_features(student, teacher)
        return losses.dcd(h_s, h_t, self.log_scale, self.bias,
                          max_scale=self.max_scale, consistency_weight=self.consistency_weight)

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim,
                "init_log_scale": self.init_log_scale, "init_bias": self.init_bias,
                "max_scale": self.max_scale, "consistency_weight": self.consistency_weight,
                "feature": self.feature, "learnable": self.learnable}
