"""Learning-rate schedules expressed in epochs."""

import keras


@keras.saving.register_keras_serializable(package="keras_icckd")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * decay_rate ** (milestones passed) * warm-up factor.

    With epoch = floor(step / steps_per_epoch) (0-based), a milestone m is passed once
    epoch >= m (PyTorch MultiStepLR: [150] decays from the 151st epoch on). The warm-up
    factor is min(1, (step + 1) / (warmup_epochs * steps_per_epoch)), a linear ramp over the
    first `warmup_epochs` epochs (1 when warmup_epochs is 0).
    """

    def __init__(self, base_lr, steps_per_epoch, decay_epochs=(), decay_rate=0.1, warmup_epochs=0):
        self.base_lr, self.steps_per_epoch = float(base_lr), int(steps_per_epoch)
        self.decay_epochs, self.decay_rate = [int(e) for e in decay_epochs], float(decay_rate)
        self.warmup_epochs = float(warmup_epochs)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        epoch = ops.floor(step / self.steps_per_epoch)
        passed = sum(ops.cast(epoch >= m, "float32") for m in self.decay_epochs) if self.decay_epochs else 0.0
        lr = self.base_lr * ops.power(self.decay_rate, passed)
        if self.warmup_epochs > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / (self.warmup_epochs * self.steps_per_epoch))
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch,
                "decay_epochs": self.decay_epochs, "decay_rate": self.decay_rate,
                "warmup_epochs": self.warmup_epochs}


def epoch_step_decay(base_lr, steps_per_epoch, decay_epochs=(), decay_rate=0.1, warmup_epochs=0):
    """Step decay: lr = base_lr * decay_rate ** (number of decay epochs passed), optional warm-up.

    Returns a serialisable `EpochStepDecay` indexed by optimizer step, or the constant
    `base_lr` when there is nothing to decay or warm up.

    Args:
        base_lr: initial learning rate (> 0).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        decay_epochs: increasing epochs after which the rate is multiplied by decay_rate
            (PyTorch MultiStepLR milestones: [150] decays from the 151st epoch on).
        decay_rate: the factor (0 < rate <= 1).
        warmup_epochs: epochs of linear warm-up from base_lr / (warmup steps) to base_lr (>= 0).
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr={base_lr}: expected > 0")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: expected >= 1")
    decay_epochs = [int(e) for e in decay_epochs]
    if any(b <= a for a, b in zip(decay_epochs, decay_epochs[1:])) or any(e < 1 for e in decay_epochs):
        raise ValueError(f"decay_epochs={decay_epochs}: expected increasing epochs >= 1")
    if not 0 < decay_rate <= 1:
        raise ValueError(f"decay_rate={decay_rate}: expected in (0, 1]")
    if not warmup_epochs >= 0:
        raise ValueError(f"warmup_epochs={warmup_epochs}: expected >= 0")
    if not decay_epochs and not warmup_epochs:
        return float(base_lr)
    return EpochStepDecay(base_lr, steps_per_epoch, decay_epochs, decay_rate, warmup_epochs)
