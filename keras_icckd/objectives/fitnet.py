"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

import keras

from keras_icckd import losses
from keras_icckd.backbones import FusedBatchNorm
from keras_icckd.objectives.base import Objective, register


@register("fitnet")
class FitNet(Objective):
    """MSE between a learned regressor of the student's hint map and the teacher's map.

    The regressor (conv + BN + ReLU, as in the standard CIFAR code) maps the student's
    "feat<hint_stage>" to the teacher's channels; a student map twice as large as the
    teacher's is downsampled by a stride-2 conv, one half as large upsampled by a stride-2
    transposed conv. Weight 100 in the standard recipe.

    Args:
        hint_stage: the stage k of "feat<k>" used on both sides. Default 2.
    """

    def __init__(self, hint_stage=2, **kwargs):
        super().__init__(**kwargs)
        self.hint_stage = int(hint_stage)
        self.regressor = None

    def setup(self, student_shapes, teacher_shapes, context=None):
        key = f"feat{self.hint_stage}"
        s, t = student_shapes.get(key), teacher_shapes.get(key)
        if s is None or t is None:
            raise ValueError(f"FitNet hint {key!r} is missing: student has {s}, teacher has {t}")
        (sh, sw), (th, tw), channels = s[1:3], t[1:3], t[-1]
        if (sh, sw) == (th, tw):
            conv = keras.layers.Conv2D(channels, 3, padding="same", name="regressor_conv")
        elif (sh, sw) == (2 * th, 2 * tw):
            conv = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="regressor_conv")
        elif (2 * sh, 2 * sw) == (th, tw):
            conv = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name="regressor_conv")
        else:
            raise ValueError(f"FitNet cannot map the student's {key} {s} onto the teacher's {t}")
        self.regressor = keras.Sequential(
            [keras.Input(tuple(s[1:])), conv,
             FusedBatchNorm(momentum=0.9, epsilon=1e-5, name="regressor_bn"),
             keras.layers.ReLU(name="regressor_relu")], name="regressor")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        key = f"feat{self.hint_stage}"
        return losses.hint_mse(self.regressor(student[key], training=inputs.get("training", True)),
                               teacher[key])

    def get_config(self):
        return {**super().get_config(), "hint_stage": self.hint_stage}
