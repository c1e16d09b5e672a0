"""Whole training models saved mid-run: a Distiller (with stateful objectives) and a ContrastiveTeacher
saved by `model.save` after an epoch, loaded by `keras.saving.load_model`, finish the run exactly as
an uninterrupted run does; Keras' BackupAndRestore resumes a distillation run."""

import keras
import numpy as np
import pytest

from keras_icckd import backbones, data
from keras_icckd.models import ContrastiveTeacher, Distiller
from keras_icckd.training import TorchSGD

N, BATCH, EPOCHS, SEED = 48, 16, 3, 0
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    labels = np.arange(N) % 4
    images = (rng.uniform(0, 255, size=(N, 16, 16, 3)) * 0.5 + labels[:, None, None, None] * 30).astype("uint8")
    return images, labels


def batches(task, initial_epoch, **options):
    return data.make_train_dataset(*task, BATCH, seed=SEED, mean=MEAN, std=STD, epochs=EPOCHS,
                                   initial_epoch=initial_epoch, **options)


def weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def assert_same_run(straight, resumed, history_a, history_b):
    for key in history_a:
        np.testing.assert_allclose(history_b[key], history_a[key][1:], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def new_distiller(teacher_weights):
    keras.utils.set_random_seed(1)
    teacher = backbones.get("resnet14", num_classes=4, input_shape=(16, 16, 3))
    teacher.set_weights(teacher_weights)
    student = backbones.get("resnet8", num_classes=4, input_shape=(16, 16, 3))
    # DKD's warm-up reads the epoch, DCD trains its scale, CRD keeps memory banks: all must come back
    distiller = Distiller(teacher, student, "kd:0.9,dkd(warmup_epochs=3):0.5,dcd:0.5,crd(num_negatives=8):0.8",
                          ce_weight=0.1, num_train=N)
    distiller.compile(optimizer=TorchSGD(0.05, momentum=0.9, weight_decay=5e-4))
    return distiller


def test_a_distiller_saved_mid_run_loads_and_finishes_like_an_uninterrupted_run(task, tmp_path):
    keras.utils.set_random_seed(0)
    teacher_weights = backbones.get("resnet14", num_classes=4, input_shape=(16, 16, 3)).get_weights()
    steps = data.steps_per_epoch(N, BATCH)
    straight = new_distiller(teacher_weights)
    options = straight.data_options()
    history = straight.fit(batches(task, 0, **options), epochs=EPOCHS, steps_per_epoch=steps, verbose=0).history

    first = new_distiller(teacher_weights)
    first.fit(batches(task, 0, **options), epochs=1, steps_per_epoch=steps, verbose=0)
    path = str(tmp_path / "distiller.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert type(resumed) is Distiller and resumed.weighted_objectives == first.weighted_objectives
    assert int(resumed.optimizer.iterations) == steps  # the optimizer came back with its state
    later = resumed.fit(batches(task, 1, **options), epochs=EPOCHS, initial_epoch=1, steps_per_epoch=steps,
                        verbose=0).history
    assert_same_run(straight, resumed, history, later)
    assert not resumed.teacher.trainable


def test_backup_and_restore_resumes_a_distillation_run(task, tmp_path):
    keras.utils.set_random_seed(0)
    teacher_weights = backbones.get("resnet14", num_classes=4, input_shape=(16, 16, 3)).get_weights()
    steps = data.steps_per_epoch(N, BATCH)

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt  # a run killed after its first epoch

    backup = str(tmp_path / "backup")
    first = new_distiller(teacher_weights)
    with pytest.raises(KeyboardInterrupt):
        first.fit(batches(task, 0, **first.data_options()), epochs=EPOCHS, steps_per_epoch=steps, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False), StopAfter()])
    again = new_distiller(teacher_weights)
    # BackupAndRestore restores the weights, the optimizer and the epoch; the data resumes at that epoch
    again.fit(batches(task, 1, **again.data_options()), epochs=EPOCHS, steps_per_epoch=steps, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(backup)])
    straight = new_distiller(teacher_weights)
    straight.fit(batches(task, 0, **straight.data_options()), epochs=EPOCHS, steps_per_epoch=steps, verbose=0)
    for a, b in zip(weights(straight), weights(again)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def new_teacher():
    keras.utils.set_random_seed(2)
    teacher = ContrastiveTeacher(backbones.get("resnet8", num_classes=4, input_shape=(16, 16, 3)),
                                 icc_lambda=0.1, icc_cache_size=32, projection_dim=16, save_cache=True)
    teacher.compile(optimizer=TorchSGD(0.05, momentum=0.9, weight_decay=5e-4))
    return teacher


def test_a_contrastive_teacher_saved_mid_run_finishes_like_an_uninterrupted_run(task, tmp_path):
    steps = data.steps_per_epoch(N, BATCH)
    options = new_teacher().data_options()
    straight = new_teacher()
    history = straight.fit(batches(task, 0, **options), epochs=EPOCHS, steps_per_epoch=steps, verbose=0).history
    first = new_teacher()
    first.fit(batches(task, 0, **options), epochs=1, steps_per_epoch=steps, verbose=0)
    path = str(tmp_path / "teacher.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert int(resumed.optimizer.iterations) == steps
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(resumed.cache.weights[0]),
                                  keras.ops.convert_to_numpy(first.cache.weights[0]))  # the ICC cache came back
    later = resumed.fit(batches(task, 1, **options), epochs=EPOCHS, initial_epoch=1, steps_per_epoch=steps,
                        verbose=0).history
    assert_same_run(straight, resumed, history, later)
