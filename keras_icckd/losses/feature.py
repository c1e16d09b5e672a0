"""Feature-map distillation losses: attention transfer and FitNet hints."""

from keras import ops

_EPS = 1e-12


def _compatible(shape_a, shape_b):
    """Equal ranks and equal sizes wherever both are known."""
    return len(shape_a) == len(shape_b) and all(
        a is None or b is None or a == b for a, b in zip(shape_a, shape_b))


def attention_map(feature_map, p=2):
    """Spatial attention map of a channels-last feature map.

    Reference: Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

    Q = flatten(mean_c F[:, :, :, c]^p), then Q / max(|Q|_2, eps), one row per sample.

    Args:
        feature_map: (B, H, W, C) features, channels last.
        p: the power applied to activations before the channel mean. Default 2.

    Returns:
        (B, H * W) float32 attention maps of unit L2 norm.
    """
    feature_map = ops.convert_to_tensor(feature_map)
    if len(feature_map.shape) != 4:
        raise ValueError(f"feature_map must be (B, H, W, C); got shape {tuple(feature_map.shape)}")
    if isinstance(p, (int, float)) and not p > 0:
        raise ValueError(f"p={p!r}: expected a number > 0")
    features = ops.cast(feature_map, "float32")
    attention = ops.mean(ops.power(features, p), axis=-1)
    attention = ops.reshape(attention, (ops.shape(attention)[0], -1))
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(attention), axis=-1, keepdims=True), _EPS * _EPS))
    return attention / norm


def attention_transfer(student_maps, teacher_maps, p=2):
    """Attention transfer loss summed over pairs of feature maps (mdistiller's `at_loss`).

    Reference: Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

    L = sum_k mean_{i, x} (Q^s_k(i, x) - Q^t_k(i, x))^2, Q = `attention_map`.
    Channel counts may differ between student and teacher; spatial sizes must match.
    The teacher gets no gradient; computed in float32.

    Args:
        student_maps: a (B, H_k, W_k, C_k) tensor or a list/tuple of them.
        teacher_maps: as many (B, H_k, W_k, C'_k) tensors, in the same order.
        p: the power of `attention_map`. Default 2.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: if the numbers of maps differ or a pair differs in H or W.
    """
    if not isinstance(student_maps, (list, tuple)):
        student_maps = [student_maps]
    if not isinstance(teacher_maps, (list, tuple)):
        teacher_maps = [teacher_maps]
    student_maps = [ops.convert_to_tensor(s) for s in student_maps]
    teacher_maps = [ops.convert_to_tensor(t) for t in teacher_maps]
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"attention_transfer needs as many student as teacher maps (at least one); "
                         f"got {len(student_maps)} student and {len(teacher_maps)} teacher maps")
    for k, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        s_shape, t_shape = tuple(s.shape), tuple(t.shape)
        if len(s_shape) != 4 or len(t_shape) != 4 or not _compatible(s_shape[1:3], t_shape[1:3]):
            raise ValueError(f"attention_transfer pair {k}: student map {s_shape} and teacher map "
                             f"{t_shape} must both be (B, H, W, C) with the same H and W")
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        difference = attention_map(s, p) - attention_map(ops.stop_gradient(t), p)
        total = total + ops.mean(ops.square(difference))
    return total


def hint_mse(student_regressed, teacher_map):
    """FitNet hint loss: mean squared error between regressed student and teacher features.

    Reference: Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin
    Deep Nets", ICLR 2015.

    L = mean (r(F^s) - F^t)^2 over all elements; r is the learned regressor, applied by
    the caller. The teacher gets no gradient; computed in float32.

    Args:
        student_regressed: the regressor's output, same shape as `teacher_map`.
        teacher_map: the teacher's features.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: if the shapes differ.
    """
    student_regressed = ops.convert_to_tensor(student_regressed)
    teacher_map = ops.convert_to_tensor(teacher_map)
    s_shape, t_shape = tuple(student_regressed.shape), tuple(teacher_map.shape)
    if not _compatible(s_shape, t_shape):
        raise ValueError(f"hint_mse: student_regressed shape {s_shape} differs from teacher_map "
                         f"shape {t_shape}")
    student = ops.cast(student_regressed, "float32")
    teacher = ops.stop_gradient(ops.cast(teacher_map, "float32"))
    return ops.mean(ops.square(student - teacher))
