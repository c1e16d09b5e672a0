"""TorchSGD and EpochStepDecay against a NumPy transcription of torch.optim.SGD + MultiStepLR."""

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_icckd import training


def torch_sgd_reference(w, b, x, y, lrs, momentum, weight_decay):
    """NumPy transcription of torch.optim.SGD.step (dampening 0, nesterov False) on an MSE loss."""
    w, b = np.float64(w), np.float64(b)
    buffers = [None, None]
    for lr in lrs:
        residual = x @ w + b - y
        grads = [2 * x.T @ residual / residual.size, 2 * residual.sum(0) / residual.size]
        params = [w, b]
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + weight_decay * p  # weight_decay != 0: d_p = d_p.add(p, alpha=weight_decay)
            if momentum != 0:
                buffers[i] = g.copy() if buffers[i] is None else momentum * buffers[i] + g
                g = buffers[i]
            params[i] = p - lr * g
        w, b = params
    return w, b


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 5e-4), (0.9, 0.0), (0.0, 1e-2)])
def test_fit_matches_pytorch_sgd_across_an_lr_drop(momentum, weight_decay):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="glorot_uniform")])
    w0, b0 = [to_numpy(v).copy() for v in model.weights]
    # 1 step per epoch, 10 epochs, x0.1 after epochs 4 and 7
    schedule = training.epoch_step_decay(0.1, steps_per_epoch=1, decay_epochs=[4, 7], decay_rate=0.1)
    model.compile(optimizer=training.TorchSGD(schedule, momentum=momentum, weight_decay=weight_decay), loss="mse")
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=8, epochs=10, shuffle=False, verbose=0)
    lrs = [0.1] * 4 + [0.01] * 3 + [0.001] * 3
    w, b = torch_sgd_reference(w0, b0, x, y, lrs, momentum, weight_decay)
    np.testing.assert_allclose(to_numpy(model.weights[0]), w, atol=1e-6)
    np.testing.assert_allclose(to_numpy(model.weights[1]), b, atol=1e-6)


def test_differs_from_keras_sgd_with_decoupled_decay():
    """The point of TorchSGD: Keras' SGD(weight_decay=...) takes a different path."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    finals = []
    for optimizer in (training.TorchSGD(0.1, 0.9, 1e-1), keras.optimizers.SGD(0.1, 0.9, weight_decay=1e-1)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0)
        finals.append(to_numpy(model.weights[0]))
    assert np.abs(finals[0] - finals[1]).max() > 1e-4


def test_weight_decay_covers_every_trainable_weight_and_exclusions_work():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    optimizer = training.TorchSGD(1.0, momentum=0.0, weight_decay=0.5)
    optimizer.build(model.trainable_variables)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    for v in model.trainable_variables:  # gamma = 1, beta = 0 initially: give them values
        v.assign(np.full(v.shape, 2.0, "float32"))
    zeros = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zeros, model.trainable_variables))
    for v in model.trainable_variables:  # w <- w - lr * wd * w = 2 - 1 = 1 for kernel, bias, gamma, beta
        np.testing.assert_allclose(to_numpy(v), 1.0)
    assert len(before) == 4
    optimizer = training.TorchSGD(1.0, momentum=0.0, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["bias", "beta"])
    optimizer.build(model.trainable_variables)
    optimizer.apply_gradients(zip(zeros, model.trainable_variables))
    values = {v.path.split("/")[-1]: float(to_numpy(v).ravel()[0]) for v in model.trainable_variables}
    assert values == {"kernel": 0.5, "bias": 1.0, "gamma": 0.5, "beta": 1.0}


def test_serialisation_round_trip_and_errors():
    schedule = training.epoch_step_decay(0.05, 10, [150, 180, 210], 0.1, warmup_epochs=2)
    optimizer = training.TorchSGD(schedule, momentum=0.9, weight_decay=5e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, training.TorchSGD)
    assert (restored.momentum, restored.coupled_weight_decay) == (0.9, 5e-4)
    assert isinstance(restored._learning_rate, training.EpochStepDecay)
    assert restored._learning_rate.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="momentum"):
        training.TorchSGD(momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        training.TorchSGD(weight_decay=-1)


def test_epoch_step_decay_with_warmup():
    schedule = training.epoch_step_decay(0.1, steps_per_epoch=10, decay_epochs=[3], decay_rate=0.1, warmup_epochs=2)
    lrs = [float(to_numpy(schedule(step))) for step in (0, 9, 19, 20, 29, 30)]
    np.testing.assert_allclose(lrs, [0.1 / 20, 0.1 / 2, 0.1, 0.1, 0.1, 0.01], rtol=1e-6)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(to_numpy(restored(4))) == pytest.approx(0.1 * 5 / 20)
    with pytest.raises(ValueError, match="warmup_epochs"):
        training.epoch_step_decay(0.1, 10, [], warmup_epochs=-1)


def test_distiller_decays_student_and_heads_never_the_teacher():
    from keras_icckd import backbones
    from keras_icckd.models import Distiller

    keras.utils.set_random_seed(0)
    teacher = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    distiller = Distiller(teacher, backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3)),
                          "kd:0.9,crd:0.8,dcd:1", num_train=16)
    distiller.compile(optimizer=training.TorchSGD(1.0, momentum=0.0, weight_decay=0.5))
    trainable = distiller.trainable_variables
    assert not {id(v) for v in teacher.variables} & {id(v) for v in trainable}
    names = " ".join(v.path for v in trainable)
    for part in ("gamma", "beta", "bias", "embed_student", "dcd/log_scale"):  # BN, biases, heads, DCD temperature
        assert part in names, part
    for v in trainable:
        v.assign(np.full(v.shape, 2.0, "float32"))
    teacher_before = [to_numpy(v).copy() for v in teacher.variables]
    distiller.optimizer.apply_gradients(zip([np.zeros(v.shape, "float32") for v in trainable], trainable))
    for v in trainable:
        np.testing.assert_allclose(to_numpy(v), 1.0, err_msg=v.path)
    for v, before in zip(teacher.variables, teacher_before):
        np.testing.assert_array_equal(to_numpy(v), before)
