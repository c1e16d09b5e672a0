"""The ICCKD losses against an independent NumPy transcription and hand-worked values."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from helpers import gradients, jitted, to_numpy, unit_rows
from keras_icckd.losses import intra_class_contrastive, intra_class_objective
from keras_icckd.losses import logit_margin, probability_margin


def reference_intra(anchors, positives, labels, bank=None, bank_labels=None, tau=0.1):
    """Loop-by-loop float64 transcription of METHODS.md section 1."""
    a, p = np.float64(anchors), np.float64(positives)
    losses, counts = [], []
    for i in range(len(a)):
        negatives = [a[j] for j in range(len(a)) if j != i and labels[j] == labels[i]]
        negatives += [p[j] for j in range(len(a)) if j != i and labels[j] == labels[i]]
        if bank is not None:
            negatives += [np.float64(b) for b, l in zip(bank, bank_labels) if l == labels[i]]
        pos = math.exp(a[i] @ p[i] / tau)
        neg = sum(math.exp(a[i] @ n / tau) for n in negatives)
        losses.append(-math.log(pos / (pos + neg)))
        counts.append(len(negatives))
    return np.array(losses), np.array(counts, float)


def reference_margin(logits, labels):
    z = np.float64(logits)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = np.arange(len(z))
    masked = p.copy()
    masked[rows, labels] = -np.inf
    zm = z.copy()
    zm[rows, labels] = -np.inf
    return p[rows, labels] - masked.max(1), z[rows, labels] - zm.max(1)


def random_case(seed, batch=12, dim=8, classes=3, queue=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, batch)
    bank_labels = rng.integers(-1, classes, queue)  # -1: empty slots
    return (unit_rows(rng, batch, dim), unit_rows(rng, batch, dim), labels,
            unit_rows(rng, queue, dim), bank_labels, rng.normal(size=(batch, classes)) * 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_bank", [False, True])
def test_intra_matches_numpy(seed, use_bank):
    a, p, y, bank, bank_y, _ = random_case(seed)
    if not use_bank:
        bank = bank_y = None
    loss, count = to_numpy(intra_class_contrastive(a, p, y, bank, bank_y, tau=0.2))
    ref_loss, ref_count = reference_intra(a, p, y, bank, bank_y, tau=0.2)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(count, ref_count)


def test_margins_match_numpy():
    _, _, y, _, _, logits = random_case(3)
    ref_prob, ref_logit = reference_margin(logits, y)
    np.testing.assert_allclose(to_numpy(probability_margin(logits, y)), ref_prob, atol=1e-6)
    np.testing.assert_allclose(to_numpy(logit_margin(logits, y)), ref_logit, atol=1e-5)


# Hand-worked 3-sample case: anchors 0 and 1 share class 0 and are orthogonal, tau = 1,
# so each has positive logit 1 and two negatives with logit 0:
# l = -log(e / (e + 2)) = log(1 + 2 / e) = 0.5514447139; sample 2 has no negatives.
HAND_A = np.array([[1, 0], [0, 1], [1, 0]], "float32")
HAND_Y = np.array([0, 0, 1])
HAND_L = math.log(1 + 2 / math.e)
CONFIDENT = 10.0 * np.eye(3, dtype="float32")[HAND_Y]


def test_hand_worked_value():
    loss, count = to_numpy(intra_class_contrastive(HAND_A, HAND_A, HAND_Y, tau=1.0))
    np.testing.assert_allclose(loss, [HAND_L, HAND_L, 0.0], atol=1e-6)
    np.testing.assert_array_equal(count, [2, 2, 0])
    total, gate = to_numpy(intra_class_objective(loss, CONFIDENT, HAND_Y, delta=0.5))
    np.testing.assert_allclose(total, 2 * HAND_L / 3, atol=1e-6)  # = 0.3676298
    np.testing.assert_array_equal(gate, [1, 1, 1])


def test_no_negatives_gives_zero():
    loss, count = to_numpy(intra_class_contrastive(HAND_A, HAND_A, np.array([0, 1, 2]), tau=0.1))
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(count, 0.0)
    # Empty cache slots (label -1) never count as negatives.
    loss, count = to_numpy(intra_class_contrastive(
        HAND_A, HAND_A, np.array([0, 1, 2]), bank=HAND_A, bank_labels=np.array([-1, -1, -1]), tau=0.1))
    np.testing.assert_array_equal(loss, 0.0)


def test_all_anchors_gated_out_gives_zero():
    loss, _ = intra_class_contrastive(HAND_A, HAND_A, HAND_Y, tau=1.0)
    uniform = np.zeros((3, 3), "float32")  # margin 0 < delta for every anchor
    total, gate = to_numpy(intra_class_objective(loss, uniform, HAND_Y, delta=0.5))
    assert total == 0.0
    np.testing.assert_array_equal(gate, 0.0)


def test_gate_drops_anchors_below_delta():
    loss, _ = intra_class_contrastive(HAND_A, HAND_A, HAND_Y, tau=1.0)
    logits = CONFIDENT.copy()
    logits[0] = 0.0  # anchor 0: margin 0
    total, gate = to_numpy(intra_class_objective(loss, logits, HAND_Y, delta=0.5))
    np.testing.assert_array_equal(gate, [0, 1, 1])
    np.testing.assert_allclose(total, HAND_L / 2, atol=1e-6)
    # A very negative delta lets every anchor in, whatever its margin.
    total, gate = to_numpy(intra_class_objective(loss, logits, HAND_Y, delta=-5.0))
    np.testing.assert_array_equal(gate, 1)
    np.testing.assert_allclose(total, 2 * HAND_L / 3, atol=1e-6)


@pytest.mark.parametrize("mode", ["hinge", "none"])
def test_hinge_and_none_modes(mode):
    a, p, y, bank, bank_y, logits = random_case(4)
    loss, _ = intra_class_contrastive(a, p, y, bank, bank_y, tau=0.1)
    total, gate = to_numpy(intra_class_objective(loss, logits, y, delta=0.5, margin_mode=mode))
    expected = reference_intra(a, p, y, bank, bank_y, tau=0.1)[0].mean()
    if mode == "hinge":
        expected += np.maximum(0.0, 0.5 - reference_margin(logits, y)[1]).mean()
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    np.testing.assert_array_equal(gate, 1)


def test_unknown_margin_mode():
    with pytest.raises(ValueError, match="margin_mode='soft'"):
        intra_class_objective(np.zeros(3), np.zeros((3, 3)), HAND_Y, margin_mode="soft")


def test_gradients_finite_and_none_into_bank():
    a, p, y, bank, bank_y, _ = random_case(5)
    ga, gp, gb = gradients(
        lambda a_, p_, b_: intra_class_contrastive(a_, p_, y, b_, bank_y, tau=0.1)[0], a, p, bank)
    for g in (ga, gp):
        assert np.isfinite(g).all() and np.abs(g).sum() > 0
    np.testing.assert_array_equal(gb, 0.0)
    # Anchors without negatives (label 2 alone) get no gradient from their own term.
    y_alone = np.array([0, 0, 2])
    ga, gp = gradients(lambda a_, p_: intra_class_contrastive(a_, p_, y_alone, tau=0.1)[0][2],
                       HAND_A, HAND_A)
    np.testing.assert_array_equal(ga, 0.0)


def test_gate_passes_no_gradient_to_logits():
    loss = np.array([1.0, 2.0, 3.0], "float32")
    (g,) = gradients(lambda z: intra_class_objective(loss, z, HAND_Y, delta=0.5)[0], CONFIDENT)
    np.testing.assert_array_equal(g, 0.0)
    (g,) = gradients(lambda z: intra_class_objective(loss, z, HAND_Y, delta=20.0, margin_mode="hinge")[0],
                     CONFIDENT)
    assert np.abs(g).sum() > 0


def test_jit_equals_eager():
    a, p, y, bank, bank_y, logits = random_case(6)

    def fn(a_, p_, bank_, logits_):
        loss, _ = intra_class_contrastive(a_, p_, y, bank_, bank_y, tau=0.1)
        return intra_class_objective(loss, logits_, y, delta=0.2)[0]

    args = [ops.convert_to_tensor(v.astype("float32")) for v in (a, p, bank, logits)]
    np.testing.assert_allclose(to_numpy(jitted(fn)(*args)), to_numpy(fn(*args)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_stay_finite(dtype):
    a, p, y, bank, bank_y, logits = random_case(7)
    cast = lambda v: ops.cast(v, dtype)  # noqa: E731
    loss, _ = intra_class_contrastive(cast(a), cast(p), y, cast(bank), bank_y, tau=0.05)
    total, _ = intra_class_objective(loss, cast(logits * 1000), y, margin_mode="hinge")
    assert np.isfinite(to_numpy(loss)).all() and np.isfinite(to_numpy(total))
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
