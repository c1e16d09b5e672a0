"""Noise-contrastive estimation against a memory bank, as in Contrastive Representation Distillation.

Reference: Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020
(the NCE form of their Eq. 18, with the memory and normalising constant of their code).
"""

from keras import ops

NCE_EPS = 1e-7  # added to the denominators of the NCE posteriors, as in the reference code


def _check(name, value, ok, allowed):
    if isinstance(value, (int, float)) and not ok(value):
        raise ValueError(f"{name}={value!r}: expected {allowed}")


def contrast_scores(anchors, memory, rows, temperature=0.07):
    """Unnormalised NCE scores exp(<M[r_ik], h_i> / tau) of anchors against memory rows.

    Computed as one (B, N) product with the whole memory, then gathered: for CIFAR-sized data
    this is cheaper than gathering B * (1 + K) rows of the memory first.

    Args:
        anchors: (B, d) L2-normalised embeddings h_i (gradients flow into them).
        memory: (N, d) memory bank M, a constant: it gets no gradient.
        rows: int (B, 1 + K) rows r_ik of M scored against each anchor: the positive (the
            anchor's own sample, in the other network's memory) first, then K negatives.
        temperature: tau > 0. Default 0.07.

    Returns:
        float32 (B, 1 + K) scores.
    """
    _check("temperature", temperature, lambda t: t > 0, "a number > 0")
    anchors = ops.cast(anchors, "float32")
    memory = ops.stop_gradient(ops.cast(memory, "float32"))
    similarities = ops.matmul(anchors, ops.transpose(memory))
    return ops.exp(ops.take_along_axis(similarities, ops.cast(rows, "int32"), axis=1) / temperature)


def nce_loss(scores, normalizer, num_data):
    """The NCE loss of scores whose first column is the positive pair.

    With P_ik = scores_ik / Z, K negatives and the uniform noise distribution P_n = 1 / N,

        L = -(1 / B) * sum_i [ log(P_i0 / (P_i0 + K P_n + eps))
                               + sum_{k=1..K} log(K P_n / (P_ik + K P_n + eps)) ].

    Args:
        scores: (B, 1 + K) positive scores in column 0, then negatives (see `contrast_scores`).
        normalizer: Z > 0, scalar (a constant: no gradient).
        num_data: N, the number of samples the memory bank holds.

    Returns:
        Scalar float32 loss.
    """
    _check("num_data", num_data, lambda n: n >= 1, "a number >= 1")
    scores = ops.cast(scores, "float32")
    p = scores / ops.stop_gradient(ops.cast(normalizer, "float32"))
    negatives = scores.shape[1] - 1
    noise = negatives / float(num_data)
    log_d1 = ops.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS))
    log_d0 = ops.log(noise / (p[:, 1:] + noise + NCE_EPS))
    return -(ops.sum(log_d1) + ops.sum(log_d0)) / ops.cast(ops.shape(scores)[0], "float32")


def momentum_update(memory_rows, features, momentum=0.5):
    """New memory rows normalize(momentum * m_i + (1 - momentum) * h_i), as constants.

    Args:
        memory_rows: (B, d) current rows of the samples in the batch.
        features: (B, d) the batch's embeddings.
        momentum: weight of the old rows, in [0, 1]. Default 0.5.

    Returns:
        float32 (B, d) unit rows, under stop-gradient.
    """
    _check("momentum", momentum, lambda m: 0 <= m <= 1, "a number in [0, 1]")
    mixed = (momentum * ops.cast(memory_rows, "float32")
             + (1.0 - momentum) * ops.cast(features, "float32"))
    return ops.stop_gradient(mixed / ops.sqrt(ops.sum(ops.square(mixed), axis=-1, keepdims=True)))


def crd(student, teacher, student_memory, teacher_memory, rows, student_normalizer,
        teacher_normalizer, temperature=0.07):
    """The two-sided CRD loss of one batch.

    Each side is an anchor scored against the *other* network's memory (N rows):
    L = nce_loss(contrast_scores(h_s, M_t, rows), Z_s, N) + nce_loss(contrast_scores(h_t, M_s, rows), Z_t, N).

    Args:
        student: (B, d) L2-normalised student embeddings h_s.
        teacher: (B, d) L2-normalised embeddings h_t of the teacher's features through the
            objective's (trainable) teacher head; gradients reach that head.
        student_memory: (N, d) student memory M_s.
        teacher_memory: (N, d) teacher memory M_t.
        rows: int (B, 1 + K) memory rows per sample: its own index, then K negatives.
        student_normalizer: Z_s, the constant of the student-anchored scores.
        teacher_normalizer: Z_t, the constant of the teacher-anchored scores.
        temperature: tau. Default 0.07.

    Returns:
        Scalar float32 loss.
    """
    num_data = student_memory.shape[0]
    student_scores = contrast_scores(student, teacher_memory, rows, temperature)
    teacher_scores = contrast_scores(teacher, student_memory, rows, temperature)
    return (nce_loss(student_scores, student_normalizer, num_data)
            + nce_loss(teacher_scores, teacher_normalizer, num_data))
