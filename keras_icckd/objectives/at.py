"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017."""

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, register


@register("at")
class AT(Objective):
    """Attention transfer on the stage outputs 1..3 (weight 1000 in the standard recipe).

    Attention map of a (B, H, W, C) map: L2-normalised flatten(mean_c(F^p)); the loss sums,
    over the stages, the mean squared difference of student and teacher maps. Stages must
    have the same spatial size in both networks (checked when the Distiller is built).

    Args:
        p: the power. Default 2.
        stages: stage indices of the "feat<k>" outputs. Default (1, 2, 3).
    """

    def __init__(self, p=2, stages=(1, 2, 3), **kwargs):
        super().__init__(**kwargs)
        self.p, self.stages = p, tuple(int(s) for s in stages)

    def setup(self, student_shapes, teacher_shapes, context=None):
        for k in self.stages:
            s, t = student_shapes.get(f"feat{k}"), teacher_shapes.get(f"feat{k}")
            if s is None or t is None or tuple(s[1:3]) != tuple(t[1:3]):
                raise ValueError(f"AT needs feat{k} with equal spatial size in student and teacher; "
                                 f"got student {s} and teacher {t}")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        return losses.attention_transfer([student[f"feat{k}"] for k in self.stages],
                                         [teacher[f"feat{k}"] for k in self.stages], p=self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "stages": list(self.stages)}
