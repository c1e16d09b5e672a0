"""How the losses are wired into the teacher, the objectives and the Distiller, checked by value.

The loss functions have their own NumPy references (test_losses, test_distill_losses,
test_contrastive_objectives); here the same references check what the models hand them: which
tensors, which options, which weights, which state, and where gradients go.
"""

import math

import keras
import numpy as np
import pytest

from helpers import gradients, numeric_gradient, to_numpy, unit_rows
from test_contrastive_objectives import ref_dcd, ref_first_z, ref_momentum, ref_nce_side, ref_normalize
from test_distill_losses import ref_at, ref_dkd, ref_kd, ref_rkd_angle, ref_rkd_distance
from test_losses import reference_intra, reference_margin
from keras_icckd import backbones, objectives
from keras_icckd.models import ContrastiveTeacher, Distiller

RNG = np.random.default_rng(17)


def ref_softmax_rows(z):
    z = np.float64(z) - np.max(z, axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def ref_ce(logits, labels):
    return -np.mean(np.log(ref_softmax_rows(logits)[np.arange(len(labels)), labels]))


# ---------------------------------------------------------------- the ContrastiveTeacher

CLASSES, BATCH, DIM, SLOTS = 3, 8, 4, 8
LABELS = np.array([0, 1, 0, 2, 1, 0, 2, 0])
# Crafted view-1 logits: rows 0, 3, 4, 6 have probability margins above 0.5, the others below.
LOGITS = np.array([[4.0, 0, 0], [0.2, 0.5, 0], [1, 0.8, 0], [0, 0, 5], [0, 3.5, 1], [0.3, 0, 0.6],
                   [-1, 0, 3], [2, 2, 0]], "float32")
LOGITS_2 = LOGITS[::-1].copy()  # view-2 logits: gating on these would pick other anchors
CACHE = unit_rows(RNG, 5, DIM)
CACHE_LABELS = np.array([0, 2, 0, 1, 0])  # 5 of 8 slots filled, 3 empty (-1)


@pytest.fixture(scope="module")
def projections():
    return unit_rows(RNG, BATCH, DIM), unit_rows(RNG, BATCH, DIM)


@pytest.fixture(scope="module")
def backbone():
    return backbones.get("resnet8", num_classes=CLASSES, input_shape=(8, 8, 3))


def make_teacher(backbone, **kwargs):
    teacher = ContrastiveTeacher(backbone, icc_lambda=0.3, icc_tau=0.2, icc_cache_size=SLOTS,
                                 projection_dim=DIM, **kwargs)
    teacher.cache.enqueue(CACHE, CACHE_LABELS)
    return teacher


def y_pred(p1, p2, logits=LOGITS, logits_2=LOGITS_2):
    return {"logits": logits, "logits_view2": logits_2, "projection": p1, "projection_view2": p2}


def ref_teacher_loss(p1, p2, mode, delta=0.5, both_views=False, gate_logits=LOGITS):
    """CE + lambda * L_intra of METHODS.md section 1, from the cache as it was before the batch."""
    per_anchor, _ = reference_intra(p1, p2, LABELS, np.r_[CACHE, np.zeros((3, DIM))],
                                    np.r_[CACHE_LABELS, [-1, -1, -1]], tau=0.2)
    prob_margin, logit_margin = reference_margin(gate_logits, LABELS)
    if mode == "gate":
        gate = prob_margin > delta
        intra = (gate * per_anchor).sum() / max(1, gate.sum())
    else:
        intra = per_anchor.mean()
        if mode == "hinge":
            intra += np.maximum(0.0, delta - reference_margin(LOGITS, LABELS)[1]).mean()
    ce = ref_ce(LOGITS, LABELS)
    if both_views:
        ce = 0.5 * (ce + ref_ce(LOGITS_2, LABELS))
    return ce + 0.3 * intra


@pytest.mark.parametrize("mode", ["gate", "hinge", "none"])
def test_teacher_loss_by_value_reads_the_cache_before_writing_the_batch(projections, backbone, mode):
    p1, p2 = projections
    teacher = make_teacher(backbone, icc_margin_mode=mode)  # default delta 0.5
    passed = reference_margin(LOGITS, LABELS)[0] > 0.5
    assert 0 < passed.sum() < BATCH  # the gate admits some anchors and not others
    total = teacher.compute_loss(None, LABELS, y_pred(p1, p2), training=True)
    expected = ref_teacher_loss(p1, p2, mode)
    assert float(to_numpy(total)) == pytest.approx(expected, rel=1e-5)
    if mode == "gate":
        assert abs(ref_teacher_loss(p1, p2, mode, gate_logits=LOGITS_2) - expected) > 1e-3
        assert float(to_numpy(teacher.pass_tracker.result())) == pytest.approx(passed.mean())
    # The batch's first-view projections were written after the loss read the cache:
    # slots 5, 6, 7, 0, 1, 2 (the ring wraps), pointer at 13 mod 8.
    slots = np.arange(5, 5 + BATCH) % SLOTS
    np.testing.assert_allclose(to_numpy(teacher.cache.features)[slots], p1, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(teacher.cache.labels)[slots], LABELS)
    assert int(to_numpy(teacher.cache.pointer)) == (5 + BATCH) % SLOTS
    # Outside training nothing is written.
    teacher.compute_loss(None, LABELS, y_pred(p2, p1), training=False)
    np.testing.assert_allclose(to_numpy(teacher.cache.features)[slots], p1, rtol=1e-6)


def test_teacher_ce_on_both_views(projections, backbone):
    p1, p2 = projections
    total = make_teacher(backbone, ce_on_both_views=True).compute_loss(None, LABELS, y_pred(p1, p2), training=True)
    assert float(to_numpy(total)) == pytest.approx(ref_teacher_loss(p1, p2, "gate", both_views=True), rel=1e-5)


@pytest.mark.parametrize("both_views", [False, True])
def test_teacher_gradients_reach_both_projections_and_not_the_gate(projections, backbone, both_views):
    p1, p2 = projections
    teacher = make_teacher(backbone, ce_on_both_views=both_views)

    def loss(a, b, z1, z2):
        with keras.StatelessScope():  # metric and cache updates stay inside the scope
            return teacher.compute_loss(None, LABELS, y_pred(a, b, z1, z2), training=False)

    g1, g2, g_z1, g_z2 = gradients(loss, p1, p2, LOGITS, LOGITS_2)
    np.testing.assert_allclose(g1, numeric_gradient(lambda a: ref_teacher_loss(a, p2, "gate", both_views=both_views), p1),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(g2, numeric_gradient(lambda b: ref_teacher_loss(p1, b, "gate", both_views=both_views), p2),
                               rtol=1e-3, atol=1e-5)
    assert np.abs(g1).max() > 0 and np.abs(g2).max() > 0
    # The logits get CE's gradient only: the gate (a function of the view-1 logits) passes none.
    onehot = np.eye(CLASSES)[LABELS]
    share = 0.5 if both_views else 1.0
    np.testing.assert_allclose(g_z1, share * (ref_softmax_rows(LOGITS) - onehot) / BATCH, atol=1e-6)
    expected_z2 = share * (ref_softmax_rows(LOGITS_2) - onehot) / BATCH if both_views else 0.0
    np.testing.assert_allclose(g_z2, np.broadcast_to(expected_z2, g_z2.shape), atol=1e-6)


# ---------------------------------------------------------------- every objective's options

B, C = 6, 5
S_LOGITS, T_LOGITS = RNG.normal(size=(B, C)) * 3, RNG.normal(size=(B, C)) * 3
Y = RNG.integers(0, C, B)
MAPS_S = {f"feat{k}": RNG.normal(size=(B, 8 // 2 ** k, 8 // 2 ** k, 2 + k)) for k in range(4)}
MAPS_T = {f"feat{k}": RNG.normal(size=(B, 8 // 2 ** k, 8 // 2 ** k, 3 + k)) for k in range(4)}
S_EMB, T_EMB = RNG.normal(size=(B, 6)), RNG.normal(size=(B, 7))


def outputs(side):
    logits, maps, embedding = (S_LOGITS, MAPS_S, S_EMB) if side == "s" else (T_LOGITS, MAPS_T, T_EMB)
    return {"logits": logits.astype("float32"), "embedding": embedding.astype("float32"),
            **{k: v.astype("float32") for k, v in maps.items()}}


def value(objective, epoch=1.0, **inputs):
    s, t = outputs("s"), outputs("t")
    objective.setup({k: (None,) + v.shape[1:] for k, v in s.items()},
                    {k: (None,) + v.shape[1:] for k, v in t.items()}, {"num_train": 40, "num_classes": C})
    return float(to_numpy(objective.compute(s, t, Y, {"epoch": epoch, "training": True, **inputs})))


def ref_regressed_hint(objective, k):
    """FitNet with equal map sizes: 1x1 conv (+ bias) -> BN with batch statistics -> ReLU, then MSE."""
    conv, bn = objective.regressor.get_layer("regressor_conv"), objective.regressor.get_layer("regressor_bn")
    h = np.float64(MAPS_S[f"feat{k}"]) @ to_numpy(conv.kernel)[0, 0] + to_numpy(conv.bias)
    h = (h - h.mean(axis=(0, 1, 2))) / np.sqrt(h.var(axis=(0, 1, 2)) + bn.epsilon)
    return np.mean((np.maximum(h, 0) - MAPS_T[f"feat{k}"]) ** 2)


def dcd_reference(dcd, log_scale, bias, max_scale, weight):
    (ws, bs), (wt, bt) = [(to_numpy(layer.kernel), to_numpy(layer.bias)) for layer in (dcd.embed_student, dcd.embed_teacher)]
    return ref_dcd(S_EMB @ ws + bs, T_EMB @ wt + bt, log_scale, bias, max_scale, weight)


def test_kd_temperature():
    assert value(objectives.KD(temperature=2.0)) == pytest.approx(ref_kd(S_LOGITS, T_LOGITS, 2.0), rel=1e-5)
    assert value(objectives.KD()) == pytest.approx(ref_kd(S_LOGITS, T_LOGITS, 4.0), rel=1e-5)
    assert abs(ref_kd(S_LOGITS, T_LOGITS, 2.0) - ref_kd(S_LOGITS, T_LOGITS, 4.0)) > 0.1


@pytest.mark.parametrize("alpha, beta, temperature, warmup, epoch", [
    (1.0, 8.0, 4.0, 20, 5.0), (0.5, 2.0, 2.0, 4, 1.0), (2.0, 0.0, 3.0, 0, 1.0), (1.0, 6.0, 4.0, 4, 9.0)])
def test_dkd_options_and_warmup(alpha, beta, temperature, warmup, epoch):
    dkd = objectives.DKD(alpha=alpha, beta=beta, temperature=temperature, warmup_epochs=warmup)
    ramp = min(epoch / warmup, 1.0) if warmup else 1.0
    expected = ramp * ref_dkd(S_LOGITS, T_LOGITS, Y, alpha, beta, temperature)
    assert value(dkd, epoch=epoch) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("distance_weight, angle_weight", [(25.0, 50.0), (3.0, 0.0), (0.0, 2.0)])
def test_rkd_weights(distance_weight, angle_weight):
    expected = distance_weight * ref_rkd_distance(S_EMB, T_EMB) + angle_weight * ref_rkd_angle(S_EMB, T_EMB)
    got = value(objectives.RKD(distance_weight=distance_weight, angle_weight=angle_weight))
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("p, stages", [(2, None), (4, (2,)), (2, (1, 3)), (1, (0, 1, 2, 3))])
def test_at_power_and_stages(p, stages):
    used = stages or (1, 2, 3)  # default: every stage after the stem
    expected = ref_at([MAPS_S[f"feat{k}"] for k in used], [MAPS_T[f"feat{k}"] for k in used], p)
    assert value(objectives.AT(p=p, stages=stages)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_fitnet_hint_stage(stage):
    fitnet = objectives.FitNet(hint_stage=stage)
    got = value(fitnet)
    assert fitnet.regressor.input_shape[1:] == MAPS_S[f"feat{stage}"].shape[1:]
    assert got == pytest.approx(ref_regressed_hint(fitnet, stage), rel=1e-4)


@pytest.mark.parametrize("temperature, momentum", [(0.07, 0.5), (0.5, 0.9)])
def test_crd_temperature_and_momentum(temperature, momentum):
    keras.utils.set_random_seed(0)
    crd = objectives.CRD(feature_dim=8, num_negatives=4, temperature=temperature, momentum=momentum)
    index = np.array([3, 10, 17, 24, 31, 38])
    negatives = RNG.choice(40, size=(B, 4))
    inputs = {"index": index, "contrast_index": negatives}
    s, t = outputs("s"), outputs("t")
    crd.setup({"embedding": (None, 6)}, {"embedding": (None, 7)}, {"num_train": 40})
    mem_s, mem_t = to_numpy(crd.memory_student).copy(), to_numpy(crd.memory_teacher).copy()
    got = float(to_numpy(crd.compute(s, t, Y, {"training": True, **inputs})))
    (ws, bs), (wt, bt) = [(to_numpy(layer.kernel), to_numpy(layer.bias)) for layer in (crd.embed_student, crd.embed_teacher)]
    h_s, h_t = ref_normalize(S_EMB @ ws + bs), ref_normalize(T_EMB @ wt + bt)
    z_s = ref_first_z(h_s, mem_t, index, negatives, 40, temperature)
    z_t = ref_first_z(h_t, mem_s, index, negatives, 40, temperature)
    expected = (ref_nce_side(h_s, mem_t, index, negatives, z_s, 40, temperature)
                + ref_nce_side(h_t, mem_s, index, negatives, z_t, 40, temperature))
    assert got == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(to_numpy(crd.memory_student)[index], ref_momentum(mem_s[index], h_s, momentum), atol=2e-5)
    np.testing.assert_allclose(to_numpy(crd.memory_teacher)[index], ref_momentum(mem_t[index], h_t, momentum), atol=2e-5)


@pytest.mark.parametrize("options, log_scale, bias, max_scale, weight", [
    ({}, 1.0, 0.0, 10.0, 0.5),
    ({"init_log_scale": 0.5, "init_bias": 0.3, "max_scale": 1.2, "consistency_weight": 2.0}, 0.5, 0.3, 1.2, 2.0),
    ({"learnable": False, "consistency_weight": 0.0}, 1.0, 0.0, 10.0, 0.0),
])
def test_dcd_options(options, log_scale, bias, max_scale, weight):
    dcd = objectives.DCD(feature_dim=8, **options)
    got = value(dcd)
    assert got == pytest.approx(dcd_reference(dcd, log_scale, bias, max_scale, weight), rel=1e-4)
    assert dcd.log_scale.trainable == dcd.bias.trainable == options.get("learnable", True)


# ---------------------------------------------------------------- the Distiller's total

SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def distiller():
    keras.utils.set_random_seed(3)
    return Distiller(backbones.get("wrn_16_1", num_classes=C, input_shape=SHAPE),
                     backbones.get("resnet8", num_classes=C, input_shape=SHAPE),
                     [("kd", 0.7), (objectives.RKD(distance_weight=2.0, angle_weight=3.0, name="rkd"), 0.25),
                      (objectives.AT(p=2, name="at"), 40.0)], ce_weight=0.35)


def test_distiller_total_is_the_weighted_sum_and_agreement_is_measured(distiller):
    shapes = {side: {k: v.shape for k, v in getattr(distiller, side).output.items()} for side in ("student", "teacher")}
    crafted = {side: {k: RNG.normal(size=(B,) + tuple(v[1:])).astype("float32") * (3 if k == "logits" else 1)
                      for k, v in shapes[side].items()} for side in shapes}
    # Student and teacher agree on rows 0, 2, 5 only.
    top = np.array([0, 1, 2, 3, 4, 0])
    for side, classes in (("student", top), ("teacher", np.where(np.isin(np.arange(B), [0, 2, 5]), top, (top + 1) % C))):
        crafted[side]["logits"][np.arange(B), classes] += 20.0
    s, t = crafted["student"], crafted["teacher"]
    at_maps = distiller.objective_layers[2]
    assert at_maps.student_maps == ("feat1", "feat2", "feat3") and at_maps.teacher_maps == ("stage1", "stage2", "stage3")
    expected = {"ce": ref_ce(s["logits"], Y), "kd_loss": ref_kd(s["logits"], t["logits"], 4.0),
                "rkd_loss": 2.0 * ref_rkd_distance(s["embedding"], t["embedding"])
                + 3.0 * ref_rkd_angle(s["embedding"], t["embedding"]),
                "at_loss": ref_at([s[f"feat{k}"] for k in (1, 2, 3)], [t[f"stage{k}"] for k in (1, 2, 3)], 2)}
    for tracker in distiller.metrics:
        tracker.reset_state()
    total = distiller.compute_loss(None, Y, crafted, training=True)
    weighted = (0.35 * expected["ce"] + 0.7 * expected["kd_loss"] + 0.25 * expected["rkd_loss"]
                + 40.0 * expected["at_loss"])
    assert float(to_numpy(total)) == pytest.approx(weighted, rel=1e-4)
    results = {m.name: float(to_numpy(m.result())) for m in distiller.metrics}
    for name, reference in expected.items():
        assert results[name] == pytest.approx(reference, rel=1e-4), name
    assert results["agreement"] == pytest.approx(0.5)
    assert results["accuracy"] == pytest.approx(np.mean(top == Y))
    # every weight counts: another set of weights gives its own weighted sum
    assert abs(weighted - (expected["ce"] + sum(v for k, v in expected.items() if k != "ce"))) > 1e-2


def test_options_reach_the_objectives_from_an_objectives_string():
    (at, weight), (kd, kd_weight), (dcd, _) = objectives.parse(
        "at(stages=(1,2);maps='feat'):1000,kd:0.5,dcd(learnable=False)")
    assert (at.stages, at.maps, weight) == ((1, 2), "feat", 1000.0) and (kd, kd_weight) == ("kd", 0.5)
    assert dcd.learnable is False
    with pytest.raises(ValueError, match="is not key=value"):  # the options' ")" is missing
        objectives.parse("at(stages=(1,2):1")
