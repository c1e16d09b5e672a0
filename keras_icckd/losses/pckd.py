"""The pieces of PCKD: rotated views, preview weights, category contrast and alignment.

Reference: Ding et al., "Preview-based Category Contrastive Learning for Knowledge
Distillation", IEEE TCSVT 2025, arXiv 2410.14143; formulas as the authors' official release
computes them (helper/loops.py, helper/losses.py), see `objectives.PCKD`.
"""

from keras import ops

from keras_icckd.losses.dcd import l2_normalize


def rotations(images):
    """(B, H, W, C) square images -> (4B, H, W, C): the batch rotated by 0, 90, 180, 270 degrees.

    Rotation k is `np.rot90(images, k, axes=(1, 2))` (counter-clockwise); the four rotated
    batches are stacked in that order, so rows [kB, (k+1)B) hold rotation k.
    """
    if images.shape[1] is not None and images.shape[1] != images.shape[2]:
        raise ValueError(f"rotated views need square images; got shape {tuple(images.shape)}")
    transposed = ops.transpose(images, (0, 2, 1, 3))
    quarter = ops.flip(transposed, axis=1)           # rot90 once
    half = ops.flip(ops.flip(images, axis=1), axis=2)  # rot90 twice
    three_quarters = ops.flip(transposed, axis=2)     # rot90 three times
    return ops.concatenate([images, quarter, half, three_quarters], axis=0)


def per_sample_cross_entropy(labels, logits):
    """(B,) cross-entropy of integer labels under logits, float32."""
    logits = ops.cast(logits, "float32")
    log_p = ops.log_softmax(logits, axis=-1)
    onehot = ops.one_hot(ops.cast(labels, "int32"), ops.shape(logits)[-1], dtype="float32")
    return -ops.sum(onehot * log_p, axis=-1)


def preview_weights(per_sample_ce, epoch, growth=1.005, detach=True):
    """PCKD's preview weights from the student's per-sample CE.

    difficulty_i = CE_i / mean(CE); w_i = 1 if difficulty_i <= growth^epoch, else
    exp(-difficulty_i^2). Harder-than-average samples are learnt from less, and the
    threshold relaxes as training goes on. In the authors' release the CE is that of each
    image's unrotated view and the weights stay attached to the graph where they scale KD
    (`detach=False`); `detach=True` (the default here) makes them constants.

    Args:
        per_sample_ce: (B,) cross-entropy of each sample.
        epoch: the 1-based epoch (a number or a scalar tensor).
        growth: base of the threshold growth^epoch. Default 1.005.
        detach: return the weights under stop-gradient. Default True.

    Returns:
        (B,) float32 weights in (0, 1].

    Example:

    >>> import numpy as np
    >>> [round(float(w), 4) for w in preview_weights(np.array([1.0, 3.0], "float32"), epoch=0)]
    [1.0, 0.1054]
    """
    ce = ops.cast(per_sample_ce, "float32")
    if detach:
        ce = ops.stop_gradient(ce)
    difficulty = ce / ops.maximum(ops.mean(ce), 1e-12)
    threshold = ops.power(float(growth), ops.cast(epoch, "float32"))
    weights = ops.where(difficulty <= threshold, 1.0, ops.exp(-ops.square(difficulty)))
    return ops.stop_gradient(weights) if detach else weights


def _supervised_contrastive_per_anchor(features, labels, temperature, base_temperature, epsilon=0.0):
    """Per-row SupCon terms l_i of `features` (used as given: normalise before if needed)."""
    f = ops.cast(features, "float32")
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    eye = ops.eye(ops.shape(f)[0], dtype="float32")
    scores = ops.matmul(f, ops.transpose(f)) / temperature
    scores = scores - ops.stop_gradient(ops.max(scores, axis=1, keepdims=True))
    others = 1.0 - eye
    log_norm = ops.log(ops.sum(ops.exp(scores) * others, axis=1, keepdims=True) + epsilon)
    positive = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32") * others
    num_positive = ops.sum(positive, axis=1)
    mean_log_prob = ops.sum(positive * (scores - log_norm), axis=1) / ops.maximum(num_positive, 1.0)
    return -(temperature / base_temperature) * mean_log_prob


