"""Relational knowledge distillation: distance and angle relations within a batch."""

from keras import ops

# Lower bound on squared norms before a square root (as mdistiller's pdist clamp):
# keeps sqrt and its gradient finite for coincident points.
_EPS = 1e-12


def _flatten(features):
    features = ops.cast(features, "float32")
    return ops.reshape(features, (ops.shape(features)[0], -1))


def _smooth_l1(x, y):
    """Huber loss with delta 1 (PyTorch's smooth_l1_loss, beta 1), mean over all entries."""
    diff = ops.abs(x - y)
    return ops.mean(ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5))


def _pairwise_differences(e):
    """(B, B, D) tensor whose [i, j] entry is e_j - e_i."""
    return e[None, :, :] - e[:, None, :]


def _normalized_distances(e):
    """Pairwise Euclidean distances (diagonal 0) divided by their off-diagonal mean."""
    batch = ops.shape(e)[0]
    squared = ops.sum(ops.square(_pairwise_differences(e)), axis=-1)
    off_diagonal = ops.logical_not(ops.eye(batch, dtype="bool"))
    distances = ops.where(off_diagonal, ops.sqrt(ops.maximum(squared, _EPS)), 0.0)
    pairs = ops.maximum(ops.cast(batch * (batch - 1), "float32"), 1.0)
    mean = ops.sum(distances) / pairs
    return distances / ops.maximum(mean, _EPS)


def _angles(e):
    """(B, B, B) cosines: [i, j, k] = <n(e_j - e_i), n(e_k - e_i)>, n(v) = v / max(|v|, eps).

    Degenerate triplets (j == i or k == i) have a zero vector and cosine 0.
    """
    diff = _pairwise_differences(e)
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(diff), axis=-1, keepdims=True), _EPS * _EPS))
    unit = diff / norm
    return ops.matmul(unit, ops.transpose(unit, (0, 2, 1)))


def rkd_distance(student_features, teacher_features):
    """RKD distance term: smooth-L1 between mean-normalised pairwise distances.

    Reference: Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.

    With d_ij = |e_i - e_j| (diagonal 0) and mu = mean_{i != j} d_ij,
    L = mean_{i, j} huber_1(d^s_ij / mu^s - d^t_ij / mu^t) over all B^2 pairs.
    Invariant to a rescaling of either side. The teacher gets no gradient; computed in
    float32.

    Args:
        student_features: (B, ...) student features, flattened to (B, D).
        teacher_features: (B, ...) teacher features, flattened to (B, D'); D' may differ.

    Returns:
        Scalar float32 loss.
    """
    student = _flatten(student_features)
    teacher = ops.stop_gradient(_flatten(teacher_features))
    return _smooth_l1(_normalized_distances(student), _normalized_distances(teacher))


def rkd_angle(student_features, teacher_features):
    """RKD angle term: smooth-L1 between the cosines of all triplet angles.

    Reference: Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.

    With a_ijk = <n(e_j - e_i), n(e_k - e_i)>, n the L2 normalisation,
    L = mean_{i, j, k} huber_1(a^s_ijk - a^t_ijk) over all B^3 triplets. The teacher
    gets no gradient; computed in float32. Memory grows as B^2 * D + B^3.

    Args:
        student_features: (B, ...) student features, flattened to (B, D).
        teacher_features: (B, ...) teacher features, flattened to (B, D'); D' may differ.

    Returns:
        Scalar float32 loss.
    """
    student = _flatten(student_features)
    teacher = ops.stop_gradient(_flatten(teacher_features))
    return _smooth_l1(_angles(student), _angles(teacher))


def rkd(student_features, teacher_features, distance_weight=25.0, angle_weight=50.0):
    """Relational KD, as in mdistiller's `rkd_loss` (Euclidean, not squared, distances).

    Reference: Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.

    L = distance_weight * rkd_distance(s, t) + angle_weight * rkd_angle(s, t).

    Args:
        student_features: (B, ...) student features, flattened to (B, D).
        teacher_features: (B, ...) teacher features, flattened to (B, D'); D' may differ.
        distance_weight: weight of the distance term. Default 25.
        angle_weight: weight of the angle term. Default 50.

    Returns:
        Scalar float32 loss.
    """
    return (distance_weight * rkd_distance(student_features, teacher_features)
            + angle_weight * rkd_angle(student_features, teacher_features))
