"""KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015)."""

from keras_icckd import losses
from keras_icckd.objectives.base import Objective, register


@register("kd")
class KD(Objective):
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), mean over the batch.

    Args:
        temperature: T. Default 4.

    Example:
    >>> import numpy as np
    >>> z = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> float(KD()({"logits": z}, {"logits": z}, np.array([0])))
    0.0
    """

    def __init__(self, temperature=4.0, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}: expected > 0")
        self.temperature = float(temperature)

    def compute(self, student, teacher, labels, inputs):
        return losses.kd(student["logits"], teacher["logits"], temperature=self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
