"""Decoupled knowledge distillation: target-class and non-target-class parts of KD."""

from keras import ops

from keras_icckd.losses.kd import _kl
from keras_icckd.losses.kd import _tempered

# Subtracted from the target logit (already divided by T) to leave it out of the
# non-target softmax, as in the authors' code.
_NON_TARGET_SHIFT = 1000.0
# Pushes the target column out of a log-sum-exp over the non-target classes.
_EXCLUDED = -1e9


def _binary_log_probs(scaled_logits, onehot):
    """log [p_gt, 1 - p_gt] of softmax(scaled_logits), computed in log space.

    log p_gt = z_gt - logsumexp(z) and log(1 - p_gt) = logsumexp_{c != gt}(z) - logsumexp(z).
    Unlike log(softmax), this never evaluates log(0): it stays finite (and so do its
    gradients) for a one-hot-like teacher or a saturated student.
    """
    log_total = ops.logsumexp(scaled_logits, axis=-1)
    log_gt = ops.sum(scaled_logits * onehot, axis=-1) - log_total
    log_other = ops.logsumexp(ops.where(onehot > 0, _EXCLUDED, scaled_logits), axis=-1) - log_total
    return ops.stack([log_gt, log_other], axis=-1)


def dkd(student_logits, teacher_logits, labels, alpha=1.0, beta=8.0, temperature=4.0):
    """Decoupled Knowledge Distillation, as in mdistiller's `dkd_loss`.

    Reference: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022.

    With z / T the softened logits and g the target class of each sample:

    TCKD = T^2 * (1 / B) * sum_i KL(b^t_i || b^s_i), b_i = [p_ig, 1 - p_ig],
        p_i = softmax(z_i / T);
    NCKD = T^2 * (1 / B) * sum_i KL(q^t_i || q^s_i), q_i = softmax(z_i / T - 1000 * onehot(g)),
        the distribution over the non-target classes;
    L = alpha * TCKD + beta * NCKD.

    The binary distributions are taken in log space (log p_g = z_g - logsumexp(z),
    log(1 - p_g) = logsumexp_{c != g}(z) - logsumexp(z)): this is the exact value where
    log(softmax) is finite and guards against log(0) where it is not (one-hot-like
    teacher, saturated student). As in the authors' code, the shift of 1000 removes the
    target class from the non-target softmax as long as z_g / T exceeds the largest other
    z / T by much less than 1000 (always the case for trained networks at T = 4). The
    teacher gets no gradient; the computation runs in float32 whatever the input dtype.

    Args:
        student_logits: (B, C) student logits.
        teacher_logits: (B, C) teacher logits.
        labels: (B,) integer target classes.
        alpha: weight of the target-class part TCKD. Default 1.
        beta: weight of the non-target part NCKD. Default 8.
        temperature: T > 0. Default 4.

    Returns:
        Scalar float32 loss.
    """
    student, teacher = _tempered(student_logits, teacher_logits, temperature)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    onehot = ops.one_hot(labels, ops.shape(student)[-1], dtype="float32")

    tckd = _kl(_binary_log_probs(teacher, onehot), _binary_log_probs(student, onehot))
    nckd = _kl(ops.log_softmax(teacher - _NON_TARGET_SHIFT * onehot, axis=-1),
               ops.log_softmax(student - _NON_TARGET_SHIFT * onehot, axis=-1))
    scale = temperature ** 2
    return alpha * scale * ops.mean(tckd) + beta * scale * ops.mean(nckd)
