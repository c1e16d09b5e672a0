"""MSDCRD (EXPERIMENTAL): multi-scale decoupled contrastive distillation, arXiv 2502.05835,
reconstructed from the paper's abstract."""

import keras

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, register


@register("msdcrd")
class MSDCRD(Objective):
    """EXPERIMENTAL, reconstructed from the abstract: multi-scale cell-wise contrastive distillation.

    The last-stage maps of both networks are average-pooled into k x k grids for each k in
    `scales`; every cell is a local sample. The student's cells go through a Dense
    projection to the teacher's channel count (a 1x1 conv, applied after pooling). Per scale,
    `losses.msdcrd` adds a sample-wise InfoNCE (each student cell against the same cell of
    the batch's teacher maps) and a feature-wise InfoNCE (each student channel against the
    teacher's channels); the objective is the mean over scales. No memory bank.

    Only the idea (scales, cells as samples, sample- and feature-wise contrast, no memory)
    is published in the abstract; scales, temperature, the projection and the averaging are
    our choices, and no published number can be reproduced with it.

    Args:
        scales: grid sizes. Default (1, 2, 4).
        temperature: InfoNCE temperature. Default 0.1.
        feature: the map used on both sides. Default None: the last stage ("feat<K>").
    """

    experimental = True

    def __init__(self, scales=(1, 2, 4), temperature=0.1, feature=None, **kwargs):
        super().__init__(**kwargs)
        scales = tuple(scales) if isinstance(scales, (list, tuple)) else (scales,)
        if not scales or any(isinstance(k, bool) or int(k) != k or k < 1 for k in scales):
            raise ValueError(f"MSDCRD scales={scales!r}: expected positive integers")
        if not temperature > 0:
            raise ValueError(f"MSDCRD temperature={temperature!r}: expected > 0")
        self.scales, self.temperature, self.feature = tuple(int(k) for k in scales), float(temperature), feature

    def setup(self, student_shapes, teacher_shapes, context=None):
        if self.feature is None:
            last = max(int(k[4:]) for k in student_shapes if k.startswith("feat") and k[4:].isdigit())
            t_last = max(int(k[4:]) for k in teacher_shapes if k.startswith("feat") and k[4:].isdigit())
            self.student_key, self.teacher_key = f"feat{last}", f"feat{t_last}"
        else:
            self.student_key = self.teacher_key = self.feature
        s, t = student_shapes.get(self.student_key), teacher_shapes.get(self.teacher_key)
        if s is None or t is None or len(s) != 4 or len(t) != 4:
            raise ValueError(f"MSDCRD needs (B, H, W, C) maps: student {self.student_key} = {s}, "
                             f"teacher {self.teacher_key} = {t}")
        self.project = keras.layers.Dense(int(t[-1]), name="project")
        self.project.build((None, None, int(s[-1])))
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        total = 0.0
        for k in self.scales:
            s = self.project(losses.grid_pool(student[self.student_key], k))
            t = losses.grid_pool(teacher[self.teacher_key], k)
            total = total + losses.msdcrd(s, t, self.temperature)
        return total / len(self.scales)

    def get_config(self):
        return {**super().get_config(), "scales": list(self.scales), "temperature": self.temperature,
                "feature": self.feature}
