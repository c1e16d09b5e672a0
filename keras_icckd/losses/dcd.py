"""Discriminative and consistent distillation: in-batch InfoNCE with a learnable scale."""

from keras import ops


def l2_normalize(x, epsilon=1e-12):
    """x / max(||x||_2, epsilon) along the last axis, in float32."""
    x = ops.cast(x, "float32")
    return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), epsilon)


def dcd(student, teacher, log_scale, bias=0.0, max_scale=10.0, consistency_weight=0.5):
    """The DCD loss of one batch of projected embeddings.

    Reference: Giakoumoglou, Stathaki, "Discriminative and Consistent Representation
    Distillation", arXiv 2407.11802 (2024); formula as in the authors' code.

    With h_s, h_t the L2-normalised rows, s = min(exp(t), max_scale) and
    z_ij = s * <h_s_i, h_t_j> + b (student i against teacher j),

        R = log_softmax(z, axis=1)                  (each student over the teachers)
        C = log_softmax(z, axis=0)^T                (each teacher over the students)
        L = -(1/B) sum_i R_ii  +  w * (1/B) sum_ij exp(C_ij) (C_ij - R_ij).

    The first term is InfoNCE with the matching teacher as the positive; the second the
    "batchmean" KL(column-softmax^T || row-softmax) consistency term. The bias b cancels in
    both softmaxes (it is kept for parity with the authors' parametrisation). Gradients reach
    both projections and t (where exp(t) < max_scale); the teacher backbone's features are
    already constants before the teacher-side projection.

    Args:
        student: (B, d) student projections (normalised here).
        teacher: (B, d) teacher projections (normalised here).
        log_scale: t, scalar (a learnable variable in the `DCD` objective).
        bias: b, scalar. Default 0.
        max_scale: upper clamp of exp(t). Default 10.
        consistency_weight: w. Default 0.5.

    Returns:
        Scalar float32 loss.
    """
    if isinstance(max_scale, (int, float)) and not max_scale > 0:
        raise ValueError(f"max_scale={max_scale!r}: expected a number > 0")
    if isinstance(consistency_weight, (int, float)) and not consistency_weight >= 0:
        raise ValueError(f"consistency_weight={consistency_weight!r}: expected a number >= 0")
    s, t = l2_normalize(student), l2_normalize(teacher)
    scale = ops.minimum(ops.exp(ops.cast(log_scale, "float32")), max_scale)
    logits = scale * ops.matmul(s, ops.transpose(t)) + ops.cast(bias, "float32")
    rows = ops.log_softmax(logits, axis=1)
    cols = ops.transpose(ops.log_softmax(logits, axis=0))
    batch = ops.cast(ops.shape(logits)[0], "float32")
    contrastive = -ops.sum(ops.diagonal(rows)) / batch
    consistency = ops.sum(ops.exp(cols) * (cols - rows)) / batch
    return contrastive + consistency_weight * consistency
