"""--augment: Keras preprocessing layers on the training batches, seeded per (seed, epoch, batch),
mixing with soft labels, exact resume, clear refusals."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import REPO_ROOT, backend, kill_after_first_checkpoint
from keras_icckd import backbones, data
from keras_icckd.data import augment
from keras_icckd.models import Classifier, Distiller
from keras_icckd.recipes import ConfigError, RunConfig, checks

RUN = [sys.executable, os.path.join(REPO_ROOT, "experiments", "run.py")]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_parse_reads_layers_and_options_and_refuses_the_rest():
    assert augment.parse("randaugment, mixup(alpha=0.4)") == [("randaugment", {}), ("mixup", {"alpha": 0.4})]
    assert augment.parse("random_rotation(factor=0.1;fill_mode='constant')") == \
        [("random_rotation", {"factor": 0.1, "fill_mode": "constant"})]
    assert augment.parse("") == [] and augment.mixes("cutmix") and not augment.mixes("randaugment")
    for spec, message in (("autoaugment", "unknown layer 'autoaugment'"), ("mixup,mixup", "given twice"),
                          ("mixup(alpha=)", "not key=value"), ("mixup(beta=1)", "beta"),
                          ("randaugment(num_ops", "expected name")):
        with pytest.raises(ValueError, match=message):
            augment.parse(spec)


def pixels(n=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, 16, 16, 3)).astype("float32")


def test_an_augmentation_is_a_function_of_seed_epoch_and_batch():
    a = augment.Augmenter("randaugment,cutmix", seed=3, num_classes=4)
    labels = np.arange(16) % 4
    first, soft = a(pixels(), labels, epoch=2, step=5)
    again, soft_again = augment.Augmenter("randaugment,cutmix", seed=3, num_classes=4)(pixels(), labels, 2, 5)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(soft, soft_again)
    for other in (a(pixels(), labels, 2, 6), a(pixels(), labels, 3, 5),
                  augment.Augmenter("randaugment,cutmix", seed=4, num_classes=4)(pixels(), labels, 2, 5)):
        assert not np.array_equal(first, other[0])
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 255
    # mixing: soft rows that sum to one, mostly the image's own class
    assert soft.shape == (16, 4) and np.allclose(soft.sum(-1), 1.0, atol=1e-5)
    assert np.mean(np.argmax(soft, -1) == labels) > 0.5
    plain, same = augment.Augmenter("random_flip(mode='horizontal')", seed=0, num_classes=4)(pixels(), labels, 0, 0)
    np.testing.assert_array_equal(same, labels)  # no mixing: the integer labels pass through


@pytest.mark.parametrize("name", ["numpy", "tf_data"])
def test_a_resumed_pipeline_gives_the_batches_of_an_uninterrupted_one(name):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, size=(24, 16, 16, 3)).astype("uint8"), np.arange(24) % 4
    pipeline = data.input_pipeline(name)

    def dataset(initial_epoch):
        base = pipeline.make_train_dataset(images, labels, 8, seed=1, mean=MEAN, std=STD, epochs=3,
                                           initial_epoch=initial_epoch)
        return augment.augmented(base, "random_contrast(factor=0.5),mixup", seed=1, mean=MEAN, std=STD,
                                 num_classes=4, steps=3, initial_epoch=initial_epoch, epochs=3)

    straight, resumed = dataset(0), dataset(1)
    assert len(straight) == 9 and len(resumed) == 6
    for g in range(6):
        (x1, y1), (x2, y2) = straight[3 + g], resumed[g]
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert y1.shape == (8, 4)
    assert not np.array_equal(straight[0][0], straight[3][0])  # another epoch, other draws
    unchanged = pipeline.make_train_dataset(images, labels, 8, seed=1, mean=MEAN, std=STD, epochs=1)
    assert augment.augmented(unchanged, "", seed=1, mean=MEAN, std=STD, num_classes=4, steps=3, initial_epoch=0,
                             epochs=1) is unchanged


def test_soft_labels_train_the_student_and_refuse_label_reading_objectives():
    keras.utils.set_random_seed(0)
    teacher = backbones.get("resnet14", num_classes=4, input_shape=(16, 16, 3))
    student = backbones.get("resnet8", num_classes=4, input_shape=(16, 16, 3))
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    soft = np.eye(4, dtype="float32")[np.arange(8) % 4] * 0.7 + 0.3 * np.eye(4, dtype="float32")[(np.arange(8) + 1) % 4]
    distiller = Distiller(teacher, student, "kd:0.9", ce_weight=0.1)
    distiller.compile(optimizer="sgd")
    logits = keras.ops.convert_to_numpy(student(x, training=False)["logits"])
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    expected_ce = float(np.mean(-(soft * log_p).sum(-1)))
    result = distiller.evaluate(x, soft, batch_size=8, verbose=0, return_dict=True)
    assert result["ce"] == pytest.approx(expected_ce, rel=1e-4)  # soft-target cross-entropy
    classifier = Classifier(student)
    classifier.compile(optimizer="sgd")
    assert classifier.evaluate(x, soft, batch_size=8, verbose=0, return_dict=True)["ce"] == \
        pytest.approx(expected_ce, rel=1e-4)
    fresh = backbones.get("resnet8", num_classes=4, input_shape=(16, 16, 3))
    dkd = Distiller(teacher, fresh, "kd:0.9,dkd:1", ce_weight=0.1)
    dkd.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"\['dkd'\] read each image's label.*soft label rows"):
        dkd.fit(x, soft, batch_size=8, epochs=1, verbose=0)


def test_the_checks_refuse_what_augmentation_cannot_do(tmp_path):
    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(b"")
    base = dict(dataset="synthetic", output_dir=str(tmp_path / "out"))
    for config, message in (
            (RunConfig(mode="teacher", augment="autoaugment", **base), "unknown layer 'autoaugment'"),
            (RunConfig(mode="teacher", augment="mixup", **base), "no mixing layer \\(mixup\\) with --mode=teacher"),
            (RunConfig(mode="student", teacher=str(teacher), objectives="kd:0.9,dkd:1", augment="cutmix", **base),
             r"with the objectives \['dkd'\]"),
            (RunConfig(mode="student", augment="randaugment", stream=True, **base), "unset with --stream")):
        with pytest.raises(ConfigError, match=f"--augment=.*{message}"):
            checks.validate(config)
    checks.validate(RunConfig(mode="student", teacher=str(teacher), augment="randaugment,mixup(alpha=0.2)", **base))


FLAGS = ["--dataset=synthetic", "--synthetic_classes=3", "--synthetic_train_per_class=32",
         "--synthetic_test_per_class=4", "--batch_size=16", "--lr_decay_epochs=", "--diagnostic_examples=0",
         "--notensorboard"]


def cli(args):
    env = dict(os.environ, KERAS_BACKEND=backend(), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO_ROOT)


def test_cli_kd_with_randaugment_and_mixup_resumes_to_the_uninterrupted_result(tmp_path):
    teacher = cli([*FLAGS, "--mode=teacher", "--arch=resnet8", "--epochs=1", "--icc_lambda=0",
                   f"--output_dir={tmp_path / 'teacher'}"])
    assert teacher.wait(timeout=600) == 0, teacher.stderr.read()[-3000:]
    student = [*FLAGS, "--mode=student", "--student_arch=resnet8", f"--teacher={tmp_path / 'teacher' / 'model.keras'}",
               "--epochs=3", "--objectives=kd:0.9", "--augment=randaugment(num_ops=1),mixup(alpha=0.4)"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    reference = cli([*student, f"--output_dir={straight}"])
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    victim = cli([*student, f"--output_dir={killed}"])
    epoch = kill_after_first_checkpoint(victim, os.path.join(killed, "checkpoint.npz"))
    assert 1 <= epoch < 3, f"the run was not interrupted mid-way (checkpoint after epoch {epoch})"
    again = cli([*student, f"--output_dir={killed}"])
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert f"resuming {killed} after epoch {epoch} of 3" in err
    a, b = (json.load(open(os.path.join(d, "metrics.json"))) for d in (straight, killed))
    assert b["flags"]["augment"] == "randaugment(num_ops=1),mixup(alpha=0.4)"
    np.testing.assert_allclose([r["loss"] for r in b["history"]], [r["loss"] for r in a["history"]], rtol=1e-5)
    np.testing.assert_allclose([r["ce"] for r in b["history"]], [r["ce"] for r in a["history"]], rtol=1e-5)
    assert b["test_top1"] == pytest.approx(a["test_top1"])
