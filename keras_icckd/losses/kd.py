"""Classical knowledge distillation on softened logits."""

from keras import ops


def _tempered(student_logits, teacher_logits, temperature):
    """Checks T, then returns (z_s / T, stop_gradient(z_t) / T) in float32."""
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: expected a number > 0")
    student = ops.cast(student_logits, "float32") / temperature
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32")) / temperature
    return student, teacher


def _kl(log_p_t, log_p_s):
    """Row-wise KL(p_t || p_s) from log-probabilities: sum_c p_t (log p_t - log p_s)."""
    return ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def kd_per_sample(student_logits, teacher_logits, temperature=4.0):
    """Per-sample KD terms T^2 * KL(p^t_i || p^s_i), a (B,) float32 tensor (see `kd`).

    For weightings that `kd`'s constant `weights` cannot express, e.g. PCKD's preview weights
    left attached to the graph as in the authors' release.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 2.0], [0.0, 0.0]], "float32")
    >>> [round(float(v), 6) for v in kd_per_sample(z, z)]
    [0.0, 0.0]
    """
    student, teacher = _tempered(student_logits, teacher_logits, temperature)
    per_sample = _kl(ops.log_softmax(teacher, axis=-1), ops.log_softmax(student, axis=-1))
    return per_sample * (temperature ** 2)


def kd(student_logits, teacher_logits, temperature=4.0, weights=None):
    """Hinton's KD loss, as in mdistiller's `kd_loss` (batch-mean KL).

    Reference: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
    NIPS Deep Learning Workshop 2015.

    L = T^2 * (1 / B) * sum_i sum_c p^t_ic (log p^t_ic - log p^s_ic),
    p^t_i = softmax(z^t_i / T), p^s_i = softmax(z^s_i / T).

    Both distributions are taken in log space (log-softmax), so the loss and its
    gradients stay finite for saturated logits. The teacher gets no gradient; the
    computation runs in float32 whatever the input dtype.

    Args:
        student_logits: (B, C) student logits.
        teacher_logits: (B, C) teacher logits.
        temperature: T > 0. Default 4.
        weights: optional (B,) per-sample weights, taken as constants:
            L = T^2 * (1 / B) * sum_i w_i KL_i. Default None (all 1).

    Returns:
        Scalar float32 loss.
    """
    per_sample = kd_per_sample(student_logits, teacher_logits, temperature)
    if weights is not None:
        per_sample = per_sample * ops.stop_gradient(ops.cast(weights, "float32"))
    return ops.mean(per_sample)
