"""Mixed precision (mixed_float16 / mixed_bfloat16): teacher and Distiller train with float32
variables and float32 losses, computing in the low-precision type."""

import keras
import numpy as np
import pytest

from keras_icckd import backbones
from keras_icckd import data
from keras_icckd import export
from keras_icckd import training
from keras_icckd.models import ContrastiveTeacher
from keras_icckd.models import Distiller

SPLITS = data.make_synthetic(num_classes=3, train_per_class=8, test_per_class=2, image_shape=(16, 16, 3))


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy("float32")


def fit(model, epochs=1, **options):
    ds = data.make_train_dataset(SPLITS.train_images, SPLITS.train_labels, 8, seed=0, mean=(0.5,) * 3,
                                 std=(0.25,) * 3, epochs=epochs, **options)
    history = model.fit(ds, epochs=epochs, steps_per_epoch=3, verbose=0).history
    return {k: v[-1] for k, v in history.items()}


def test_teacher_and_distiller_train_in_mixed_precision(policy):
    keras.utils.set_random_seed(0)
    net = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    compute = policy.split("_")[1]
    assert net.output["logits"].dtype == compute and all(v.dtype == "float32" for v in net.variables)
    teacher = ContrastiveTeacher(net, icc_cache_size=16, icc_delta=-1.0)
    teacher.compile(optimizer=training.TorchSGD(0.05))
    logs = fit(teacher, views=2)
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["intra"] > 0 and teacher.cache.features.dtype == "float32"
    distiller = Distiller(net, backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3)),
                          "kd:0.9,rkd:1,crd:0.8,dcd:1,at:1000,fitnet:100", num_train=len(SPLITS.train_labels))
    distiller.compile(optimizer=training.TorchSGD(0.05))
    before = [keras.ops.convert_to_numpy(v).copy() for v in distiller.student.trainable_variables]
    # float16: the first steps overflow at Keras' initial loss scale 2^15 and are skipped while the
    # scale halves, so give it a few epochs.
    logs = fit(distiller, epochs=3, **distiller.data_options())
    assert all(np.isfinite(v) for v in logs.values()), logs
    for name in ("kd_loss", "rkd_loss", "crd_loss", "dcd_loss", "at_loss", "fitnet_loss"):
        assert logs[name] > 0, name
    after = distiller.student.trainable_variables
    assert any(not np.array_equal(b, keras.ops.convert_to_numpy(a)) for b, a in zip(before, after))
    if policy == "mixed_float16":  # Keras adds dynamic loss scaling for float16
        assert type(distiller.optimizer).__name__ == "LossScaleOptimizer"


def test_a_mixed_precision_student_exports_in_float32(policy, tmp_path):
    keras.utils.set_random_seed(0)
    student = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    images = np.random.default_rng(0).normal(size=(6, 16, 16, 3)).astype("float32")
    low = keras.ops.convert_to_numpy(student(images, training=False)["logits"]).astype("float32")
    copy = export.float32_copy(student)
    assert copy is not student and all(layer.compute_dtype == "float32" for layer in copy.layers)
    assert keras.config.dtype_policy().name == policy  # the global policy is left as it was
    for a, b in zip(student.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    high = keras.ops.convert_to_numpy(copy(images, training=False)["logits"])
    assert 0 < np.max(np.abs(high - low)) < 0.1  # the same network, computed at two precisions
    assert export.float32_copy(copy) is copy
    report = export.export_tflite(student, str(tmp_path), test_images=images, quantizations=("float32",),
                                  latency_runs=1)
    assert report["files"]["float32"]["max_abs_diff"] < 1e-4  # against the float32 computation
