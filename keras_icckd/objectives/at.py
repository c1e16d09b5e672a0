"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017."""

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, num_stage_maps, register, stage_map_name


@register("at")
class AT(Objective):
    """Attention transfer on the stage maps after the stem (weight 1000 in the standard recipe).

    Attention map of a (B, H, W, C) map: L2-normalised flatten(mean_c(F^p)); the loss sums,
    over the stages, the mean squared difference of student and teacher maps. Stages must
    have the same spatial size in both networks (checked when the Distiller is built).

    Reference behaviour (the default): the maps RepDistiller's and mdistiller's AT use, their
    feature list without the stem, i.e. every stage 1..K the two backbones share (ResNet, WRN,
    ShuffleNetV2: 1..3; VGG, MobileNetV2: 1..4), each stage's map as those lists hold it: the
    activated output for ResNet and VGG, the raw residual sum for WRN ("stage<k>", before the
    BN-ReLU that follows it). `maps="feat"` takes the post-activation maps on every family
    (for WRN the activation the network computes next; what this project used before),
    `maps="preact"` the maps before it. The paper (on ImageNet/CIFAR ResNets and WRNs) places
    attention at the ends of the residual groups, as the references do; the CIFAR stage lists
    above are the references'.

    Args:
        p: the power. Default 2.
        stages: stage indices k; default None: 1..K for every stage after the stem that both
            backbones have.
        maps: "reference" (default), "feat" or "preact", as above.

    Example:

    >>> at = AT()
    >>> shapes = {f"feat{k}": (None, 32 // 2 ** k, 32 // 2 ** k, 8) for k in range(5)}
    >>> at.setup(shapes, shapes)  # VGG-like: five maps, the stem and four stages
    >>> at.stages, at.student_maps
    ((1, 2, 3, 4), ('feat1', 'feat2', 'feat3', 'feat4'))
    >>> at = AT(stages=(1, 2))
    >>> at.setup({**shapes, "stage1": (None, 16, 16, 8), "stage2": (None, 8, 8, 8)}, shapes)
    >>> at.student_maps, at.teacher_maps  # a WRN-like student: its raw stage sums
    (('stage1', 'stage2'), ('feat1', 'feat2'))
    """

    def __init__(self, p=2, stages=None, maps="reference", **kwargs):
        super().__init__(**kwargs)
        stage_map_name({}, 1, maps, "AT")  # checks maps
        self.p, self.maps = p, maps
        self.stages = None if stages is None else tuple(int(s) for s in stages)
        if self.stages is not None and (not self.stages or min(self.stages) < 0):
            raise ValueError(f"AT stages={stages!r}: expected a non-empty list of stage indices >= 0")

    def setup(self, student_shapes, teacher_shapes, context=None):
        if self.stages is None:
            self.stages = tuple(range(1, min(num_stage_maps(student_shapes), num_stage_maps(teacher_shapes))))
            if not self.stages:
                for shapes in (student_shapes, teacher_shapes):
                    shapes.get("feat1")  # `Distiller` reports the first network that lacks it (OutputShapes)
                raise ValueError("AT needs stage maps feat1.. in both backbones; got "
                                 f"{sorted(student_shapes)} and {sorted(teacher_shapes)}")
        self.student_maps = tuple(stage_map_name(student_shapes, k, self.maps, "AT") for k in self.stages)
        self.teacher_maps = tuple(stage_map_name(teacher_shapes, k, self.maps, "AT") for k in self.stages)
        for s_key, t_key in zip(self.student_maps, self.teacher_maps):
            s, t = student_shapes.get(s_key), teacher_shapes.get(t_key)
            if s is None or t is None or tuple(s[1:3]) != tuple(t[1:3]):
                names = s_key if s_key == t_key else f"{s_key} (student) and {t_key} (teacher)"
                raise ValueError(f"AT needs {names} with equal spatial size in student and teacher; "
                                 f"got student {s} and teacher {t}")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        return losses.attention_transfer([student[k] for k in self.student_maps],
                                         [teacher[k] for k in self.teacher_maps], p=self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "maps": self.maps,
                "stages": None if self.stages is None else list(self.stages)}
