"""CRD and DCD: losses against NumPy references, memory and Z state, negatives, training."""

import math

import keras
import numpy as np
import pytest

from helpers import gradients, jitted, to_numpy, unit_rows
from keras_icckd import backbones, data, losses
from keras_icckd.models import Distiller
from keras_icckd.objectives import CRD, DCD

SHAPE, CLASSES, PER_CLASS, BATCH = (16, 16, 3), 4, 16, 16
N = CLASSES * PER_CLASS
EPS = 1e-7


# ---------------------------------------------------------------- float64 references

def ref_normalize(x):
    x = np.float64(x)
    return x / np.sqrt((x ** 2).sum(axis=-1, keepdims=True))


def ref_nce_side(anchors, memory, index, negatives, z, num_data, tau):
    """-(1/B) sum_i [log(P_i0/(P_i0 + K/N + eps)) + sum_k log((K/N)/(P_ik + K/N + eps))]."""
    total = 0.0
    for i, h in enumerate(np.float64(anchors)):
        rows = [index[i]] + list(negatives[i])
        k = len(rows) - 1
        noise = k / num_data
        p = [math.exp(float(np.float64(memory[r]) @ h) / tau) / z for r in rows]
        total += math.log(p[0] / (p[0] + noise + EPS))
        total += sum(math.log(noise / (pk + noise + EPS)) for pk in p[1:])
    return -total / len(anchors)


def ref_first_z(anchors, memory, index, negatives, num_data, tau):
    scores = [math.exp(float(np.float64(memory[r]) @ h) / tau)
              for i, h in enumerate(np.float64(anchors)) for r in [index[i]] + list(negatives[i])]
    return num_data * sum(scores) / len(scores)


def ref_momentum(rows, h, momentum):
    return ref_normalize(momentum * np.float64(rows) + (1 - momentum) * np.float64(h))


def ref_dcd(s, t, log_scale, bias, max_scale=10.0, w=0.5):
    s, t = ref_normalize(s), ref_normalize(t)
    n = len(s)
    scale = min(math.exp(log_scale), max_scale)
    z = [[scale * float(s[i] @ t[j]) + bias for j in range(n)] for i in range(n)]
    ce = kl = 0.0
    for i in range(n):
        row = [math.exp(z[i][j]) for j in range(n)]  # student i over the teachers
        p = [r / sum(row) for r in row]
        col = [math.exp(z[j][i]) for j in range(n)]  # teacher i over the students
        q = [c / sum(col) for c in col]
        ce -= math.log(p[i])
        kl += sum(qj * math.log(qj / pj) for qj, pj in zip(q, p))
    return (ce + w * kl) / n


def numpy_heads(objective):
    return [(to_numpy(layer.kernel).astype(np.float64), to_numpy(layer.bias).astype(np.float64))
            for layer in (objective.embed_student, objective.embed_teacher)]


def other_class_negatives(rng, labels, index, k):
    return np.array([rng.choice(np.flatnonzero(labels != labels[i]), k) for i in index], np.int32)


# ---------------------------------------------------------------- CRD, eager

D_S, D_T, FEAT, K = 6, 10, 8, 5
LABELS = np.arange(N) % CLASSES


def crd_case(seed=0, batch=4):
    rng = np.random.default_rng(seed)
    index = rng.choice(N, batch, replace=False).astype(np.int32)
    inputs = {"index": index, "contrast_index": other_class_negatives(rng, LABELS, index, K)}
    student = {"embedding": rng.normal(size=(batch, D_S)).astype("float32")}
    teacher = {"embedding": rng.normal(size=(batch, D_T)).astype("float32")}
    return student, teacher, inputs


def make_crd(**kwargs):
    keras.utils.set_random_seed(0)
    crd = CRD(feature_dim=FEAT, num_negatives=K, **kwargs)
    crd.setup({"embedding": (None, D_S)}, {"embedding": (None, D_T)}, {"num_train": N, "num_classes": 4})
    return crd


def expected_embeddings(crd, student, teacher):
    (ws, bs), (wt, bt) = numpy_heads(crd)
    return (ref_normalize(np.float64(student["embedding"]) @ ws + bs),
            ref_normalize(np.float64(teacher["embedding"]) @ wt + bt))


def memories(crd):
    return to_numpy(crd.memory_student).copy(), to_numpy(crd.memory_teacher).copy()


