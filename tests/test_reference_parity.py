"""The objectives against NumPy transcriptions of the authors' released computations.

PCKD: the official release (MuHeDing/PCKD, helper/loops.py + helper/losses.py), written out from
its equations in its own layout (the four rotations of image i in rows 4i..4i+3). FitNet: the
references' regressor (ConvReg) as PyTorch computes it. AT: the stage maps the references use
per backbone family. DCD: the option that freezes t and b as the released CIFAR code does.
"""

import math

import keras
import numpy as np
import pytest

from helpers import gradients, numeric_gradient, to_numpy, torch_conv2d
from test_distill_losses import ref_at
from test_pckd_msdcrd import ref_log_softmax as log_softmax, ref_normalize as normalize
from keras_icckd import backbones, losses, objectives
from keras_icckd.backbones.base import BN_EPSILON, BN_MOMENTUM
from keras_icckd.models import Distiller

RNG = np.random.default_rng(2410)


# ---------------------------------------------------------------- PCKD, the release in NumPy

def release_category_loss(f_s, fc_s, fc_t, heads, labels, tau=4.0, base=0.07, eps=1e-7):
    """CategoryConLoss.forward: per view, the sum of its student-centre and teacher-centre terms."""
    (k1, c1), (k2, c2) = heads
    anchors = np.r_[normalize(f_s @ k1 + c1) @ fc_s, normalize(f_s @ k2 + c2) @ fc_t]  # not normalised
    y = np.r_[labels, labels]
    n = len(anchors)
    terms = np.zeros(n)
    for j in range(n):
        scores = anchors @ anchors[j] / tau
        scores = scores - scores.max()
        log_norm = math.log(sum(math.exp(scores[k]) for k in range(n) if k != j) + eps)
        positives = [k for k in range(n) if k != j and y[k] == y[j]]
        terms[j] = -(tau / base) * np.mean([scores[k] - log_norm for k in positives])
    return terms[:n // 2] + terms[n // 2:]


def release_pckd(rel, labels, params, epoch, kd_weight, cc_weight=0.05, ca_weight=1.0, fa_weight=20.0,
                 temperature=4.0, fixed_percent=None):
    """loss - loss_cls of train_distill for opt.distill == 'pckd'; `rel` in the release's layout.

    Returns (value, percent). `fixed_percent` holds the preview weights constant (to take the
    gradient of the detached variant by finite differences).
    """
    batch = len(labels)
    nor = np.arange(4 * batch) % 4 == 0
    logit_s, logit_t = np.float64(rel["s_logits"]), np.float64(rel["t_logits"])
    # preview weights from the CE of the unrotated views
    ce = -log_softmax(logit_s[nor])[np.arange(batch), labels]
    alpha = ce / ce.mean()
    percent = np.where(alpha <= 1.005 ** epoch, 1.0, np.exp(-alpha ** 2))
    if fixed_percent is not None:
        percent = fixed_percent
    # KD on the unrotated views: DistillKL(reduction='none').sum(1), dotted with the weights
    lt, ls = log_softmax(logit_t[nor] / temperature), log_softmax(logit_s[nor] / temperature)
    loss_tem = (np.exp(lt) * (lt - ls)).sum(1) * temperature ** 2 / batch
    loss1 = kd_weight * percent @ loss_tem
    # category contrast over the 4B views, the image's weight repeated for its four views
    ws, bs, wt, bt = params["ws"], params["bs"], params["wt"], params["bt"]
    loss_kd = release_category_loss(np.float64(rel["s_embedding"]), ws, wt, params["cc"], np.repeat(labels, 4))
    loss2 = np.repeat(percent, 4) @ (cc_weight * loss_kd) / (4 * batch)
    # category-centre alignment, MSELoss of [W | b]
    corr = np.mean((np.c_[ws.T, bs] - np.c_[wt.T, bt]) ** 2) if ws.shape == wt.shape else 0.0
    # feature alignment: MLPHead (Linear - BatchNorm1d in training mode - ReLU - Linear)
    (p1, q1), (p2, q2) = params["fa"]
    h = np.float64(rel["s_embedding"]) @ p1 + q1
    h = np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5), 0) @ p2 + q2
    align = 2 - 2 * (normalize(h) * normalize(rel["t_embedding"])).sum(-1).mean()
    return loss1 + loss2 + ca_weight * corr + fa_weight * align, percent


