"""Every loss stays finite, and close to its float32 value, on float16 / bfloat16 inputs with
extreme values (logits of +-60,000: log of 0 and exp overflow in any low-precision softmax)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_icckd import losses

rng = np.random.default_rng(0)
B, C, D = 8, 5, 6
LABELS = np.arange(B) % C
# Extreme but representable in float16 (max 65504) and bfloat16: one huge logit per row.
STUDENT = rng.normal(size=(B, C)).astype("float32")
STUDENT[np.arange(B), (LABELS + 1) % C] = 6e4
TEACHER = rng.normal(size=(B, C)).astype("float32")
TEACHER[np.arange(B), LABELS] = -6e4
FEATURES = (rng.normal(size=(B, D)) * 200).astype("float32")  # squared norms overflow float16
FEATURES2 = (rng.normal(size=(B, D)) * 200).astype("float32")
MAPS = (rng.normal(size=(B, 4, 4, 3)) * 300).astype("float32")
MAPS2 = (rng.normal(size=(B, 4, 4, 3)) * 300).astype("float32")


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


CASES = {
    "kd": lambda c: losses.kd(c(STUDENT), c(TEACHER)),
    "dkd": lambda c: losses.dkd(c(STUDENT), c(TEACHER), LABELS),
    "rkd": lambda c: losses.rkd(c(FEATURES), c(FEATURES2)),
    "dcd": lambda c: losses.dcd(c(FEATURES), c(FEATURES2), 2.0),
    "hint_mse": lambda c: losses.hint_mse(c(MAPS), c(MAPS2)),
    "attention_transfer": lambda c: losses.attention_transfer([c(MAPS)], [c(MAPS2)]),
    "intra_class": lambda c: losses.intra_class_objective(
        losses.intra_class_contrastive(c(unit(FEATURES)), c(unit(FEATURES2)), LABELS % 2, tau=0.1)[0],
        c(STUDENT), LABELS, delta=0.5, margin_mode="hinge")[0],
    "supervised_contrastive": lambda c: losses.supervised_contrastive(c(FEATURES), LABELS % 2),
    "per_sample_cross_entropy": lambda c: ops.mean(losses.per_sample_cross_entropy(LABELS, c(STUDENT))),
    "msdcrd": lambda c: losses.msdcrd([c(FEATURES)], [c(FEATURES2)]),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_finite_and_float32_accurate_in_low_precision(name, dtype):
    reference = float(ops.convert_to_numpy(CASES[name](lambda x: ops.convert_to_tensor(x, "float32"))))
    value = ops.convert_to_numpy(CASES[name](lambda x: ops.cast(ops.convert_to_tensor(x, "float32"), dtype)))
    assert np.isfinite(reference), name
    assert np.isfinite(value), (name, dtype, value)
    # The inputs are rounded to the low-precision type, so the loss moves a little: 3 % (bfloat16: 8 bits).
    assert float(value) == pytest.approx(reference, rel=0.03, abs=1e-2), (name, dtype)
