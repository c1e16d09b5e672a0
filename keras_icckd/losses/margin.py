"""Classification margins used by the ICCKD margin mechanism."""

from keras import ops

MARGIN_MODES = ("gate", "hinge", "none")


def _target_and_best_other(values, labels):
    """Returns (values[i, y_i], max_{j != y_i} values[i, j]) for a (B, C) tensor."""
    onehot = ops.one_hot(ops.cast(labels, "int32"), ops.shape(values)[-1], dtype=values.dtype)
    target = ops.sum(values * onehot, axis=-1)
    # Push the target column below every other value before taking the max.
    others = ops.max(values - onehot * 1e9, axis=-1)
    return target, others


def probability_margin(logits, labels):
    """Per-sample margin in probability space, without gradient.

    m_i = p_{y_i}(x_i) - max_{j != y_i} p_j(x_i), in [-1, 1]; positive when the sample is
    classified correctly. This is the quantity the ICCKD gate compares with delta.

    Args:
        logits: (B, C) logits.
        labels: (B,) integer labels.

    Returns:
        (B,) float32 margins.
    """
    probs = ops.softmax(ops.cast(ops.stop_gradient(logits), "float32"), axis=-1)
    target, others = _target_and_best_other(probs, labels)
    return target - others


def logit_margin(logits, labels):
    """Per-sample margin in logit space, with gradient: z_y - max_{j != y} z_j (float32)."""
    target, others = _target_and_best_other(ops.cast(logits, "float32"), labels)
    return target - others
