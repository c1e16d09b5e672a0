"""KD, DKD, RKD, AT and FitNet losses against independent NumPy transcriptions."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from helpers import gradients, jitted, to_numpy
from keras_icckd.losses import attention_map, attention_transfer, dkd, hint_mse, kd
from keras_icckd.losses import rkd, rkd_angle, rkd_distance

BATCH, CLASSES = 7, 5


def fast(fn):
    """fn compiled on JAX (one compilation instead of one per eager op), eager on TF."""
    return jitted(fn) if keras.backend.backend() == "jax" else fn


def fast_gradients(fn, *args):
    return gradients(fast(fn), *args)


# ---------------------------------------------------------------- float64 references

def ref_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_kd(s, t, temperature):
    s, t = np.float64(s) / temperature, np.float64(t) / temperature
    total = sum(ref_kl(ref_softmax(t[i]), ref_softmax(s[i])) for i in range(len(s)))
    return temperature ** 2 * total / len(s)


def ref_dkd(s, t, labels, alpha, beta, temperature):
    """Target / non-target split written out per sample (the non-target softmax drops the
    target column outright instead of shifting it by -1000)."""
    s, t = np.float64(s) / temperature, np.float64(t) / temperature
    tckd = nckd = 0.0
    for i, g in enumerate(labels):
        ps, pt = ref_softmax(s[i]), ref_softmax(t[i])
        others = [c for c in range(s.shape[1]) if c != g]
        tckd += ref_kl([pt[g], pt[others].sum()], [ps[g], ps[others].sum()])
        nckd += ref_kl(ref_softmax(t[i, others]), ref_softmax(s[i, others]))
    return temperature ** 2 * (alpha * tckd + beta * nckd) / len(s)


def ref_huber(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b))
    return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()


def ref_distances(e):
    e = np.float64(e).reshape(len(e), -1)
    n = len(e)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                d[i, j] = math.sqrt(((e[i] - e[j]) ** 2).sum())
    return d / (d.sum() / (n * (n - 1)))


def ref_angles(e):
    e = np.float64(e).reshape(len(e), -1)
    n = len(e)
    a = np.zeros((n, n, n))
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if j != i and k != i:
                    u, v = e[j] - e[i], e[k] - e[i]
                    a[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return a


def ref_rkd_distance(s, t):
    return ref_huber(ref_distances(s), ref_distances(t))


def ref_rkd_angle(s, t):
    return ref_huber(ref_angles(s), ref_angles(t))


def ref_attention(f, p):
    rows = []
    for sample in np.float64(f):
        a = (sample ** p).mean(axis=-1).ravel()
        rows.append(a / np.linalg.norm(a))
    return np.array(rows)


def ref_at(students, teachers, p):
    return sum(((ref_attention(s, p) - ref_attention(t, p)) ** 2).mean()
               for s, t in zip(students, teachers))


# ---------------------------------------------------------------- the table of losses

def normal(rng, *shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype("float32")


LABELS = np.random.default_rng(99).integers(0, CLASSES, BATCH)

# name -> (inputs(rng) -> list of arrays, number of student arrays at the front,
#          keras function of those arrays, NumPy reference of the same arrays)
CASES = {
    "kd": (lambda r: [normal(r, BATCH, CLASSES, scale=3), normal(r, BATCH, CLASSES, scale=3)], 1,
           lambda s, t: kd(s, t),
           lambda s, t: ref_kd(s, t, 4.0)),
    "dkd": (lambda r: [normal(r, BATCH, CLASSES, scale=3), normal(r, BATCH, CLASSES, scale=3)], 1,
            lambda s, t: dkd(s, t, LABELS),
            lambda s, t: ref_dkd(s, t, LABELS, 1.0, 8.0, 4.0)),
    "rkd": (lambda r: [normal(r, BATCH, 6), normal(r, BATCH, 8, scale=3)], 1,
            lambda s, t: rkd(s, t),
            lambda s, t: 25 * ref_rkd_distance(s, t) + 50 * ref_rkd_angle(s, t)),
    "rkd_distance": (lambda r: [normal(r, BATCH, 2, 2, 1), normal(r, BATCH, 4)], 1,
                     rkd_distance, ref_rkd_distance),
    "rkd_angle": (lambda r: [normal(r, BATCH, 5), normal(r, BATCH, 4)], 1,
                  rkd_angle, ref_rkd_angle),
    "attention_transfer": (
        lambda r: [normal(r, BATCH, 4, 4, 3), normal(r, BATCH, 2, 2, 6),
                   normal(r, BATCH, 4, 4, 5), normal(r, BATCH, 2, 2, 8)], 2,
        lambda s1, s2, t1, t2: attention_transfer([s1, s2], [t1, t2]),
        lambda s1, s2, t1, t2: ref_at([s1, s2], [t1, t2], 2)),
    "hint_mse": (lambda r: [normal(r, BATCH, 2, 2, 4), normal(r, BATCH, 2, 2, 4)], 1,
                 hint_mse,
                 lambda s, t: ((np.float64(s) - np.float64(t)) ** 2).mean()),
}

# Other arguments of the same losses, checked against the references only.
VARIANTS = {
    "kd_t1": (lambda r: [normal(r, BATCH, CLASSES, scale=2), normal(r, BATCH, CLASSES, scale=2)], 1,
              lambda s, t: kd(s, t, temperature=1.0),
              lambda s, t: ref_kd(s, t, 1.0)),
    "dkd_weights": (lambda r: [normal(r, BATCH, CLASSES, scale=3), normal(r, BATCH, CLASSES, scale=3)], 1,
                    lambda s, t: dkd(s, t, LABELS, alpha=0.5, beta=2.0, temperature=2.0),
                    lambda s, t: ref_dkd(s, t, LABELS, 0.5, 2.0, 2.0)),
    "attention_transfer_p4": (lambda r: [normal(r, BATCH, 3, 3, 4), normal(r, BATCH, 3, 3, 2)], 1,
                              lambda s, t: attention_transfer(s, t, p=4),
                              lambda s, t: ref_at([s], [t], 4)),
}


def case(name, seed=0):
    make, n_student, fn, ref = {**CASES, **VARIANTS}[name]
    return make(np.random.default_rng(seed)), n_student, fn, ref


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(CASES) + sorted(VARIANTS))
def test_matches_numpy(name, seed):
    args, _, fn, ref = case(name, seed)
    value = to_numpy(fn(*args))
    assert value.shape == ()
    np.testing.assert_allclose(value, ref(*args), rtol=2e-5, atol=1e-6)


def test_attention_map_matches_numpy():
    f = normal(np.random.default_rng(2), BATCH, 3, 4, 5)
    a = to_numpy(attention_map(f))
    assert a.shape == (BATCH, 12)
    np.testing.assert_allclose(a, ref_attention(f, 2), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- hand-worked values

# Two classes, T = 2. Sample 0: student logits (0, 0) -> (1/2, 1/2); teacher (2 ln 3, 0) ->
# softmax((ln 3, 0)) = (3/4, 1/4); KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308121. Sample 1 has
# equal logits (KL 0). KD = T^2 * (0.1308121 + 0) / 2 = 1.5 ln 1.5 - 0.5 ln 2 = 0.2616241.
HAND_S = np.array([[0, 0], [1, 1]], "float32")
HAND_T = np.array([[2 * math.log(3), 0], [1, 1]], "float32")
HAND_KD = 1.5 * math.log(1.5) - 0.5 * math.log(2)


def test_kd_hand_worked_value():
    np.testing.assert_allclose(to_numpy(kd(HAND_S, HAND_T, temperature=2.0)), HAND_KD, rtol=1e-6)
    assert abs(HAND_KD - 0.2616241) < 1e-7


@pytest.mark.parametrize("labels", [[0, 1], [1, 0]])
def test_dkd_with_two_classes_is_alpha_times_kd(labels):
    # With two classes the binary split is the full distribution (TCKD = KD) and the
    # non-target softmax has a single class (NCKD = 0), whatever beta.
    value = to_numpy(dkd(HAND_S, HAND_T, np.array(labels), alpha=0.5, beta=8.0, temperature=2.0))
    np.testing.assert_allclose(value, 0.5 * HAND_KD, rtol=1e-6)


# ---------------------------------------------------------------- edge cases

IDENTICAL = {
    "kd": lambda x: kd(x, x),
    "dkd": lambda x: dkd(x, x, LABELS),
    "rkd": lambda x: rkd(x, x),
    "attention_transfer": lambda x: attention_transfer(
        [ops.reshape(x, (BATCH, 1, CLASSES, 1))], [ops.reshape(x, (BATCH, 1, CLASSES, 1))]),
    "hint_mse": lambda x: hint_mse(x, x),
}


@pytest.mark.parametrize("name", sorted(IDENTICAL))
def test_identical_student_and_teacher_give_zero(name):
    x = normal(np.random.default_rng(3), BATCH, CLASSES, scale=3)
    np.testing.assert_allclose(to_numpy(IDENTICAL[name](ops.convert_to_tensor(x))), 0.0, atol=1e-6)


def test_dkd_one_hot_teacher_and_extreme_student_stay_finite():
    teacher = 1e4 * np.eye(CLASSES, dtype="float32")[LABELS]
    wrong = 1e4 * np.eye(CLASSES, dtype="float32")[(LABELS + 1) % CLASSES]
    fn = fast(lambda s, t: dkd(s, t, LABELS))
    for student in (wrong, -teacher, teacher, np.zeros_like(teacher)):
        for value in (to_numpy(dkd(student, teacher, LABELS)), to_numpy(fn(student, teacher))):
            assert np.isfinite(value) and value > -1e-6
        g_s, g_t = gradients(fn, student, teacher)
        assert np.isfinite(g_s).all()
        np.testing.assert_array_equal(g_t, 0.0)
    half = to_numpy(dkd(ops.cast(wrong, "float16"), ops.cast(teacher, "float16"), LABELS))
    assert np.isfinite(half) and half > 100
    # A confidently wrong student pays for it; a matching one does not.
    assert to_numpy(dkd(wrong, teacher, LABELS)) > 100
    np.testing.assert_allclose(to_numpy(dkd(teacher, teacher, LABELS)), 0.0, atol=1e-6)
    # Gradients of a moderately wrong student are finite and non-zero.
    g_s, _ = gradients(fn, 5 * wrong / 1e4, teacher)
    assert np.isfinite(g_s).all() and np.abs(g_s).sum() > 0


@pytest.mark.parametrize("scale", [10.0, 0.1])
def test_rkd_is_scale_invariant(scale):
    s, t = case("rkd", 4)[0]
    base = to_numpy(rkd(s, t))
    assert base > 0
    np.testing.assert_allclose(to_numpy(rkd(scale * s, t)), base, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(rkd(s, scale * t)), base, rtol=1e-5)


def test_rkd_duplicate_samples_keep_gradients_finite():
    s, t = case("rkd", 5)[0]
    s[1] = s[0]  # coincident student points: zero distance off the diagonal
    g_s, _ = fast_gradients(rkd, s, t)
    assert np.isfinite(g_s).all() and np.abs(g_s).sum() > 0


def test_attention_transfer_rejects_mismatched_maps():
    s = np.zeros((2, 4, 4, 3), "float32")
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\).*\(2, 2, 2, 3\)"):
        attention_transfer([s], [np.zeros((2, 2, 2, 3), "float32")])
    with pytest.raises(ValueError, match="1 student and 2 teacher"):
        attention_transfer([s], [s, s])
    with pytest.raises(ValueError, match=r"\(2, 4, 3\)"):
        attention_transfer(s[:, 0], s[:, 0])


def test_bad_arguments_are_named():
    z = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match="temperature=0"):
        kd(z, z, temperature=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        dkd(z, z, np.array([0, 1]), temperature=-1.0)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        hint_mse(z, np.zeros((2, 4), "float32"))


# ---------------------------------------------------------------- gradients, jit, dtypes

@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_student_only(name):
    args, n_student, fn, _ = case(name, 6)
    grads = fast_gradients(fn, *args)
    for g in grads[:n_student]:
        assert np.isfinite(g).all() and np.abs(g).sum() > 0
    for g in grads[n_student:]:
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_equals_eager(name):
    args, _, fn, _ = case(name, 7)
    args = [ops.convert_to_tensor(a) for a in args]
    np.testing.assert_allclose(to_numpy(jitted(fn)(*args)), to_numpy(fn(*args)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_low_precision_inputs_give_float32(name, dtype):
    args, _, fn, _ = case(name, 8)
    low = [ops.cast(a, dtype) for a in args]
    value = fn(*low)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    # Computed in float32: equal to the loss of the same (rounded) values given as float32.
    same_values = [ops.cast(a, "float32") for a in low]
    np.testing.assert_allclose(to_numpy(value), to_numpy(fn(*same_values)), rtol=1e-6, atol=1e-7)
    assert np.isfinite(to_numpy(value))
