"""Learning-rate schedules expressed in epochs."""

import keras


def epoch_step_decay(base_lr, steps_per_epoch, decay_epochs=(), decay_rate=0.1):
    """Step decay: lr = base_lr * decay_rate ** (number of decay epochs passed).

    Returns a serialisable `keras.optimizers.schedules.PiecewiseConstantDecay` indexed by
    optimizer step, or the constant `base_lr` when there is nothing to decay.

    Args:
        base_lr: initial learning rate (> 0).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        decay_epochs: increasing epochs after which the rate is multiplied by decay_rate
            (PyTorch MultiStepLR milestones: [150] decays from the 151st epoch on).
        decay_rate: the factor (0 < rate <= 1).
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr={base_lr}: expected > 0")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: expected >= 1")
    decay_epochs = [int(e) for e in decay_epochs]
    if any(b <= a for a, b in zip(decay_epochs, decay_epochs[1:])) or any(e < 1 for e in decay_epochs):
        raise ValueError(f"decay_epochs={decay_epochs}: expected increasing epochs >= 1")
    if not decay_epochs:
        return float(base_lr)
    # PiecewiseConstantDecay switches after the boundary step: step e * steps_per_epoch
    # (the first step of 0-based epoch e) is the first with the decayed rate.
    boundaries = [e * steps_per_epoch - 1 for e in decay_epochs]
    values = [float(base_lr) * decay_rate**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