def supervised_contrastive(features, labels, weights=None, temperature=4.0, base_temperature=0.07):
    """Supervised contrastive loss (Khosla et al. 2020) of L2-normalised rows, per-anchor weighted.

    With f the normalised rows, s_ij = <f_i, f_j> / temperature and P(i) the other rows of
    the same label:

        l_i = -(temperature / base_temperature) * (1/|P(i)|) sum_{p in P(i)}
              [s_ip - log sum_{a != i} exp(s_ia)],
        L = (1/M) sum_i w_i l_i,

    with l_i = 0 where P(i) is empty. Static shapes, explicit masks, float32. (PCKD's
    category contrast, which scores rows that are not normalised, is `category_contrast`.)
    """
    per_anchor = _supervised_contrastive_per_anchor(l2_normalize(features), labels, temperature,
                                                    base_temperature)
    if weights is not None:
        per_anchor = per_anchor * ops.stop_gradient(ops.cast(weights, "float32"))
    return ops.mean(per_anchor)


def category_contrast(student_scores, teacher_scores, labels, weights=None, temperature=4.0,
                      base_temperature=0.07, epsilon=1e-7):
    """PCKD's category contrast L_CC, as the official release computes it.

    The N rows u_i = student_scores[i] and v_i = teacher_scores[i] (an image's embedding
    scored against the student's and the teacher's category centres) are the 2N anchors
    a = [u; v], used as they are (not normalised). With s_jk = <a_j, a_k> / temperature,
    P(j) the other anchors of j's label and

        l_j = -(temperature / base_temperature) * (1/|P(j)|) sum_{p in P(j)}
              [s_jp - log(sum_{k != j} exp(s_jk) + epsilon)]

    (log-sum-exp taken after subtracting each row's maximum, l_j = 0 where P(j) is empty),
    each image gets the sum of its two terms and

        L_CC = (1/N) sum_i w_i (l_i + l_{N+i}),

    the weights w (default 1) taken as constants. The release computes the same with
    epsilon = 1e-7.

    Args:
        student_scores: (N, C) u.
        teacher_scores: (N, C) v.
        labels: (N,) integer labels of the rows.
        weights: optional (N,) per-image weights (PCKD's preview weights).
        temperature: default 4 (the release's value for PCKD).
        base_temperature: default 0.07.
        epsilon: added inside the log. Default 1e-7.

    Returns:
        Scalar float32 loss.

    Example:

    >>> import numpy as np
    >>> u = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    >>> round(float(category_contrast(u, u, np.array([0, 0, 1]))), 1)  # (4 x 86.68 + 2 x 80.84) / 3
    169.5
    """
    anchors = ops.concatenate([ops.cast(student_scores, "float32"), ops.cast(teacher_scores, "float32")],
                              axis=0)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    per_anchor = _supervised_contrastive_per_anchor(
        anchors, ops.concatenate([labels, labels], axis=0), temperature, base_temperature, epsilon)
    count = ops.shape(labels)[0]
    per_image = per_anchor[:count] + per_anchor[count:]
    if weights is not None:
        per_image = per_image * ops.stop_gradient(ops.cast(weights, "float32"))
    return ops.mean(per_image)


def category_alignment(student_kernel, student_bias, teacher_kernel, teacher_bias):
    """MSE between the student's and the teacher's classifier [W | b] (teacher constant).

    Kernels are (d, C) Dense kernels; the compared matrices are [W^T | b] of shape (C, d + 1).
    Returns 0 when the two shapes differ (the loss is only defined for equal widths).
    """
    if tuple(student_kernel.shape) != tuple(teacher_kernel.shape):
        return ops.convert_to_tensor(0.0, "float32")
    s = ops.concatenate([ops.transpose(ops.cast(student_kernel, "float32")),
                         ops.cast(student_bias, "float32")[:, None]], axis=1)
    t = ops.stop_gradient(ops.concatenate([ops.transpose(ops.cast(teacher_kernel, "float32")),
                                           ops.cast(teacher_bias, "float32")[:, None]], axis=1))
    return ops.mean(ops.square(s - t))


def feature_alignment(projected, teacher):
    """mean_i (2 - 2 cos(projected_i, teacher_i)), teacher features constant."""
    p = l2_normalize(projected)
    t = l2_normalize(ops.stop_gradient(teacher))
    return ops.mean(2.0 - 2.0 * ops.sum(p * t, axis=-1))
