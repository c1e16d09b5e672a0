"""The pieces of PCKD: rotated views, preview weights, category contrast and alignment.

Reference: Ding et al., "Preview-based Category Contrastive Learning for Knowledge
Distillation", IEEE TCSVT 2025, arXiv 2410.14143. Formulas as specified in METHODS.md
section 2; the reading of "scored against the classifier weights" is ours (see
`objectives.PCKD`).
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


def preview_weights(per_sample_ce, epoch, growth=1.005):
    """PCKD's preview weights from the student's per-sample CE (a constant: stop-gradient).

    difficulty_i = CE_i / mean(CE); w_i = 1 if difficulty_i <= growth^epoch, else
    exp(-difficulty_i^2). Harder-than-average samples are learnt from less, and the
    threshold relaxes as training goes on.
    """
    ce = ops.stop_gradient(ops.cast(per_sample_ce, "float32"))
    difficulty = ce / ops.maximum(ops.mean(ce), 1e-12)
    threshold = ops.power(float(growth), ops.cast(epoch, "float32"))
    return ops.stop_gradient(ops.where(difficulty <= threshold, 1.0, ops.exp(-ops.square(difficulty))))


def supervised_contrastive(features, labels, weights=None, temperature=4.0, base_temperature=0.07):
    """Supervised contrastive loss (Khosla et al. 2020) of L2-normalised rows, per-anchor weighted.

    With f the normalised rows, s_ij = <f_i, f_j> / temperature and P(i) the other rows of
    the same label:

        l_i = -(temperature / base_temperature) * (1/|P(i)|) sum_{p in P(i)}
              [s_ip - log sum_{a != i} exp(s_ia)],
        L = (1/M) sum_i w_i l_i,

    with l_i = 0 where P(i) is empty. Static shapes, explicit masks, float32.
    """
    f = l2_normalize(features)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    count = ops.shape(f)[0]
    eye = ops.eye(count, dtype="float32")
    scores = ops.matmul(f, ops.transpose(f)) / temperature
    scores = scores - ops.stop_gradient(ops.max(scores, axis=1, keepdims=True))
    others = 1.0 - eye
    log_norm = ops.log(ops.sum(ops.exp(scores) * others, axis=1, keepdims=True))
    positive = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32") * others
    num_positive = ops.sum(positive, axis=1)
    mean_log_prob = ops.sum(positive * (scores - log_norm), axis=1) / ops.maximum(num_positive, 1.0)
    per_anchor = -(temperature / base_temperature) * mean_log_prob
    if weights is not None:
        per_anchor = per_anchor * ops.stop_gradient(ops.cast(weights, "float32"))
    return ops.mean(per_anchor)


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