def pckd_case(batch=4, d_s=6, d_t=6, classes=3, seed=0, **options):
    rng = np.random.default_rng(seed)
    pckd = objectives.PCKD(name="pckd", **options)
    pckd.setup({"logits": (None, classes), "embedding": (None, d_s)},
               {"logits": (None, classes), "embedding": (None, d_t)})
    rel = {"s_logits": rng.normal(size=(4 * batch, classes)) * 3, "t_logits": rng.normal(size=(4 * batch, classes)) * 3,
           "s_embedding": rng.normal(size=(4 * batch, d_s)), "t_embedding": rng.normal(size=(4 * batch, d_t))}
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1][:batch])
    params = {"ws": rng.normal(size=(d_s, classes)), "bs": rng.normal(size=classes),
              "wt": rng.normal(size=(d_t, classes)), "bt": rng.normal(size=classes),
              "cc": [(to_numpy(l.kernel), to_numpy(l.bias)) for l in (pckd.cc_student, pckd.cc_teacher)],
              "fa": [(to_numpy(l.kernel), to_numpy(l.bias)) for l in (pckd.projector.layers[0], pckd.projector.layers[3])]}
    return pckd, rel, labels, params


def ours(rel, batch):
    """Release layout (row 4i + j: image i, rotation j) -> the Distiller's (row jB + i)."""
    order = [4 * i + j for j in range(4) for i in range(batch)]
    return {k: np.float32(v[order]) for k, v in rel.items()}


def run_pckd(pckd, rel, labels, params, epoch, s_logits=None):
    """The objective on the release-layout case; `s_logits` (in the Distiller's layout) replaces its logits."""
    views = ours(rel, len(labels))
    inputs = {"epoch": epoch, "training": True,
              "student_classifier": (np.float32(params["ws"]), np.float32(params["bs"])),
              "teacher_classifier": (np.float32(params["wt"]), np.float32(params["bt"]))}
    s_logits = views["s_logits"] if s_logits is None else s_logits
    return pckd.compute({"logits": s_logits, "embedding": views["s_embedding"]},
                        {"logits": views["t_logits"], "embedding": views["t_embedding"]}, labels, inputs)


@pytest.mark.parametrize("kd_weight, d_t, epoch", [(0.0, 6, 1.0), (1.0, 6, 1.0), (0.5, 8, 40.0)])
def test_pckd_matches_the_release(kd_weight, d_t, epoch):
    pckd, rel, labels, params = pckd_case(d_t=d_t, kd_weight=kd_weight)
    expected, percent = release_pckd(rel, labels, params, epoch, kd_weight)
    if epoch == 1.0:
        assert (percent < 1).any() and (percent == 1).any()  # the preview weights matter here
    assert float(to_numpy(run_pckd(pckd, rel, labels, params, epoch))) == pytest.approx(expected, rel=1e-4)


def test_pckd_defaults_are_the_official_command():
    pckd = objectives.PCKD()
    assert (pckd.kd_weight, pckd.cc_weight, pckd.ca_weight, pckd.fa_weight) == (0.0, 0.05, 1.0, 20.0)
    assert (pckd.temperature, pckd.cc_temperature, pckd.cc_base_temperature, pckd.growth) == (4.0, 4.0, 0.07, 1.005)
    assert pckd.detach_weight is False
    parsed = objectives.parse("pckd(detach_weight=True;kd_weight=1):1")[0][0]
    assert parsed.detach_weight is True and parsed.kd_weight == 1.0


