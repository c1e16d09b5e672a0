"""PCKD and MSDCRD: losses against float64 NumPy references, views in the Distiller, training."""

import math

import keras
import numpy as np
import pytest

from helpers import gradients, jitted, to_numpy
from keras_icckd import backbones, losses, objectives
from keras_icckd.models import Distiller

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- float64 references

def ref_normalize(x):
    x = np.float64(x)
    return x / np.sqrt((x ** 2).sum(axis=-1, keepdims=True))


def ref_log_softmax(z):
    z = np.float64(z) - np.max(z, axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ref_preview(ce, epoch, growth=1.005):
    d = np.float64(ce) / np.mean(ce)
    return np.array([1.0 if di <= growth ** epoch else math.exp(-di * di) for di in d])


def ref_supcon(features, labels, weights, tau=4.0, base=0.07):
    f = ref_normalize(features)
    total = 0.0
    for i in range(len(f)):
        others = [a for a in range(len(f)) if a != i]
        norm = math.log(sum(math.exp(f[i] @ f[a] / tau) for a in others))
        positives = [p for p in others if labels[p] == labels[i]]
        if positives:
            mean = sum(f[i] @ f[p] / tau - norm for p in positives) / len(positives)
            total += weights[i] * -(tau / base) * mean
    return total / len(f)


def ref_kd(zs, zt, weights, t=4.0):
    ls, lt = ref_log_softmax(np.float64(zs) / t), ref_log_softmax(np.float64(zt) / t)
    return t * t * np.mean(weights * (np.exp(lt) * (lt - ls)).sum(-1))


def ref_ce(labels, logits):
    return -ref_log_softmax(logits)[np.arange(len(labels)), labels]


def ref_fa(p, t):
    return np.mean(2 - 2 * (ref_normalize(p) * ref_normalize(t)).sum(-1))


def ref_grid_pool(maps, k):
    b, h, w, c = maps.shape
    cells = []
    for i in range(k):
        for j in range(k):
            rows = slice(math.floor(i * h / k), math.ceil((i + 1) * h / k))
            cols = slice(math.floor(j * w / k), math.ceil((j + 1) * w / k))
            cells.append(np.float64(maps)[:, rows, cols, :].mean(axis=(1, 2)))
    return np.stack(cells, axis=1)


def ref_info_nce(a, t, tau):
    """Mean over rows i of -log softmax_j(<a_i, t_j> / tau)[i], rows normalised."""
    a, t = ref_normalize(a), ref_normalize(t)
    return -np.mean(np.diag(ref_log_softmax(a @ t.T / tau)))


def ref_msdcrd_scale(s_cells, t_cells, tau):
    sample = np.mean([ref_info_nce(s_cells[:, g], t_cells[:, g], tau) for g in range(s_cells.shape[1])])
    feature = np.mean([ref_info_nce(s_cells[:, g].T, t_cells[:, g].T, tau) for g in range(s_cells.shape[1])])
    return sample + feature


# ---------------------------------------------------------------- PCKD pieces

def test_rotations_match_numpy_rot90():
    images = RNG.normal(size=(2, 5, 5, 3)).astype("float32")
    out = to_numpy(losses.rotations(images))
    assert out.shape == (8, 5, 5, 3)
    for k in range(4):
        np.testing.assert_array_equal(out[2 * k:2 * k + 2], np.rot90(images, k, axes=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        losses.rotations(np.zeros((1, 4, 6, 3), "float32"))


def test_preview_weights_against_hand_values():
    ce = np.array([0.5, 1.0, 1.5, 3.0], "float32")  # mean 1.5 -> difficulty 1/3, 2/3, 1, 2
    got = to_numpy(losses.preview_weights(ce, epoch=0.0))  # threshold 1
    np.testing.assert_allclose(got, [1, 1, 1, math.exp(-4)], rtol=1e-6)
    # difficulty 1.02 passes once 1.005^epoch >= 1.02, i.e. from epoch 4 on
    ce = np.array([1.02, 0.98], "float32")
    assert to_numpy(losses.preview_weights(ce, epoch=3.0))[0] == pytest.approx(math.exp(-1.02 ** 2), rel=1e-5)
    assert to_numpy(losses.preview_weights(ce, epoch=4.0))[0] == 1.0
    random_ce = RNG.uniform(0.1, 4, size=16).astype("float32")
    np.testing.assert_allclose(to_numpy(losses.preview_weights(random_ce, 7.0)), ref_preview(random_ce, 7),
                               rtol=1e-5)


def test_preview_weights_give_no_gradient():
    grad, = gradients(lambda ce: losses.preview_weights(ce, 1.0), RNG.uniform(0.1, 4, 8))
    assert not grad.any()


def test_supervised_contrastive_against_numpy():
    features = RNG.normal(size=(10, 6))
    labels = np.array([0, 1, 0, 2, 1, 0, 3, 2, 1, 1])  # class 3 has one row: no positives -> 0
    weights = RNG.uniform(0, 1, size=10)
    got = float(to_numpy(losses.supervised_contrastive(features.astype("float32"), labels,
                                                       weights.astype("float32"))))
    assert got == pytest.approx(ref_supcon(features, labels, weights), rel=1e-4)
    unweighted = float(to_numpy(losses.supervised_contrastive(features.astype("float32"), labels,
                                                              temperature=0.5, base_temperature=0.5)))
    assert unweighted == pytest.approx(ref_supcon(features, labels, np.ones(10), 0.5, 0.5), rel=1e-4)


def test_supervised_contrastive_no_positive_is_zero_and_jit_matches():
    features = RNG.normal(size=(4, 3)).astype("float32")
    assert float(to_numpy(losses.supervised_contrastive(features, np.arange(4)))) == 0.0
    labels = np.array([0, 0, 1, 1])
    eager = to_numpy(losses.supervised_contrastive(features, labels))
    compiled = to_numpy(jitted(lambda f: losses.supervised_contrastive(f, labels))(features))
    np.testing.assert_allclose(eager, compiled, rtol=1e-5)


def test_weighted_kd_against_numpy_and_unweighted_default():
    zs, zt = RNG.normal(size=(6, 5)) * 3, RNG.normal(size=(6, 5)) * 3
    w = RNG.uniform(0, 1, 6)
    got = float(to_numpy(losses.kd(zs.astype("float32"), zt.astype("float32"), 4.0, weights=w.astype("float32"))))
    assert got == pytest.approx(ref_kd(zs, zt, w), rel=1e-5)
    plain = float(to_numpy(losses.kd(zs.astype("float32"), zt.astype("float32"), 4.0)))
    assert plain == pytest.approx(ref_kd(zs, zt, np.ones(6)), rel=1e-5)


def test_category_alignment_and_feature_alignment():
    ws, bs, wt, bt = RNG.normal(size=(4, 3)), RNG.normal(size=3), RNG.normal(size=(4, 3)), RNG.normal(size=3)
    expected = np.mean((np.c_[ws.T, bs] - np.c_[wt.T, bt]) ** 2)
    got = to_numpy(losses.category_alignment(*[a.astype("float32") for a in (ws, bs, wt, bt)]))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    mismatch = losses.category_alignment(ws.astype("float32"), bs.astype("float32"),
                                         np.zeros((5, 3), "float32"), bt.astype("float32"))
    assert float(to_numpy(mismatch)) == 0.0
    p, t = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    assert float(to_numpy(losses.feature_alignment(p.astype("float32"), t.astype("float32")))) == \
        pytest.approx(ref_fa(p, t), rel=1e-5)
    assert float(to_numpy(losses.feature_alignment(p.astype("float32"), 3 * p.astype("float32")))) == \
        pytest.approx(0.0, abs=1e-6)


def pckd_case(d_s=6, d_t=8, classes=3, batch=4, views=4):
    pckd = objectives.PCKD(name="pckd")
    pckd.setup({"logits": (None, classes), "embedding": (None, d_s)},
               {"logits": (None, classes), "embedding": (None, d_t)})
    n = batch * views
    student = {"logits": RNG.normal(size=(n, classes)).astype("float32") * 2,
               "embedding": RNG.normal(size=(n, d_s)).astype("float32")}
    teacher = {"logits": RNG.normal(size=(n, classes)).astype("float32") * 2,
               "embedding": RNG.normal(size=(n, d_t)).astype("float32")}
    labels = RNG.integers(0, classes, size=batch)
    classifiers = {"student_classifier": (RNG.normal(size=(d_s, classes)).astype("float32"),
                                          RNG.normal(size=classes).astype("float32")),
                   "teacher_classifier": (RNG.normal(size=(d_t, classes)).astype("float32"),
                                          RNG.normal(size=classes).astype("float32"))}
    return pckd, student, teacher, labels, classifiers


def test_pckd_gradients_reach_student_and_heads_only():
    pckd, student, teacher, labels, classifiers = pckd_case(d_t=6)

    def loss(s_logits, s_embed, t_logits, t_embed, ws):
        inputs = {"epoch": 1.0, "training": True, "student_classifier": (ws, classifiers["student_classifier"][1]),
                  "teacher_classifier": classifiers["teacher_classifier"]}
        return pckd.compute({"logits": s_logits, "embedding": s_embed},
                            {"logits": t_logits, "embedding": t_embed}, labels, inputs)

    grads = gradients(loss, student["logits"], student["embedding"], teacher["logits"], teacher["embedding"],
                      classifiers["student_classifier"][0])
    assert all(np.isfinite(g).all() for g in grads)
    assert np.abs(grads[1]).max() > 0 and np.abs(grads[4]).max() > 0
    # KD's weight is 0 by default (the official command): the logits' gradient comes from CE in the
    # Distiller; the preview weights are constants in L_CC (test_reference_parity pins both paths).
    assert not grads[0].any()
    assert not grads[2].any() and not grads[3].any()


def test_pckd_option_errors():
    with pytest.raises(ValueError, match="fa_weight"):
        objectives.PCKD(fa_weight=-1)
    with pytest.raises(ValueError, match="growth"):
        objectives.PCKD(growth=0)
    assert isinstance(objectives.parse("pckd(kd_weight=0.5):1")[0][0], objectives.PCKD)


# ---------------------------------------------------------------- MSDCRD

@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_grid_pool_matches_adaptive_pooling(size):
    maps = RNG.normal(size=(2, 5, 6, 3)).astype("float32")  # 5 and 6 are not multiples of 2, 3, 4
    np.testing.assert_allclose(to_numpy(losses.grid_pool(maps, size)), ref_grid_pool(maps, size),
                               rtol=1e-5, atol=1e-6)


def test_msdcrd_scale_against_numpy():
    s, t = RNG.normal(size=(6, 4, 5)), RNG.normal(size=(6, 4, 5))
    got = float(to_numpy(losses.msdcrd(s.astype("float32"), t.astype("float32"), 0.1)))
    assert got == pytest.approx(ref_msdcrd_scale(s, t, 0.1), rel=1e-4)
    # one sample, one channel per cell: both softmaxes have a single entry -> 0
    one = RNG.normal(size=(1, 3, 1)).astype("float32")
    assert float(to_numpy(losses.msdcrd(one, one, 0.1))) == pytest.approx(0.0, abs=1e-6)


def msdcrd_case():
    obj = objectives.MSDCRD(name="msdcrd")
    obj.setup({"feat0": (None, 8, 8, 2), "feat1": (None, 4, 4, 3), "logits": (None, 3)},
              {"feat0": (None, 8, 8, 4), "feat1": (None, 8, 8, 5), "feat2": (None, 2, 2, 6), "logits": (None, 3)})
    student = {"feat1": RNG.normal(size=(4, 4, 4, 3)).astype("float32")}
    teacher = {"feat2": np.abs(RNG.normal(size=(4, 2, 2, 6))).astype("float32")}
    return obj, student, teacher


def test_msdcrd_objective_uses_last_stages_and_matches_numpy():
    obj, student, teacher = msdcrd_case()
    assert (obj.student_key, obj.teacher_key) == ("feat1", "feat2")
    kernel, bias = to_numpy(obj.project.kernel), to_numpy(obj.project.bias)
    expected = np.mean([ref_msdcrd_scale(ref_grid_pool(student["feat1"], k) @ kernel + bias,
                                         ref_grid_pool(teacher["feat2"], k), 0.1) for k in (1, 2, 4)])
    got = obj.compute(student, teacher, np.arange(4), {})
    assert float(to_numpy(got)) == pytest.approx(expected, rel=1e-4)
    compiled = jitted(lambda s, t: obj.compute({"feat1": s}, {"feat2": t}, np.arange(4), {}))
    assert float(to_numpy(compiled(student["feat1"], teacher["feat2"]))) == pytest.approx(expected, rel=1e-4)


def test_msdcrd_gradients_and_errors():
    obj, student, teacher = msdcrd_case()
    gs, gt = gradients(lambda s, t: obj.compute({"feat1": s}, {"feat2": t}, np.arange(4), {}),
                       student["feat1"], teacher["feat2"])
    assert np.isfinite(gs).all() and np.abs(gs).max() > 0 and not gt.any()
    with pytest.raises(ValueError, match="scales"):
        objectives.MSDCRD(scales=(0, 2))
    with pytest.raises(ValueError, match="temperature"):
        objectives.MSDCRD(temperature=0)
    with pytest.raises(ValueError, match="H, W, C"):
        objectives.MSDCRD(feature="embedding").setup({"embedding": (None, 4)}, {"embedding": (None, 4)})
    assert objectives.MSDCRD.experimental
    assert "EXPERIMENTAL" in objectives.MSDCRD.__doc__


# ---------------------------------------------------------------- PCKD inside the Distiller

SHAPE, CLASSES = (8, 8, 3), 3


def pckd_distiller(spec="pckd:1", ce_weight=1.0):
    keras.utils.set_random_seed(0)
    return Distiller(backbones.get("resnet14", num_classes=CLASSES, input_shape=SHAPE),
                     backbones.get("resnet8", num_classes=CLASSES, input_shape=SHAPE), spec, ce_weight=ce_weight)


def test_distiller_runs_each_network_once_on_the_four_views():
    distiller = pckd_distiller()
    seen = {"student": [], "teacher": []}
    for role in seen:
        model = getattr(distiller, role)
        original = model.call

        def recorded(images, *args, _role=role, _original=original, **kwargs):
            seen[_role].append(to_numpy(images))
            return _original(images, *args, **kwargs)

        model.call = recorded
    images = RNG.normal(size=(2,) + SHAPE).astype("float32")
    distiller(images, training=True)
    assert [len(v) for v in seen.values()] == [1, 1]
    for batch in (seen["student"][0], seen["teacher"][0]):
        np.testing.assert_allclose(batch, to_numpy(losses.rotations(images)))


def test_distiller_ce_and_metrics_use_the_original_views():
    distiller = pckd_distiller("pckd:0")
    images = RNG.normal(size=(4,) + SHAPE).astype("float32")
    labels = np.array([0, 1, 2, 0])
    loss = distiller.compute_loss(images, labels, distiller(images, training=False), training=False)
    logits = to_numpy(distiller.student(images, training=False)["logits"])
    assert float(to_numpy(loss)) == pytest.approx(np.mean(ref_ce(labels, logits)), rel=1e-4)


def test_pckd_training_moves_heads_and_aligns_classifiers():
    # L_CA alone (other weights 0, no CE): the student's classifier must move towards the teacher's
    # (resnet8 and resnet14 both have 64-d embeddings).
    distiller = pckd_distiller([(objectives.PCKD(kd_weight=0, cc_weight=0, fa_weight=0, name="pckd"), 1.0)], 0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(20.0))

    def gap():
        s, t = distiller.student.classifier, distiller.teacher.classifier
        return np.mean((to_numpy(s.kernel) - to_numpy(t.kernel)) ** 2)

    images = RNG.normal(size=(8,) + SHAPE).astype("float32")
    before = gap()
    distiller.fit(images, np.arange(8) % CLASSES, batch_size=4, epochs=3, verbose=0)
    # 6 plain SGD steps on mean((W_s - W_t)^2) over C (d + 1) = 195 entries: each step scales
    # W_s - W_t by 1 - 2 lr / 195.
    assert gap() == pytest.approx(before * (1 - 2 * 20.0 / 195) ** 12, rel=1e-3)
    # the full objective trains its own heads
    distiller = pckd_distiller()
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    pckd = distiller.objective_layers[0]
    heads = [to_numpy(v).copy() for v in (pckd.cc_student.kernel, pckd.cc_teacher.kernel,
                                          pckd.projector.layers[0].kernel)]
    history = distiller.fit(images, np.arange(8) % CLASSES, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["pckd_loss"]).all()
    for before, variable in zip(heads, (pckd.cc_student.kernel, pckd.cc_teacher.kernel,
                                        pckd.projector.layers[0].kernel)):
        assert np.abs(to_numpy(variable) - before).max() > 0


def test_only_one_multi_view_objective():
    with pytest.raises(ValueError, match="at most one objective"):
        pckd_distiller([(objectives.PCKD(name="pckd"), 1.0), (objectives.PCKD(name="pckd2"), 1.0)])
