"""Multi-scale decoupled contrastive distillation (EXPERIMENTAL, reconstructed).

Reference: arXiv 2502.05835 (abstract only). The abstract gives the idea: last-stage maps
pooled at several scales, each grid cell a local sample, contrastive losses across samples
and across feature channels, no memory bank. Everything concrete below (scales, pooling
bins, temperature, averaging, the two InfoNCE directions) is our reconstruction.
"""

from keras import ops

from keras_icckd.losses.dcd import l2_normalize


def grid_pool(maps, size):
    """(B, H, W, C) -> (B, size*size, C): average over the cells of a size x size grid.

    Cell (i, j) covers rows [floor(i H / size), ceil((i + 1) H / size)) and likewise for
    columns (PyTorch's adaptive average pooling bins); cells are ordered row-major.
    """
    height, width = int(maps.shape[1]), int(maps.shape[2])
    maps = ops.cast(maps, "float32")
    cells = []
    for i in range(size):
        r0, r1 = (i * height) // size, -((-(i + 1) * height) // size)
        for j in range(size):
            c0, c1 = (j * width) // size, -((-(j + 1) * width) // size)
            cells.append(ops.mean(maps[:, r0:r1, c0:c1, :], axis=(1, 2)))
    return ops.stack(cells, axis=1)


def diagonal_info_nce(anchors, targets, temperature):
    """Batched InfoNCE with the matching row as positive.

    anchors, targets: (G, N, D), L2-normalised here along D; for each group g and row i,
    -log softmax_j(<a_gi, t_gj> / temperature)[i]; mean over g and i.
    """
    a, t = l2_normalize(anchors), l2_normalize(targets)
    logits = ops.einsum("gid,gjd->gij", a, t) / temperature
    log_p = ops.log_softmax(logits, axis=-1)
    eye = ops.eye(ops.shape(logits)[-1], dtype="float32")
    return -ops.mean(ops.sum(log_p * eye[None], axis=-1))


def msdcrd(student_cells, teacher_cells, temperature=0.1):
    """The loss of one scale: sample-wise plus feature-wise InfoNCE over all grid cells.

    Args:
        student_cells: (B, G, C) the student's pooled cells, already projected to the
            teacher's C channels.
        teacher_cells: (B, G, C) the teacher's (constant).
        temperature: InfoNCE temperature. Default 0.1 (reconstructed).

    Sample-wise: in each cell, student sample i against the teacher's B samples (positive: i).
    Feature-wise: in each cell, student channel c (its B values, normalised) against the
    teacher's C channels (positive: c). Each term is averaged over cells; L = sum of the two.
    """
    s = ops.transpose(ops.cast(student_cells, "float32"), (1, 0, 2))                 # (G, B, C)
    t = ops.transpose(ops.stop_gradient(ops.cast(teacher_cells, "float32")), (1, 0, 2))
    sample_wise = diagonal_info_nce(s, t, temperature)
    feature_wise = diagonal_info_nce(ops.transpose(s, (0, 2, 1)), ops.transpose(t, (0, 2, 1)), temperature)
    return sample_wise + feature_wise