def test_category_contrast_hand_worked():
    # anchors e0, e0, e1 (labels 0, 0, 1) scored twice; tau 4: scores 1/4 for equal rows, 0 otherwise.
    # Row max 1/4 (self included), so an e0 anchor sees 3 others at 0 and 2 at -1/4, its 3
    # positives at 0; an e1 anchor sees 4 others at -1/4 and 1 at 0, its 1 positive at 0.
    u = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    l_e0 = (4 / 0.07) * math.log(3 + 2 * math.exp(-0.25) + 1e-7)
    l_e1 = (4 / 0.07) * math.log(1 + 4 * math.exp(-0.25) + 1e-7)
    got = float(to_numpy(losses.category_contrast(u, u, np.array([0, 0, 1]))))
    assert got == pytest.approx((2 * l_e0 + 2 * l_e0 + 2 * l_e1) / 3, rel=1e-5)
    weighted = float(to_numpy(losses.category_contrast(u, u, np.array([0, 0, 1]), np.array([1.0, 0.5, 0.0]))))
    assert weighted == pytest.approx((2 * l_e0 + l_e0) / 3, rel=1e-5)


@pytest.mark.parametrize("detach_weight", [False, True])
def test_pckd_kd_gradient_with_the_preview_weight_attached_or_detached(detach_weight):
    only_kd = dict(cc_weight=0.0, ca_weight=0.0, fa_weight=0.0)
    pckd, rel, labels, params = pckd_case(kd_weight=1.0, detach_weight=detach_weight, seed=1, **only_kd)
    batch = len(labels)
    value, percent = release_pckd(rel, labels, params, 1.0, 1.0, **only_kd)
    assert (percent < 1).any()
    fixed = percent if detach_weight else None

    def reference(s_logits):
        return release_pckd({**rel, "s_logits": s_logits}, labels, params, 1.0, 1.0, fixed_percent=fixed, **only_kd)[0]

    expected = numeric_gradient(reference, rel["s_logits"])
    order = [4 * i + j for j in range(4) for i in range(batch)]

    def loss(s_logits):
        return run_pckd(pckd, rel, labels, params, 1.0, s_logits=s_logits)

    grad, = gradients(loss, rel["s_logits"][order])
    assert float(to_numpy(loss(rel["s_logits"][order]))) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(grad, expected[order], rtol=1e-3, atol=1e-6)
    assert not grad[batch:].any()  # KD sees the unrotated views only
    # attached, the weight's gradient adds to KL's: the two variants differ
    other = numeric_gradient(lambda z: release_pckd({**rel, "s_logits": z}, labels, params, 1.0, 1.0,
                                                    fixed_percent=None if detach_weight else percent, **only_kd)[0],
                             rel["s_logits"])
    assert np.abs(other - expected).max() > 1e-3


def test_pckd_category_contrast_trains_the_student_classifier_and_not_the_logits():
    pckd, rel, labels, params = pckd_case(cc_weight=1.0, ca_weight=0.0, fa_weight=0.0, kd_weight=0.0, seed=2)
    views = ours(rel, len(labels))

    def loss(s_logits, s_embedding, t_logits, t_embedding, ws, wt):
        inputs = {"epoch": 1.0, "training": True, "student_classifier": (ws, np.float32(params["bs"])),
                  "teacher_classifier": (wt, np.float32(params["bt"]))}
        return pckd.compute({"logits": s_logits, "embedding": s_embedding},
                            {"logits": t_logits, "embedding": t_embedding}, labels, inputs)

    grads = gradients(loss, views["s_logits"], views["s_embedding"], views["t_logits"], views["t_embedding"],
                      params["ws"], params["wt"])
    g_logits, g_embedding, g_t_logits, g_t_embedding, g_ws, g_wt = grads
    assert np.abs(g_ws).max() > 0 and np.abs(g_embedding).max() > 0  # W_s is not detached in L_CC
    assert not g_logits.any()  # the preview weights are constants in L_CC
    assert not g_wt.any() and not g_t_logits.any() and not g_t_embedding.any()


# ---------------------------------------------------------------- FitNet's regressor (ConvReg)

