"""CRD: Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020."""

import math

import keras
from keras import ops

from keras_icckd import losses
from keras_icckd.objectives.base import EmbeddingHeads, Objective, register


@register("crd")
class CRD(EmbeddingHeads, Objective):
    """Contrastive representation distillation with two memory banks and NCE.

    Dense heads map the student's and the teacher's `feature` to `feature_dim` and
    L2-normalise: h_s, h_t. Two memory banks of N x feature_dim rows (N = training samples),
    M_s for student and M_t for teacher embeddings, are non-trainable variables, initialised
    uniformly in +-1/sqrt(feature_dim / 3). For a batch with sample indices i and K negatives
    per sample (indices of samples of other classes, from the input pipeline), each student
    anchor h_s_i is scored against M_t rows [i, negatives] and each teacher anchor h_t_i against
    M_s rows, s = exp(<m, h> / tau); with Z fixed on the first training batch
    (Z = N * mean(s), one per side) and P = s / Z:

        L = NCE(P_s) + NCE(P_t),
        NCE(P) = -(1/B) sum_i [log(P_i0 / (P_i0 + K/N + eps)) + sum_k log((K/N) / (P_ik + K/N + eps))].

    After scoring, the rows of the batch are updated,
    M[i] <- normalize(momentum * M[i] + (1 - momentum) * h_i). The memory, Z and the flag that Z
    is set are variables assigned inside `compute`, so they advance under jit on every backend;
    they change only in training (`inputs["training"]`, default True). Batches without
    "index" and "contrast_index" (evaluation data) give a loss of 0. Weight 0.8 in the
    standard recipe, next to KD at 0.9 and CE at 1.

    Needs `context["num_train"]` in `setup` (`Distiller(..., num_train=N)`) and the pipeline
    option `make_train_dataset(..., with_index=True, contrast_negatives=K)`, which
    `data_options()` returns.

    Args:
        feature_dim: size of the embedding heads. Default 128.
        num_negatives: K, negatives per sample. Default 16384; capped at N - 1 for small data
            (the value used is `negatives`, set in `setup`).
        temperature: tau. Default 0.07.
        momentum: memory update momentum. Default 0.5.
        feature: the backbone output embedded on both sides. Default "embedding".

    Example:

    >>> import numpy as np
    >>> crd = CRD(num_negatives=4)
    >>> crd.setup({"embedding": (None, 8)}, {"embedding": (None, 16)}, {"num_train": 10})
    >>> crd.negatives, tuple(crd.memory_student.shape), crd.data_options()["contrast_negatives"]
    (4, (10, 128), 4)
    >>> rng = np.random.default_rng(0)
    >>> inputs = {"index": np.array([0, 5]), "contrast_index": np.array([[5, 6, 7, 8], [1, 2, 3, 4]])}
    >>> loss = crd({"embedding": rng.normal(size=(2, 8))}, {"embedding": rng.normal(size=(2, 16))},
    ...            np.array([0, 1]), inputs)
    >>> bool(loss > 0), float(crd.normalizer_ready)
    (True, 1.0)
    """

    requires = ("index", "contrast_index")

    def __init__(self, feature_dim=128, num_negatives=16384, temperature=0.07, momentum=0.5,
                 feature="embedding", **kwargs):
        super().__init__(**kwargs)
        for arg, value, ok, allowed in (
                ("feature_dim", feature_dim, int(feature_dim) == feature_dim and feature_dim >= 1,
                 "an integer >= 1"),
                ("num_negatives", num_negatives, int(num_negatives) == num_negatives and num_negatives >= 1,
                 "an integer >= 1"),
                ("temperature", temperature, temperature > 0, "> 0"),
                ("momentum", momentum, 0 <= momentum <= 1, "in [0, 1]")):
            if not ok:
                raise ValueError(f"CRD {arg}={value!r}: expected {allowed}")
        self.feature_dim, self.num_negatives = int(feature_dim), int(num_negatives)
        self.temperature, self.momentum, self.feature = float(temperature), float(momentum), feature
        self.num_data = self.negatives = None

    def setup(self, student_shapes, teacher_shapes, context=None):
        num_data = (context or {}).get("num_train")
        if not num_data or num_data < 2:
            raise ValueError(f"CRD needs the number of training samples (at least 2) for its memory "
                             f"banks: build the Distiller with num_train=N; got num_train={num_data!r}")
        self.num_data = int(num_data)
        self.negatives = min(self.num_negatives, self.num_data - 1)
        self.build_heads(student_shapes, teacher_shapes, "CRD")
        bound = 1.0 / math.sqrt(self.feature_dim / 3.0)
        one = "only_first_replica"  # tf.distribute: one value for all replicas (they assign the same)
        for side in ("student", "teacher"):
            setattr(self, f"memory_{side}", self.add_weight(
                shape=(self.num_data, self.feature_dim), trainable=False, dtype="float32", aggregation=one,
                initializer=keras.initializers.RandomUniform(-bound, bound), name=f"memory_{side}"))
            setattr(self, f"normalizer_{side}", self.add_weight(
                shape=(), initializer="ones", trainable=False, dtype="float32", name=f"normalizer_{side}",
                aggregation=one))
        self.normalizer_ready = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                                dtype="float32", name="normalizer_ready", aggregation=one)
        super().setup(student_shapes, teacher_shapes, context)

    def data_options(self):
        if self.negatives is None:
            raise ValueError("CRD.data_options() is known only after setup (it needs num_train)")
        return {"with_index": True, "contrast_negatives": self.negatives}

    def embed(self, student, teacher):
        """The L2-normalised float32 embeddings (h_s, h_t) of the two networks' features."""
        h_s, h_t = self.embed_features(student, teacher)
        return losses.l2_normalize(h_s), losses.l2_normalize(h_t)

    def compute(self, student, teacher, labels, inputs):
        if "index" not in inputs or "contrast_index" not in inputs:
            return ops.zeros((), "float32")
        h_s, h_t = self.embed(student, teacher)
        index = ops.cast(ops.reshape(inputs["index"], (-1,)), "int32")
        rows = ops.concatenate([index[:, None], ops.cast(inputs["contrast_index"], "int32")], axis=1)
        memory_s, memory_t = self.memory_student.value, self.memory_teacher.value
        scores_s = losses.contrast_scores(h_s, memory_t, rows, self.temperature)
        scores_t = losses.contrast_scores(h_t, memory_s, rows, self.temperature)
        ready = self.normalizer_ready > 0.5
        z_s = ops.where(ready, self.normalizer_student.value,
                        ops.stop_gradient(ops.mean(scores_s)) * self.num_data)
        z_t = ops.where(ready, self.normalizer_teacher.value,
                        ops.stop_gradient(ops.mean(scores_t)) * self.num_data)
        loss = (losses.nce_loss(scores_s, z_s, self.num_data)
                + losses.nce_loss(scores_t, z_t, self.num_data))
        if inputs.get("training", True):
            self.normalizer_student.assign(z_s)
            self.normalizer_teacher.assign(z_t)
            self.normalizer_ready.assign(1.0)
            slots = index[:, None]
            new_s = losses.momentum_update(ops.take(memory_s, index, axis=0), h_s, self.momentum)
            new_t = losses.momentum_update(ops.take(memory_t, index, axis=0), h_t, self.momentum)
            self.memory_student.assign(ops.scatter_update(memory_s, slots, new_s))
            self.memory_teacher.assign(ops.scatter_update(memory_t, slots, new_t))
        return loss

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim,
                "num_negatives": self.num_negatives, "temperature": self.temperature,
                "momentum": self.momentum, "feature": self.feature}
