"""An SGD with PyTorch's semantics, for reproducing the published CIFAR recipes."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_icckd")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay, exactly as `torch.optim.SGD` updates.

    For each trainable variable w with gradient g, learning rate lr, momentum mu and weight
    decay wd (dampening 0, nesterov off):

        g <- g + wd * w              (L2 decay added to the gradient, before momentum)
        b <- mu * b + g              (b starts at 0, so the first step has b = g, as in PyTorch)
        w <- w - lr * b

    Keras' own `SGD` differs twice: its `weight_decay` is decoupled (w <- w - lr * wd * w,
    outside the momentum) and its momentum buffer holds -lr * g, so a change of learning rate
    acts on the buffer's history differently. The recipe of RepDistiller / mdistiller (and so
    the published CIFAR-100 numbers) decays every trainable weight, BatchNorm scales and biases
    included; so does this optimizer (`exclude_from_weight_decay` still works).

    Args:
        learning_rate: float or a schedule. Default 0.05.
        momentum: mu in [0, 1). Default 0.9.
        weight_decay: wd >= 0, coupled. Default 5e-4.
        name: optimizer name.
        **kwargs: `keras.optimizers.Optimizer` arguments (clipnorm, global_clipnorm, ...;
            Keras' decoupled `weight_decay` is replaced by the coupled one here).
    """

    def __init__(self, learning_rate=0.05, momentum=0.9, weight_decay=5e-4, name="torch_sgd", **kwargs):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r}: expected in [0, 1)")
        if weight_decay is None or not weight_decay >= 0:
            raise ValueError(f"weight_decay={weight_decay!r}: expected >= 0")
        kwargs.pop("use_ema", None)
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        self.momentum, self.coupled_weight_decay = float(momentum), float(weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables] \
            if self.momentum > 0 else []

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            g = g + self.coupled_weight_decay * variable
        if self.momentum > 0:
            buffer = self.momentums[self._get_variable_index(variable)]
            self.assign(buffer, self.momentum * buffer + g)
            g = buffer
        self.assign_sub(variable, lr * g)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        return {**config, "momentum": self.momentum, "weight_decay": self.coupled_weight_decay}
