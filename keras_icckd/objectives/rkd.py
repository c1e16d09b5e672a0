"""RKD: Park et al., "Relational Knowledge Distillation", CVPR 2019."""

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, register


@register("rkd")
class RKD(Objective):
    """Distance (weight 25) and angle (weight 50) relations of pooled features.

    Args:
        distance_weight: weight of the distance term. Default 25.
        angle_weight: weight of the angle term. Default 50.
        feature: which backbone output to relate. Default "embedding" (pooled features).
    """

    def __init__(self, distance_weight=25.0, angle_weight=50.0, feature="embedding", **kwargs):
        super().__init__(**kwargs)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.feature = feature

    def setup(self, student_shapes, teacher_shapes, context=None):
        for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
            if self.feature not in shapes:
                raise ValueError(f"RKD feature {self.feature!r} is not an output of the {side}; "
                                 f"available: {sorted(shapes)}")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        return losses.rkd(student[self.feature], teacher[self.feature],
                          distance_weight=self.distance_weight, angle_weight=self.angle_weight)

    def get_config(self):
        return {**super().get_config(), "distance_weight": self.distance_weight,
                "angle_weight": self.angle_weight, "feature": self.feature}