def torch_conv_transpose2d(x, weight, stride, padding):
    """PyTorch's ConvTranspose2d (NCHW input, weight (in, out, k, k), no bias) in NumPy."""
    n, _, h, w = x.shape
    k = weight.shape[2]
    full = np.zeros((n, weight.shape[1], (h - 1) * stride + k, (w - 1) * stride + k))
    for i in range(h):
        for j in range(w):
            full[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
                "nc,cokl->nokl", np.float64(x[:, :, i, j]), weight)
    return full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]


@pytest.mark.parametrize("s_size, t_size, kernel, layers", [
    (8, 8, (1, 1), 1), (8, 4, (3, 3), 2), (4, 8, (4, 4), 1), (6, 4, (3, 3), 1)])
def test_fitnet_regressor_is_convreg(s_size, t_size, kernel, layers):
    fitnet = objectives.FitNet()
    fitnet.setup({"feat2": (None, s_size, s_size, 3)}, {"feat2": (None, t_size, t_size, 5)})
    conv = fitnet.regressor.get_layer("regressor_conv")
    bn = fitnet.regressor.get_layer("regressor_bn")
    assert tuple(conv.kernel.shape[:2]) == kernel and conv.use_bias
    assert (bn.momentum, bn.epsilon) == (BN_MOMENTUM, BN_EPSILON)
    assert [l.name for l in fitnet.regressor.layers][-2:] == ["regressor_bn", "regressor_relu"]
    assert len(fitnet.regressor.layers) == layers + 2
    fan_in = 3 * kernel[0] * kernel[1] if s_size >= t_size else 5 * 16
    k_values, b_values = to_numpy(conv.kernel), to_numpy(conv.bias)
    assert np.abs(k_values).max() <= 1 / math.sqrt(fan_in) and np.abs(b_values).max() > 0  # PyTorch's init
    x = RNG.normal(size=(2, s_size, s_size, 3)).astype("float32")
    h = x
    for layer in fitnet.regressor.layers[:layers]:
        h = layer(h)
    nchw = x.transpose(0, 3, 1, 2)
    if s_size < t_size:  # Keras kernel (k, k, out, in) = PyTorch weight (in, out, k, k) transposed
        reference = torch_conv_transpose2d(nchw, k_values.transpose(3, 2, 0, 1), 2, 1)
    else:
        reference = torch_conv2d(nchw, k_values.transpose(3, 2, 0, 1), 2 if s_size == 2 * t_size else 1,
                                 1 if s_size == 2 * t_size else 0)
    reference = reference.transpose(0, 2, 3, 1) + b_values
    assert reference.shape == (2, t_size, t_size, 5)
    np.testing.assert_allclose(to_numpy(h), reference, rtol=1e-5, atol=1e-5)


def test_fitnet_stride_two_regressor_hand_worked():
    # A 2x2 map of ones onto 1x1: PyTorch pads (1, 1), so the one output sees kernel rows and
    # columns 1..2; Keras' 'same' would pad (0, 1) and see rows and columns 0..1.
    fitnet = objectives.FitNet()
    fitnet.setup({"feat2": (None, 2, 2, 1)}, {"feat2": (None, 1, 1, 1)})
    conv = fitnet.regressor.get_layer("regressor_conv")
    conv.kernel.assign(np.arange(9, dtype="float32").reshape(3, 3, 1, 1))
    conv.bias.assign(np.array([0.5], "float32"))
    h = np.ones((1, 2, 2, 1), "float32")
    for layer in fitnet.regressor.layers[:2]:
        h = layer(h)
    assert float(to_numpy(h)[0, 0, 0, 0]) == (4 + 5 + 7 + 8) + 0.5


def test_fitnet_refuses_a_map_it_cannot_regress():
    with pytest.raises(ValueError, match="cannot map"):
        objectives.FitNet().setup({"feat2": (None, 3, 3, 4)}, {"feat2": (None, 8, 8, 4)})
    with pytest.raises(ValueError, match="maps='post'"):
        objectives.FitNet(maps="post")


# ---------------------------------------------------------------- AT's maps per backbone family

