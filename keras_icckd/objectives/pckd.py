"""PCKD: Ding et al., "Preview-based Category Contrastive Learning for Knowledge Distillation",
IEEE TCSVT 2025, arXiv 2410.14143."""

import keras
from keras import ops

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, feature_size, register


@register("pckd")
class PCKD(Objective):
    """Preview-weighted KD plus category contrast, category-centre and feature alignment.

    The `Distiller` feeds every image in four rotations (0/90/180/270 degrees, `views = 4`,
    `make_views`), so student and teacher each run once on 4B images; CE and the other
    objectives see the unrotated B, this objective all 4B with the class label on every view:

        L = kd_weight * KD_w + cc_weight * L_CC + ca_weight * L_CA + fa_weight * L_FA

    - preview weights w: from the student's per-view CE, difficulty = CE / batch-mean CE,
      w = 1 if difficulty <= growth^epoch else exp(-difficulty^2) (constant); they weight KD
      and L_CC only.
    - KD_w: T^2 * mean_i w_i KL(p_t || p_s), T = `temperature`.
    - L_FA: 2 - 2 cos(MLP(f_s), f_t) over all views; MLP d_s -> 16 d_t -> d_t with BN + ReLU.
    - L_CA: MSE between the student's and the teacher's classifier [W | b] when their shapes
      match, else 0.
    - L_CC: the student's feature through two Dense + L2-normalise heads (to d_s and d_t),
      scored against the student's and the teacher's classifier kernels (the category
      centres): u = head_s(f_s) W_s, v = head_t(f_s) W_t; the 2 x 4B score vectors [u; v]
      with their labels enter a supervised contrastive loss with temperature 4, scaled by
      4 / 0.07, anchors weighted by w.

    Reconstructed details (the published description leaves them open; ours, flagged here):
    the classifier kernels in L_CC are constants (only L_CA moves the student's classifier),
    the score vectors are L2-normalised inside the contrastive loss, the preview CE is the
    student's, and kd_weight defaults to 1 (use CE weight 1 beside it).

    Args:
        kd_weight, cc_weight, ca_weight, fa_weight: the four weights. Defaults 1, 0.05, 1, 20.
        temperature: KD temperature. Default 4.
        cc_temperature, cc_base_temperature: L_CC's temperature and base. Defaults 4, 0.07.
        growth: the preview threshold's base. Default 1.005.
        feature: the backbone output used as f. Default "embedding".
    """

    views = 4
    requires = ("classifier",)

    def __init__(self, kd_weight=1.0, cc_weight=0.05, ca_weight=1.0, fa_weight=20.0, temperature=4.0,
                 cc_temperature=4.0, cc_base_temperature=0.07, growth=1.005, feature="embedding",
                 **kwargs):
        super().__init__(**kwargs)
        weights = dict(kd_weight=kd_weight, cc_weight=cc_weight, ca_weight=ca_weight, fa_weight=fa_weight)
        for key, value in weights.items():
            if not value >= 0:
                raise ValueError(f"PCKD {key}={value!r}: expected >= 0")
        for key, value in dict(temperature=temperature, cc_temperature=cc_temperature,
                               cc_base_temperature=cc_base_temperature, growth=growth).items():
            if not value > 0:
                raise ValueError(f"PCKD {key}={value!r}: expected > 0")
        self.kd_weight, self.cc_weight = float(kd_weight), float(cc_weight)
        self.ca_weight, self.fa_weight = float(ca_weight), float(fa_weight)
        self.temperature, self.growth = float(temperature), float(growth)
        self.cc_temperature, self.cc_base_temperature = float(cc_temperature), float(cc_base_temperature)
        self.feature = feature

    def make_views(self, images):
        """The four rotations of a batch, stacked: (B, H, W, C) -> (4B, H, W, C)."""
        return losses.rotations(images)

    def setup(self, student_shapes, teacher_shapes, context=None):
        d_s = feature_size(student_shapes, self.feature, "student", "PCKD")
        d_t = feature_size(teacher_shapes, self.feature, "teacher", "PCKD")
        self.student_size, self.teacher_size = d_s, d_t
        self.projector = keras.Sequential(
            [keras.Input((d_s,)), keras.layers.Dense(16 * d_t, name="fa_dense1"),
             keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="fa_bn"),
             keras.layers.ReLU(name="fa_relu"), keras.layers.Dense(d_t, name="fa_dense2")],
            name="projector")
        # L_CC's heads map f_s to the widths of the two classifiers' inputs.
        self.student_centres_dim = int(student_shapes["embedding"][-1])
        self.teacher_centres_dim = int(teacher_shapes["embedding"][-1])
        self.cc_student = keras.layers.Dense(self.student_centres_dim, name="cc_student")
        self.cc_student.build((None, d_s))
        self.cc_teacher = keras.layers.Dense(self.teacher_centres_dim, name="cc_teacher")
        self.cc_teacher.build((None, d_s))
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        views = ops.shape(student["logits"])[0] // ops.shape(labels)[0]
        labels = ops.tile(ops.reshape(ops.cast(labels, "int32"), (-1,)), (views,))
        s_logits = ops.cast(student["logits"], "float32")
        weights = losses.preview_weights(losses.per_sample_cross_entropy(labels, s_logits),
                                         inputs.get("epoch", 1.0), self.growth)
        total = self.kd_weight * losses.kd(s_logits, teacher["logits"], self.temperature, weights=weights)
        f_s = ops.reshape(student[self.feature], (-1, self.student_size))
        f_t = ops.reshape(ops.stop_gradient(teacher[self.feature]), (-1, self.teacher_size))
        projected = self.projector(f_s, training=inputs.get("training", True))
        total = total + self.fa_weight * losses.feature_alignment(projected, f_t)
        (w_s, b_s), (w_t, b_t) = inputs["student_classifier"], inputs["teacher_classifier"]
        total = total + self.ca_weight * losses.category_alignment(w_s, b_s, w_t, b_t)
        u = ops.matmul(losses.l2_normalize(self.cc_student(f_s)), ops.stop_gradient(ops.cast(w_s, "float32")))
        v = ops.matmul(losses.l2_normalize(self.cc_teacher(f_s)), ops.stop_gradient(ops.cast(w_t, "float32")))
        contrast = losses.supervised_contrastive(
            ops.concatenate([u, v], axis=0), ops.concatenate([labels, labels], axis=0),
            ops.concatenate([weights, weights], axis=0), self.cc_temperature, self.cc_base_temperature)
        return total + self.cc_weight * contrast

    def get_config(self):
        return {**super().get_config(), "kd_weight": self.kd_weight, "cc_weight": self.cc_weight,
                "ca_weight": self.ca_weight, "fa_weight": self.fa_weight,
                "temperature": self.temperature, "cc_temperature": self.cc_temperature,
                "cc_base_temperature": self.cc_base_temperature, "growth": self.growth,
                "feature": self.feature}
