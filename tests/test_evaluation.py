"""Evaluation metrics against hand-computed values; --mode=evaluate on .keras and .tflite files;
plain models (a CE-only student, a teacher file evaluated through its backbone)."""

import doctest
import json
import math
import os

import keras
import numpy as np
import pytest

from keras_icckd import backbones, data, deploy, evaluation, export
from keras_icckd.models import ContrastiveTeacher
from test_run import run

# Four images, three classes. Rows are the softmax probabilities at the temperature in use; the
# logits are T * log(p), so that softmax(logits / T) = p exactly (up to rounding).
PROBS = np.array([[0.5, 0.25, 0.25],    # label 0: right, confidence 0.5
                  [0.25, 0.6, 0.15],    # label 0: wrong (1), the label 2nd
                  [0.125, 0.75, 0.125],  # label 1: right, confidence 0.75
                  [0.6, 0.3, 0.1]])     # label 2: wrong (0), the label 3rd
LABELS = np.array([0, 0, 1, 2])


def logits_at(temperature):
    return temperature * np.log(PROBS)


def entropy(p):
    return -sum(x * math.log(x) for x in p)


def test_top_k_per_class_and_confusion_by_hand():
    z = logits_at(1.0)
    assert evaluation.top_k_accuracy(z, LABELS, 1) == 50.0
    assert evaluation.top_k_accuracy(z, LABELS, 2) == 75.0
    assert evaluation.top_k_accuracy(z, LABELS, 5) == 100.0  # k capped at the 3 classes
    np.testing.assert_allclose(evaluation.per_class_accuracy(z, LABELS, 4), [50.0, 100.0, 0.0, np.nan])
    assert evaluation.confusion_matrix(np.argmax(z, 1), LABELS, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    # A tie goes to the lower class index, as argmax breaks it.
    assert evaluation.top_k_accuracy([[1.0, 1.0, 0.0]], [1], 1) == 0.0
    assert evaluation.top_k_accuracy([[1.0, 1.0, 0.0]], [1], 2) == 100.0


def test_expected_calibration_error_by_hand():
    # 3 bins (0, 1/3], (1/3, 2/3], (2/3, 1]. Bin 2 holds confidences 0.5 (right), 0.6 (wrong),
    # 0.6 (wrong): accuracy 1/3, mean confidence 1.7/3; bin 3 holds 0.75 (right).
    expected = 3 / 4 * abs(1 / 3 - 1.7 / 3) + 1 / 4 * abs(1.0 - 0.75)
    assert evaluation.expected_calibration_error(logits_at(1.0), LABELS, num_bins=3) == pytest.approx(expected)
    # One bin: |accuracy - mean confidence| over everything.
    assert evaluation.expected_calibration_error(logits_at(1.0), LABELS, num_bins=1) == pytest.approx(
        abs(0.5 - (0.5 + 0.6 + 0.75 + 0.6) / 4))
    with pytest.raises(ValueError, match="num_bins=0"):
        evaluation.expected_calibration_error(logits_at(1.0), LABELS, num_bins=0)


def test_soft_label_statistics_by_hand():
    stats = evaluation.soft_label_statistics(logits_at(4.0), LABELS, 3, temperature=4.0)
    h = [entropy(p) for p in PROBS]
    off = [0.5, 0.75, 0.25, 0.9]  # 1 - p(label)
    assert stats["temperature"] == 4.0
    assert stats["mean_entropy"] == pytest.approx(sum(h) / 4)
    assert stats["mean_off_class_mass"] == pytest.approx(sum(off) / 4)
    per_class = stats["per_class"]
    np.testing.assert_allclose(per_class["entropy_mean"], [(h[0] + h[1]) / 2, h[2], h[3]])
    np.testing.assert_allclose(per_class["entropy_std"], [abs(h[0] - h[1]) / 2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(per_class["off_class_mass_mean"], [0.625, 0.25, 0.9])
    np.testing.assert_allclose(per_class["off_class_mass_std"], [0.125, 0, 0], atol=1e-12)
    assert per_class["count"] == [2, 1, 1]
    means = stats["mean_over_classes"]
    assert means["entropy_mean"] == pytest.approx(((h[0] + h[1]) / 2 + h[2] + h[3]) / 3)
    assert means["off_class_mass_std"] == pytest.approx(0.125 / 3)
    # The statistics are about softmax(z / T): at another temperature they change.
    assert evaluation.soft_label_statistics(logits_at(4.0), LABELS, 3, 1.0)["mean_entropy"] < stats["mean_entropy"]


def test_evaluate_logits_gathers_everything_and_refuses_bad_input():
    report = evaluation.evaluate_logits(logits_at(4.0), LABELS, 3, temperature=4.0, num_bins=3)
    assert report["num_test"] == 4 and report["ece_bins"] == 3
    assert report["test_top1"] == 50.0 and report["test_top5"] == 100.0
    assert report["per_class_accuracy"] == [50.0, 100.0, 0.0]
    # The ECE is of softmax(z) at T = 1: these logits are 4 log p, sharper than p.
    assert report["ece"] == pytest.approx(evaluation.expected_calibration_error(logits_at(4.0), LABELS, 3))
    json.dumps(report)
    for args, message in (((logits_at(1.0), LABELS, 4), "logits have 3 classes"),
                          ((logits_at(1.0), [0, 1, 2, 3], 3), r"labels must be in \[0, 3\)"),
                          ((logits_at(1.0), LABELS[:3], 3), "3 labels for 4 rows"),
                          ((np.full((2, 3), np.nan), [0, 1], 3), "finite")):
        with pytest.raises(ValueError, match=message):
            evaluation.evaluate_logits(*args)


def test_docstring_examples():
    result = doctest.testmod(evaluation, extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0


# --- plain models and --mode=evaluate ---------------------------------------------------------

SYNTHETIC = ["--dataset=synthetic", "--synthetic_classes=3", "--synthetic_train_per_class=16",
             "--synthetic_test_per_class=8"]


@pytest.fixture(scope="module")
def plain_student(tmp_path_factory):
    """--mode=student without --teacher: resnet8 trained with CE alone for one epoch."""
    out = str(tmp_path_factory.mktemp("plain") / "student")
    result = run([*SYNTHETIC, "--mode=student", "--student_arch=resnet8", "--epochs=1", "--batch_size=8",
                  "--lr_decay_epochs=", "--diagnostic_examples=0", "--notensorboard", f"--output_dir={out}"])
    return out, result


def test_student_without_teacher_trains_with_cross_entropy_and_saves_the_plain_backbone(plain_student):
    out, result = plain_student
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["mode"] == "student" and metrics["teacher"] is None and metrics["objectives"] == {}
    assert set(metrics["history"][-1]) >= {"loss", "ce", "train_top1", "test_top1"}
    assert not any(k.endswith("_loss") and k != "test_loss" for k in metrics["history"][-1])
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert type(model) is backbones.ResNet and model.name == "resnet8"


@pytest.fixture(scope="module")
def files(plain_student, tmp_path_factory):
    """A teacher file (ContrastiveTeacher), the plain student, its float32 .tflite, the data."""
    root = tmp_path_factory.mktemp("evaluate")
    splits = data.make_synthetic(num_classes=3, train_per_class=16, test_per_class=8, seed=0)
    mean, std = data.normalization_for(splits)
    images = (splits.test_images.astype("float32") / 255.0 - np.float32(mean)) / np.float32(std)
    keras.utils.set_random_seed(0)
    teacher = ContrastiveTeacher(backbones.get("resnet8", num_classes=3), icc_cache_size=0)
    teacher_path = str(root / "teacher.keras")
    teacher.save(teacher_path)
    student_path = os.path.join(plain_student[0], "model.keras")
    student = export.load_student(student_path)
    export.export_tflite(student, str(root / "tflite"), test_images=images, quantizations=("float32",),
                         normalization={"mean": list(mean), "std": list(std)}, latency_runs=0)
    return {"teacher": (teacher_path, teacher.backbone), "student": (student_path, student),
            "tflite": str(root / "tflite" / "model_float32.tflite"), "splits": splits, "images": images}


def _evaluate(model_path, out, *args):
    result = run([*SYNTHETIC, "--mode=evaluate", f"--model={model_path}", "--diagnostic_examples=12",
                  f"--output_dir={out}", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["evaluation.png", "metrics.json"]
    return json.load(open(os.path.join(out, "metrics.json")))


def test_evaluate_a_teacher_file_through_its_backbone(files, tmp_path):
    path, backbone = files["teacher"]
    splits = files["splits"]
    metrics = _evaluate(path, str(tmp_path / "out"), "--evaluate_temperature=2")
    logits, _ = evaluation.predict(backbone, files["images"])
    expected = evaluation.evaluate_logits(logits, splits.test_labels, 3, temperature=2.0)
    assert metrics["format"] == "keras" and metrics["arch"] == "resnet8" and metrics["num_test"] == 24
    for key in ("test_top1", "test_top5", "per_class_accuracy", "confusion_matrix"):
        assert metrics[key] == expected[key], key
    assert metrics["ece"] == pytest.approx(expected["ece"], abs=1e-5)
    soft = metrics["soft_labels"]
    assert soft["temperature"] == 2.0
    assert soft["mean_entropy"] == pytest.approx(expected["soft_labels"]["mean_entropy"], abs=1e-5)
    np.testing.assert_allclose(soft["per_class"]["off_class_mass_std"],
                               expected["soft_labels"]["per_class"]["off_class_mass_std"], atol=1e-5)
    distances = metrics["class_distances"]
    assert distances["num_examples"] == 12 and 0 < distances["intra_inter_ratio"] < 2


def test_evaluate_a_tflite_export_of_the_plain_student(files, tmp_path):
    metrics = _evaluate(files["tflite"], str(tmp_path / "out"))
    logits, _ = evaluation.predict(files["student"][1], files["images"], embedding=False)
    expected = evaluation.evaluate_logits(logits, files["splits"].test_labels, 3)
    assert metrics["format"] == "tflite" and "class_distances" not in metrics
    assert metrics["test_top1"] == expected["test_top1"] and metrics["soft_labels"]["temperature"] == 4.0
    assert metrics["soft_labels"]["mean_off_class_mass"] == pytest.approx(
        expected["soft_labels"]["mean_off_class_mass"], abs=1e-5)


@pytest.mark.parametrize("input_format", ["normalized", "uint8"])
def test_evaluate_an_exported_plain_keras_file(files, tmp_path, input_format):
    """A plain .keras file (built-in layers only, as --export_formats=keras writes) is evaluated like the
    backbone it came from: fed normalised images or, for the uint8 format, the raw pixels."""
    splits = files["splits"]
    mean, std = data.normalization_for(splits)
    plain = deploy.plain_model(files["student"][1], input_format=input_format,
                               normalization={"mean": list(mean), "std": list(std)})
    path = str(tmp_path / "plain.keras")
    deploy.save_plain(plain, path)
    metrics = _evaluate(path, str(tmp_path / "out"))
    logits, _ = evaluation.predict(files["student"][1], files["images"], embedding=False)
    expected = evaluation.evaluate_logits(logits, splits.test_labels, 3)
    assert metrics["format"] == "keras (plain)" and "class_distances" not in metrics
    assert metrics["test_top1"] == expected["test_top1"]
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["soft_labels"]["mean_entropy"] == pytest.approx(expected["soft_labels"]["mean_entropy"], abs=1e-4)
    assert metrics["normalization"]["mean"] == pytest.approx(list(mean))


def test_evaluate_refuses_a_keras_file_that_is_not_ours(tmp_path):
    inputs = keras.Input((8, 8, 3))
    foreign = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    path = str(tmp_path / "foreign.keras")
    foreign.save(path)
    out = str(tmp_path / "out")
    result = run([*SYNTHETIC, "--mode=evaluate", f"--model={path}", f"--output_dir={out}"])
    assert result.returncode != 0 and "not a keras_icckd student backbone" in result.stderr, result.stderr[-2000:]
    assert not os.path.isdir(out) or not os.listdir(out)


def test_evaluate_refuses_a_model_for_other_data(files, tmp_path):
    out = str(tmp_path / "out")
    result = run(["--dataset=synthetic", "--synthetic_classes=4", "--mode=evaluate", f"--model={files['tflite']}",
                  f"--output_dir={out}"])
    assert result.returncode != 0 and "was made for 3 classes" in result.stderr, result.stderr[-2000:]
    assert not os.listdir(out)