@pytest.fixture(scope="module")
def nets():
    """name -> (model, its outputs on 2 images in inference mode); BN statistics randomised."""
    keras.utils.set_random_seed(0)
    images = RNG.normal(size=(2, 16, 16, 3)).astype("float32")
    result = {}
    for name in ("wrn_10_1", "vgg8", "resnet8"):
        model = (backbones.WideResNet(depth=10, widen_factor=1, num_classes=4, input_shape=(16, 16, 3))
                 if name == "wrn_10_1" else backbones.get(name, num_classes=4, input_shape=(16, 16, 3)))
        for w in model.non_trainable_weights:
            w.assign(RNG.uniform(0.5 if "variance" in w.path else -0.5, 1.5, size=w.shape).astype("float32"))
        result[name] = model, to_numpy(model(images, training=False))
    return result


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.output.items()}


def inference_bn(model, layer, x):
    gamma, beta, mean, variance = (to_numpy(w) for w in model.get_layer(layer).weights)
    return (x - mean) / np.sqrt(variance + BN_EPSILON) * gamma + beta


def test_wrn_stage_outputs_are_the_raw_stage_sums(nets):
    model, out = nets["wrn_10_1"]
    # The next BN of the network normalises exactly "stage<k>" into "preact<k>".
    for k, next_bn in ((1, "stage2_block0_bn"), (2, "stage3_block0_bn"), (3, "final_bn")):
        np.testing.assert_allclose(out[f"preact{k}"], inference_bn(model, next_bn, out[f"stage{k}"]),
                                   rtol=1e-4, atol=1e-4)
        assert np.abs(out[f"stage{k}"] - out[f"feat{k}"]).max() > 0.1


@pytest.mark.parametrize("name, maps, expected", [
    ("wrn_10_1", "reference", ["stage1", "stage2", "stage3"]),
    ("wrn_10_1", "feat", ["feat1", "feat2", "feat3"]),
    ("wrn_10_1", "preact", ["preact1", "preact2", "preact3"]),
    ("vgg8", "reference", ["feat1", "feat2", "feat3", "feat4"]),
    ("resnet8", "reference", ["feat1", "feat2", "feat3"]),
])
def test_at_uses_the_references_stage_maps(nets, name, maps, expected):
    model, out = nets[name]
    at = objectives.AT(maps=maps)
    at.setup(shapes(model), shapes(model))
    assert list(at.student_maps) == list(at.teacher_maps) == expected
    teacher_out = {k: np.float32(v[::-1]) for k, v in out.items()}  # another pair of images
    got = float(to_numpy(at.compute(out, teacher_out, None, {})))
    assert got == pytest.approx(ref_at([out[k] for k in expected], [teacher_out[k] for k in expected], 2), rel=1e-4)


def test_fitnet_on_wrn_uses_the_stage_sum(nets):
    model, _ = nets["wrn_10_1"]
    fitnet = objectives.FitNet()
    fitnet.setup(shapes(model), shapes(model))
    assert (fitnet.student_map, fitnet.teacher_map) == ("stage2", "stage2")
    assert tuple(fitnet.regressor.get_layer("regressor_conv").kernel.shape)[:2] == (1, 1)


# ---------------------------------------------------------------- DCD: t and b frozen as released

@pytest.mark.parametrize("learnable", [True, False])
def test_dcd_learnable_option_decides_what_the_optimizer_sees(learnable):
    distiller = Distiller(backbones.get("resnet8", num_classes=4, input_shape=(8, 8, 3)),
                          backbones.get("resnet8", num_classes=4, input_shape=(8, 8, 3)),
                          [(objectives.DCD(learnable=learnable, name="dcd"), 1.0)])
    dcd = distiller.objective_layers[0]
    trainable = {id(v) for v in distiller.trainable_variables}
    assert (id(dcd.log_scale) in trainable, id(dcd.bias) in trainable) == (learnable, learnable)
    assert id(dcd.embed_student.kernel) in trainable and id(dcd.embed_teacher.kernel) in trainable
    assert objectives.get("dcd", **dcd.get_config()).learnable is learnable
