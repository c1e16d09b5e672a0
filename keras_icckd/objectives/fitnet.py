"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

import keras

from keras_icckd import losses
from keras_icckd.backbones import FusedBatchNorm
from keras_icckd.backbones.base import BN_EPSILON, BN_MOMENTUM, conv_initializer
from keras_icckd.objectives.base import Objective, register, stage_map_name


def regressor_conv(student_shape, teacher_shape, name="regressor_conv"):
    """The convolution of the references' FitNet regressor (`ConvReg`) for two (B, H, W, C) shapes.

    As RepDistiller's and mdistiller's ConvReg, in this order: a student map twice the
    teacher's size: 3x3 stride-2 conv padded by 1 on each side (an explicit ZeroPadding2D(1)
    and a 'valid' conv, so the output is PyTorch's, not shifted by Keras' (0, 1) 'same'
    padding); half the size: 4x4 stride-2 transposed conv ('same' here pads 1 on each side,
    as PyTorch's padding=1); otherwise a student map at least as large: a 'valid' conv with
    kernel (1 + H_s - H_t, 1 + W_s - W_t), a 1x1 conv for equal sizes. Biases on, weights and
    biases drawn as PyTorch's default, uniform(+-1/sqrt(fan_in)).

    Returns:
        A list of layers to apply in order.

    Raises:
        ValueError: for a student map smaller than the teacher's other than by half.
    """
    (sh, sw), (th, tw), channels = tuple(student_shape[1:3]), tuple(teacher_shape[1:3]), int(teacher_shape[-1])
    in_channels = int(student_shape[-1])

    def torch_default(fan_in):  # the bound 1 / sqrt(fan_in) of PyTorch's default initialisation
        return dict(kernel_initializer=conv_initializer(1, fan_in, "torch"),
                    bias_initializer=conv_initializer(1, fan_in, "torch"))

    if (sh, sw) == (2 * th, 2 * tw):
        return [keras.layers.ZeroPadding2D(1, name=f"{name}_pad"),
                keras.layers.Conv2D(channels, 3, strides=2, padding="valid", name=name,
                                    **torch_default(9 * in_channels))]
    if (2 * sh, 2 * sw) == (th, tw):
        # PyTorch's fan_in of a transposed conv weight (in, out, k, k) is out * k * k.
        return [keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name=name,
                                             **torch_default(16 * channels))]
    if sh >= th and sw >= tw:
        kernel = (1 + sh - th, 1 + sw - tw)
        return [keras.layers.Conv2D(channels, kernel, padding="valid", name=name,
                                    **torch_default(kernel[0] * kernel[1] * in_channels))]
    raise ValueError(f"FitNet cannot map the student's map {tuple(student_shape)} onto the "
                     f"teacher's {tuple(teacher_shape)}")


@register("fitnet")
class FitNet(Objective):
    """MSE between a learned regressor of the student's hint map and the teacher's map.

    The regressor is the references' ConvReg: `regressor_conv` (1x1 conv for equal sizes,
    3x3 stride-2 conv padded 1 on each side for a student map twice the teacher's, 4x4
    stride-2 transposed conv for one half as large), then BN + ReLU. Weight 100 in the
    standard recipe.

    Reference behaviour: RepDistiller's and mdistiller's FitNet (hint layer 2: the map of
    stage 2 as their feature lists hold it, i.e. the raw residual sum for WRN, the activated
    output elsewhere; see `objectives.AT` and `maps`). The paper trains the hint in a separate
    first stage with a convolutional regressor; the references (and this class) train it jointly
    with the student, with CE, as the CIFAR benchmarks do.

    Args:
        hint_stage: the stage k used on both sides. Default 2.
        maps: which map of stage k: "reference" (default), "feat" or "preact" (see `AT`).

    Example:

    >>> fitnet = FitNet()
    >>> fitnet.setup({"feat2": (None, 16, 16, 32)}, {"feat2": (None, 8, 8, 64)})
    >>> [layer.name for layer in fitnet.regressor.layers]
    ['regressor_conv_pad', 'regressor_conv', 'regressor_bn', 'regressor_relu']
    >>> tuple(fitnet.regressor.get_layer("regressor_conv").kernel.shape)
    (3, 3, 32, 64)
    """

    def __init__(self, hint_stage=2, maps="reference", **kwargs):
        super().__init__(**kwargs)
        stage_map_name({}, 1, maps, "FitNet")  # checks maps
        self.hint_stage, self.maps = int(hint_stage), maps
        self.regressor = None

    def setup(self, student_shapes, teacher_shapes, context=None):
        self.student_map = stage_map_name(student_shapes, self.hint_stage, self.maps, "FitNet")
        self.teacher_map = stage_map_name(teacher_shapes, self.hint_stage, self.maps, "FitNet")
        s, t = student_shapes.get(self.student_map), teacher_shapes.get(self.teacher_map)
        if s is None or t is None:
            raise ValueError(f"FitNet hint {self.student_map!r} / {self.teacher_map!r} is missing: "
                             f"student has {s}, teacher has {t}")
        self.regressor = keras.Sequential(
            [keras.Input(tuple(s[1:])), *regressor_conv(s, t),
             FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="regressor_bn"),
             keras.layers.ReLU(name="regressor_relu")], name="regressor")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        return losses.hint_mse(self.regressor(student[self.student_map], training=inputs.get("training", True)),
                               teacher[self.teacher_map])

    def get_config(self):
        return {**super().get_config(), "hint_stage": self.hint_stage, "maps": self.maps}