def test_crd_loss_matches_numpy_with_fixed_memory_and_z():
    crd = make_crd(temperature=0.1)
    rng = np.random.default_rng(5)
    mem_s, mem_t = unit_rows(rng, N, FEAT), unit_rows(rng, N, FEAT)
    crd.memory_student.assign(mem_s)
    crd.memory_teacher.assign(mem_t)
    crd.normalizer_student.assign(3.5)
    crd.normalizer_teacher.assign(7.25)
    crd.normalizer_ready.assign(1.0)
    student, teacher, inputs = crd_case(1)
    loss = to_numpy(crd.compute(student, teacher, LABELS[inputs["index"]], {**inputs, "training": True}))
    h_s, h_t = expected_embeddings(crd, student, teacher)
    idx, neg = inputs["index"], inputs["contrast_index"]
    expected = (ref_nce_side(h_s, mem_t, idx, neg, 3.5, N, 0.1)
                + ref_nce_side(h_t, mem_s, idx, neg, 7.25, N, 0.1))
    np.testing.assert_allclose(loss, expected, rtol=2e-5)
    # The pure two-sided loss gives the same value from the gathered rows.
    rows = np.concatenate([idx[:, None], neg], axis=1)
    pure = losses.crd(h_s.astype("float32"), h_t.astype("float32"), mem_s, mem_t, rows, 3.5, 7.25,
                      temperature=0.1)
    np.testing.assert_allclose(to_numpy(pure), expected, rtol=2e-5)
    # Z stays as set; the batch's rows follow the momentum rule, the other rows are untouched.
    assert float(to_numpy(crd.normalizer_student)) == 3.5 and float(to_numpy(crd.normalizer_teacher)) == 7.25
    new_s, new_t = memories(crd)
    np.testing.assert_allclose(new_s[idx], ref_momentum(mem_s[idx], h_s, 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_t[idx], ref_momentum(mem_t[idx], h_t, 0.5), rtol=1e-5, atol=1e-6)
    rest = np.setdiff1d(np.arange(N), idx)
    np.testing.assert_array_equal(new_s[rest], mem_s[rest])
    np.testing.assert_array_equal(new_t[rest], mem_t[rest])


def test_crd_fixes_z_on_the_first_batch_only():
    crd = make_crd(momentum=0.7)
    assert float(to_numpy(crd.normalizer_ready)) == 0.0
    mem_s, mem_t = memories(crd)
    bound = 1 / math.sqrt(FEAT / 3)  # the authors' uniform initialisation
    assert np.abs(mem_s).max() <= bound and np.abs(mem_t).max() <= bound and mem_s.std() > bound / 3
    assert not np.array_equal(mem_s, mem_t)
    student, teacher, inputs = crd_case(2)
    idx, neg = inputs["index"], inputs["contrast_index"]
    loss = to_numpy(crd.compute(student, teacher, None, inputs))
    h_s, h_t = expected_embeddings(crd, student, teacher)
    z_s = ref_first_z(h_s, mem_t, idx, neg, N, 0.07)
    z_t = ref_first_z(h_t, mem_s, idx, neg, N, 0.07)
    np.testing.assert_allclose(to_numpy(crd.normalizer_student), z_s, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(crd.normalizer_teacher), z_t, rtol=1e-5)
    assert float(to_numpy(crd.normalizer_ready)) == 1.0
    np.testing.assert_allclose(loss, ref_nce_side(h_s, mem_t, idx, neg, z_s, N, 0.07)
                               + ref_nce_side(h_t, mem_s, idx, neg, z_t, N, 0.07), rtol=2e-5)
    new_s, _ = memories(crd)
    np.testing.assert_allclose(new_s[idx], ref_momentum(mem_s[idx], h_s, 0.7), rtol=1e-5, atol=1e-6)
    # A second batch uses (and keeps) the first batch's Z.
    z_before = to_numpy(crd.normalizer_student), to_numpy(crd.normalizer_teacher)
    crd.compute(*crd_case(3)[:2], None, crd_case(3)[2])
    assert (to_numpy(crd.normalizer_student), to_numpy(crd.normalizer_teacher)) == z_before


def test_crd_changes_nothing_outside_training():
    crd = make_crd()
    before = memories(crd)
    student, teacher, inputs = crd_case(4)
    loss = to_numpy(crd.compute(student, teacher, None, {**inputs, "training": False}))
    assert np.isfinite(loss) and loss > 0
    assert float(to_numpy(crd.normalizer_ready)) == 0.0
    for a, b in zip(before, memories(crd)):
        np.testing.assert_array_equal(a, b)
    # Evaluation batches carry no sample indices: the loss is 0 there.
    assert float(to_numpy(crd.compute(student, teacher, None, {"training": False}))) == 0.0


def test_crd_gradients_reach_the_heads_and_student_only():
    crd = make_crd()
    student, teacher, inputs = crd_case(6)
    idx, neg = inputs["index"], inputs["contrast_index"]
    rows = np.concatenate([idx[:, None], neg], axis=1)
    mem_s, mem_t = memories(crd)
    h_s, h_t = expected_embeddings(crd, student, teacher)
    g = gradients(lambda s, t, ms, mt: losses.crd(s, t, ms, mt, rows, 2.0, 3.0), h_s, h_t, mem_s, mem_t)
    assert np.isfinite(g[0]).all() and np.abs(g[0]).sum() > 0
    assert np.isfinite(g[1]).all() and np.abs(g[1]).sum() > 0  # the teacher-side head trains
    np.testing.assert_array_equal(g[2], 0.0)  # the memory is a constant
    np.testing.assert_array_equal(g[3], 0.0)
    fn = lambda s, t: losses.crd(s, t, mem_s, mem_t, rows, 2.0, 3.0)  # noqa: E731
    args = [keras.ops.convert_to_tensor(np.float32(a)) for a in (h_s, h_t)]
    np.testing.assert_allclose(to_numpy(jitted(fn)(*args)), to_numpy(fn(*args)), rtol=1e-5)


def test_crd_needs_num_train_and_caps_negatives():
    with pytest.raises(ValueError, match="num_train"):
        CRD().setup({"embedding": (None, 4)}, {"embedding": (None, 4)}, {"num_train": None})
    with pytest.raises(ValueError, match="'pooled' is not an output of the student"):
        CRD(feature="pooled").setup({"embedding": (None, 4)}, {"embedding": (None, 4)}, {"num_train": 9})
    with pytest.raises(ValueError, match="temperature=0"):
        CRD(temperature=0)
    crd = CRD()
    crd.setup({"embedding": (None, 4)}, {"embedding": (None, 4)}, {"num_train": 9})
    assert crd.negatives == 8 and crd.data_options() == {"with_index": True, "contrast_negatives": 8}
    assert CRD().num_negatives == 16384 and CRD().temperature == 0.07 and CRD().momentum == 0.5


# ---------------------------------------------------------------- the negatives of the pipeline

def negatives_dataset(seed=0, batch_size=8, k=7, epochs=2, labels=LABELS):
    images = np.zeros((len(labels), 4, 4, 3), np.uint8)
    return list(data.make_train_dataset(images, labels, batch_size, seed=seed, mean=(0.5,) * 3,
                                        std=(0.25,) * 3, epochs=epochs, with_index=True,
                                        contrast_negatives=k).as_numpy_iterator())


def test_contrast_index_shape_classes_and_determinism():
    labels = np.random.default_rng(0).permutation(LABELS)  # classes not in blocks
    out = negatives_dataset(labels=labels)
    assert len(out) == 2 * (N // 8)
    for x, y in out:
        assert sorted(x) == ["contrast_index", "image", "index"]
        assert x["contrast_index"].shape == (8, 7) and x["contrast_index"].dtype == np.int32
        assert ((x["contrast_index"] >= 0) & (x["contrast_index"] < N)).all()
        assert (labels[x["contrast_index"]] != y[:, None]).all()  # never the anchor's class
    again, other = negatives_dataset(labels=labels), negatives_dataset(seed=1, labels=labels)
    for (xa, _), (xb, _) in zip(out, again):
        np.testing.assert_array_equal(xa["contrast_index"], xb["contrast_index"])
    assert any(not np.array_equal(xa["contrast_index"], xo["contrast_index"])
               for (xa, _), (xo, _) in zip(out, other))


def test_contrast_index_depends_on_seed_epoch_and_index_only():
    def by_sample(batches):
        table = {}
        for e in range(2):
            for x, _ in batches[e * len(batches) // 2:(e + 1) * len(batches) // 2]:
                table.update({(e, int(i)): tuple(row) for i, row in zip(x["index"], x["contrast_index"])})
        return table

    eights, sixteens = by_sample(negatives_dataset(batch_size=8)), by_sample(negatives_dataset(batch_size=16))
    assert eights == sixteens and len(eights) == 2 * N
    assert any(eights[(0, i)] != eights[(1, i)] for i in range(N))  # new draws every epoch


def test_contrast_index_covers_the_other_classes_uniformly():
    out = negatives_dataset(k=64, epochs=4)
    counts = np.zeros((CLASSES, N))
    for x, y in out:
        for anchor_class, row in zip(y, x["contrast_index"]):
            np.add.at(counts[anchor_class], row, 1)
    for c in range(CLASSES):
        others = counts[c][LABELS != c]
        assert (counts[c][LABELS == c] == 0).all() and (others > 0).all()
        assert others.std() / others.mean() < 0.35  # about 170 draws each


def test_contrast_negatives_errors():
    with pytest.raises(ValueError, match="contrast_negatives must be an integer >= 0"):
        negatives_dataset(k=-1)
    with pytest.raises(ValueError, match="at least two classes"):
        negatives_dataset(labels=np.zeros(N, np.int32))


# ---------------------------------------------------------------- DCD

def dcd_case(seed=0, batch=6, d=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, d)).astype("float32"),
            (2 * rng.normal(size=(batch, d + 2))).astype("float32"))


@pytest.mark.parametrize("log_scale, bias, weight", [(1.0, 0.0, 0.5), (-0.5, 1.5, 2.0), (3.0, 0.0, 0.5)])
def test_dcd_loss_matches_numpy(log_scale, bias, weight):
    s, t = dcd_case(1)
    t = t[:, :5]
    value = to_numpy(losses.dcd(s, t, log_scale, bias, consistency_weight=weight))
    assert value.shape == ()
    np.testing.assert_allclose(value, ref_dcd(s, t, log_scale, bias, w=weight), rtol=2e-5)


def test_dcd_objective_matches_numpy_through_its_heads():
    dcd = DCD(feature_dim=FEAT)
    dcd.setup({"embedding": (None, 5)}, {"embedding": (None, 7)})
    dcd.log_scale.assign(0.3)
    s, t = dcd_case(2)
    value = to_numpy(dcd({"embedding": s}, {"embedding": t}, np.arange(6)))
    (ws, bs), (wt, bt) = numpy_heads(dcd)
    np.testing.assert_allclose(value, ref_dcd(np.float64(s) @ ws + bs, np.float64(t) @ wt + bt, 0.3, 0.0),
                               rtol=2e-5)


def test_dcd_gradients_reach_t_and_both_projections():
    s, t = dcd_case(3)
    t = t[:, :5]
    fn = jitted(lambda a, b, log_scale: losses.dcd(a, b, log_scale, 0.0))
    g_s, g_t, g_scale = gradients(fn, s, t, np.float32(1.0))
    for g in (g_s, g_t, g_scale):
        assert np.isfinite(g).all() and np.abs(g).sum() > 0
    # d/dt by central differences (float64 reference).
    step = 1e-4
    numeric = (ref_dcd(s, t, 1.0 + step, 0.0) - ref_dcd(s, t, 1.0 - step, 0.0)) / (2 * step)
    np.testing.assert_allclose(g_scale, numeric, rtol=1e-3)
    # Beyond the clamp exp(t) > max_scale the scale is constant: no gradient to t.
    assert gradients(fn, s, t, np.float32(3.0))[2] == 0.0


def test_dcd_identical_views_need_a_sharp_scale():
    s, _ = dcd_case(4)
    soft = float(to_numpy(losses.dcd(s, s, 0.0, 0.0)))
    sharp = float(to_numpy(losses.dcd(s, s, math.log(10.0), 0.0)))
    assert 0 < sharp < soft < math.log(6) + 1e-6


# ---------------------------------------------------------------- under the Distiller

@pytest.fixture(scope="module")
def task():
    return data.make_synthetic(num_classes=CLASSES, train_per_class=PER_CLASS, test_per_class=2,
                               image_shape=SHAPE, seed=3)


def make_distiller(task, spec):
    keras.utils.set_random_seed(0)
    distiller = Distiller(backbones.get("resnet8", num_classes=CLASSES, input_shape=SHAPE),
                          backbones.get("resnet8", num_classes=CLASSES, input_shape=SHAPE), spec,
                          num_train=len(task.train_labels))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    return distiller


def train_dataset(task, distiller, epochs=1):
    mean, std = data.normalization_for(task)
    return data.make_train_dataset(task.train_images, task.train_labels, BATCH, seed=0, mean=mean, std=std,
                                   epochs=epochs, **distiller.data_options())


def test_crd_memory_and_z_advance_under_jit_in_fit(task):
    distiller = make_distiller(task, "crd:0.8,kd:0.9")
    crd = distiller.objective_layers[0]
    assert crd.negatives == N - 1  # 16384 capped for 64 training images
    assert distiller.data_options() == {"with_index": True, "contrast_negatives": N - 1}
    assert distiller.requires == ("contrast_index", "index")
    x, _ = next(iter(train_dataset(task, distiller)))
    idx, rows = x["index"].numpy(), np.concatenate([x["index"].numpy()[:, None], x["contrast_index"]], 1)
    # Expected first step, from the weights before it: the student in training mode, the teacher frozen.
    f_s = to_numpy(distiller.student(x["image"], training=True)["embedding"])
    f_t = to_numpy(distiller.teacher(x["image"], training=False)["embedding"])
    h_s, h_t = expected_embeddings(crd, {"embedding": f_s}, {"embedding": f_t})
    mem_s, mem_t = memories(crd)

    history = distiller.fit(train_dataset(task, distiller), epochs=1, steps_per_epoch=1, verbose=0,
                            shuffle=False).history
    assert np.isfinite(history["crd_loss"]).all() and history["crd_loss"][0] > 0
    assert float(to_numpy(crd.normalizer_ready)) == 1.0
    z_s = ref_first_z(h_s, mem_t, idx, rows[:, 1:], N, 0.07)
    np.testing.assert_allclose(to_numpy(crd.normalizer_student), z_s, rtol=1e-3)
    np.testing.assert_allclose(to_numpy(crd.normalizer_teacher),
                               ref_first_z(h_t, mem_s, idx, rows[:, 1:], N, 0.07), rtol=1e-3)
    new_s, new_t = memories(crd)
    np.testing.assert_allclose(new_s[idx], ref_momentum(mem_s[idx], h_s, 0.5), atol=2e-4)
    np.testing.assert_allclose(new_t[idx], ref_momentum(mem_t[idx], h_t, 0.5), atol=2e-4)
    rest = np.setdiff1d(np.arange(N), idx)
    np.testing.assert_array_equal(new_s[rest], mem_s[rest])
    np.testing.assert_array_equal(new_t[rest], mem_t[rest])

    # Two more steps: new rows move, Z stays; the heads train.
    z = to_numpy(crd.normalizer_student), to_numpy(crd.normalizer_teacher)
    head = to_numpy(crd.embed_teacher.kernel).copy()
    distiller.fit(train_dataset(task, distiller), epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    assert (to_numpy(crd.normalizer_student), to_numpy(crd.normalizer_teacher)) == z
    later_s, _ = memories(crd)
    assert (np.abs(later_s[rest] - mem_s[rest]).max(axis=1) > 0).sum() == 2 * BATCH
    np.testing.assert_allclose(np.linalg.norm(later_s[idx], axis=1), 1.0, rtol=1e-5)
    assert np.abs(to_numpy(crd.embed_teacher.kernel) - head).max() > 0
    # Evaluation data has no indices: CRD reports 0 there and leaves its state alone.
    mean, std = data.normalization_for(task)
    before = memories(crd)
    test_ds = data.make_eval_dataset(task.test_images, task.test_labels, 8, mean=mean, std=std)
    result = distiller.evaluate(test_ds, verbose=0, return_dict=True)
    assert result["crd_loss"] == 0.0
    np.testing.assert_array_equal(before[0], memories(crd)[0])


def test_dcd_scale_trains_in_fit(task):
    distiller = make_distiller(task, "kd:0.9,dcd:1")
    dcd = distiller.objective_layers[1]
    trainable = {id(v) for v in distiller.trainable_variables}
    assert id(dcd.log_scale) in trainable and id(dcd.bias) in trainable
    assert distiller.data_options() == {}
    history = distiller.fit(train_dataset(task, distiller), epochs=1, steps_per_epoch=3, verbose=0,
                            shuffle=False).history
    assert np.isfinite(history["dcd_loss"]).all()
    assert abs(float(to_numpy(dcd.log_scale)) - 1.0) > 1e-4
