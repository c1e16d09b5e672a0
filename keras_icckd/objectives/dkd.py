"""DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022."""

from keras import ops

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, register


@register("dkd")
class DKD(Objective):
    """alpha * TCKD + beta * NCKD, scaled by a linear warm-up over the first epochs.

    The warm-up factor is min(epoch / warmup_epochs, 1) with the 1-based epoch that the
    `Distiller` keeps in a variable (advanced by a callback at every epoch start), as in the
    authors' code.

    Args:
        alpha: weight of the target-class part. Default 1.
        beta: weight of the non-target part. Default 8 (the paper uses 2 for resnet56/110
            teachers and 6 for WRN/VGG pairs).
        temperature: T. Default 4.
        warmup_epochs: epochs of linear warm-up (0: none). Default 20.
    """

    uses_labels = True

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0 or alpha < 0 or beta < 0 or warmup_epochs < 0:
            raise ValueError("DKD needs alpha >= 0, beta >= 0, temperature > 0, warmup_epochs >= 0; got "
                             f"alpha={alpha}, beta={beta}, temperature={temperature}, "
                             f"warmup_epochs={warmup_epochs}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup_epochs = int(warmup_epochs)

    def compute(self, student, teacher, labels, inputs):
        loss = losses.dkd(student["logits"], teacher["logits"], labels, alpha=self.alpha,
                          beta=self.beta, temperature=self.temperature)
        if self.warmup_epochs:
            epoch = ops.cast(inputs.get("epoch", self.warmup_epochs), "float32")
            loss = loss * ops.minimum(epoch / self.warmup_epochs, 1.0)
        return loss

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "temperature": self.temperature, "warmup_epochs": self.warmup_epochs}
