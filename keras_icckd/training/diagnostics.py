"""Intra-class and inter-class feature distances (the quantity ICCKD's analysis is about)."""

import numpy as np


def class_distance_stats(features, labels):
    """Mean pairwise distances of L2-normalised features within and across classes.

    intra = mean ||f_i - f_j|| over pairs i != j with the same label;
    inter = mean ||f_i - f_j|| over pairs with different labels; ratio = intra / inter.
    A teacher whose classes keep more internal variety has a larger ratio.

    Args:
        features: (N, D) array.
        labels: (N,) integer labels.

    Returns:
        dict with "intra_class_distance", "inter_class_distance", "intra_inter_ratio"
        (NaN where a kind of pair does not exist).
    """
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels).reshape(-1)
    squared = np.maximum(2.0 - 2.0 * (f @ f.T), 0.0)
    distances = np.sqrt(squared)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    different = labels[:, None] != labels[None, :]
    intra = distances[same].mean() if same.any() else float("nan")
    inter = distances[different].mean() if different.any() else float("nan")
    return {"intra_class_distance": float(intra), "inter_class_distance": float(inter),
            "intra_inter_ratio": float(intra / inter) if inter > 0 else float("nan")}
