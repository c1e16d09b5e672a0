"""The recipe as library API: a script's run is the command line's run, the registries feed the
command line, data locations stay outside the package, and models refuse input they cannot train on."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

from helpers import REPO_ROOT
from helpers import to_numpy
from keras_icckd import backbones
from keras_icckd import cli
from keras_icckd import data
from keras_icckd import objectives
from keras_icckd import recipes
from keras_icckd.data import datasets
from keras_icckd.data import locations
from keras_icckd.models import Classifier
from keras_icckd.models import Distiller

RUN = os.path.join(REPO_ROOT, "experiments", "run.py")
ENV = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT)


def readme_script_example():
    text = open(os.path.join(REPO_ROOT, "README.md")).read()
    block = text.split("<!-- script-example:begin -->")[1].split("<!-- script-example:end -->")[0]
    return block.split("```python")[1].split("```")[0]


def command_line_flags(recorded):
    """The flags of a command that repeats a recorded run (every option that differs from its default)."""
    defaults = recipes.RunConfig.defaults()
    out = []
    for name, value in recorded.items():
        if name in ("output_dir", "teacher") or value == defaults[name]:
            continue
        value = ",".join(value) if isinstance(value, list) else value
        out.append(f"--{name}={value}" if not isinstance(value, bool) else f"--{'' if value else 'no'}{name}")
    return out


def test_readme_script_example_runs_and_equals_the_command_line(tmp_path):
    script = subprocess.run([sys.executable, "-c", readme_script_example()], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=900)
    assert script.returncode == 0, script.stderr[-3000:]
    assert os.path.isfile(tmp_path / "runs" / "script" / "student.csv")  # the user's callback ran
    runs = {}
    for mode in ("teacher", "student"):
        recorded = json.load(open(tmp_path / "runs" / "script" / mode / "metrics.json"))
        out = tmp_path / "cli" / mode
        args = command_line_flags(recorded["flags"]) + [f"--output_dir={out}"]
        if mode == "student":
            args.append(f"--teacher={tmp_path / 'cli' / 'teacher' / 'model.keras'}")
        result = subprocess.run([sys.executable, RUN, *args], cwd=tmp_path, env=ENV, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[mode] = recorded, json.load(open(out / "metrics.json"))
    for mode, (from_script, from_cli) in runs.items():
        assert sorted(from_script) == sorted(from_cli), mode
        differ = {k for k in from_script["flags"] if from_script["flags"][k] != from_cli["flags"][k]}
        assert differ <= {"output_dir", "teacher"}, differ
        for a, b in zip(from_script["history"], from_cli["history"]):
            for key in ("loss", "ce", "test_top1"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=f"{mode} {key}")
    assert runs["student"][0]["teacher_arch"] == "resnet8" and runs["teacher"][0]["views"] == 2


def test_every_option_is_a_flag_and_back():
    values = flags.FlagValues()
    cli.define_flags(values)
    names = {option.name for option in recipes.RunConfig.options()}
    assert set(values) == names | {"check_flags"}
    values(["keras-icckd", "--output_dir=x", "--mode=student", "--lr_decay_epochs=3,5", "--views=auto"])
    config = cli.config_from_flags(values)
    assert config.lr_decay_epochs == ["3", "5"] and config.mode == "student"
    assert config.given == {"output_dir", "mode", "lr_decay_epochs", "views"}
    assert config.is_given("views") and not config.is_given("arch")
    assert recipes.RunConfig(lr_decay_epochs=[3, 5]).lr_decay_epochs == ["3", "5"]


def test_the_command_line_lists_the_registries():
    values = flags.FlagValues()
    cli.define_flags(values)
    assert tuple(values["dataset"].parser.enum_values) == datasets.names()
    help_text = values["objectives"].help
    for name in objectives.names():
        assert name in help_text
    assert "msdcrd (EXPERIMENTAL)" in help_text


def tiny_dataset(data_dir, num_classes=3):
    return data.make_synthetic(num_classes=num_classes, train_per_class=8, test_per_class=4,
                               image_shape=(16, 16, 3), seed=0)


def test_a_registered_dataset_is_a_choice_and_trains(tmp_path):
    datasets.register(datasets.Dataset("tiny_for_test", tiny_dataset, "a test dataset", num_classes=3,
                                       needs_location=False))
    try:
        with pytest.raises(ValueError, match="registered already"):
            datasets.register(datasets.Dataset("tiny_for_test", tiny_dataset, "again"))
        values = flags.FlagValues()
        cli.define_flags(values)
        values(["keras-icckd", "--dataset=tiny_for_test", f"--output_dir={tmp_path / 'run'}"])
        config = cli.config_from_flags(values).replace(
            arch="resnet8", epochs=1, batch_size=8, eval_batch_size=12, lr_decay_epochs=[1], diagnostic_examples=0,
            tensorboard=False)
        out = recipes.run(config)
        assert out.results["num_classes"] == 3 and out.results["views"] == 2
        assert os.path.isfile(out.files["model"])
    finally:
        datasets._REGISTRY.pop("tiny_for_test")
    with pytest.raises(data.DataError, match="Unknown data source 'tiny_for_test'; valid names: cifar10"):
        data.load("tiny_for_test")


def test_bad_options_are_refused_before_any_work(tmp_path):
    out = str(tmp_path / "never")
    with pytest.raises(recipes.ConfigError, match=r"--arch='resnet9' is not allowed: expected one of"):
        recipes.run(recipes.RunConfig(arch="resnet9", output_dir=out))
    with pytest.raises(recipes.ConfigError, match=r"--dataset='imagenet' is not allowed: expected one of cifar10"):
        recipes.run(recipes.RunConfig(dataset="imagenet", output_dir=out))
    with pytest.raises(recipes.ConfigError, match=r"--output_dir=None is not allowed"):
        recipes.run(recipes.RunConfig())
    with pytest.raises(recipes.ConfigError, match=r"--mode='student' is not allowed: expected 'teacher'"):
        recipes.train_teacher(recipes.RunConfig(mode="student", output_dir=out))
    with pytest.raises(TypeError, match="RunConfig"):
        recipes.run({"mode": "teacher"})
    assert not os.path.exists(out)  # refused before anything was made


def test_data_locations_come_from_the_environment_or_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv(locations.DATA_ENV, str(tmp_path))
    os.makedirs(tmp_path / "tinyimagenet200-jpeg")
    assert data.default_data_dir("tinyimagenet") == str(tmp_path / "tinyimagenet200-jpeg")
    assert locations.data_roots()[0] == str(tmp_path)
    assert locations.data_roots()[1] == os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "datasets"))
    # installed (site-packages): no fallback beside the package, only the environment variable
    installed = os.path.join(str(tmp_path), "lib", "python3", "site-packages", "keras_icckd", "data", "locations.py")
    monkeypatch.setattr(locations, "__file__", installed)
    assert locations.checkout_root() is None and locations.data_roots() == [str(tmp_path)]
    monkeypatch.delenv(locations.DATA_ENV)
    assert locations.data_roots() == [] and data.default_data_dir("tinyimagenet") is None
    with pytest.raises(data.DataError, match="no data_dir given and no data folder to look in.*KERAS_ICCKD_DATA"):
        data.load("tinyimagenet")


@pytest.fixture(scope="module")
def task():
    return tiny_dataset(None, num_classes=3)


def train_batches(task, **options):
    mean, std = data.normalization_for(task)
    return data.make_train_dataset(task.train_images, task.train_labels, 8, seed=0, mean=mean, std=std,
                                   epochs=1, **options)


def test_a_distiller_refuses_batches_without_the_inputs_its_objectives_need(task):
    keras.utils.set_random_seed(0)
    teacher = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    distiller = Distiller(teacher, backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3)), "kd:0.9,crd:0.8",
                          num_train=len(task.train_labels))
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"objectives \['crd'\] need the inputs \['contrast_index', 'index'\].*"
                                         r"data_options\(\)"):
        distiller.fit(train_batches(task), epochs=1, steps_per_epoch=2, verbose=0)
    # new networks: on JAX a fit that raised while tracing leaves the models it touched unusable
    teacher = backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3))
    distiller = Distiller(teacher, backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3)), "kd:0.9,crd:0.8",
                          num_train=len(task.train_labels))
    distiller.compile(optimizer="sgd")
    history = distiller.fit(train_batches(task, **distiller.data_options()), epochs=1, steps_per_epoch=2,
                            verbose=0).history
    assert history["crd_loss"][0] > 0


def test_classifier_is_cross_entropy_alone_and_round_trips(task, tmp_path):
    keras.utils.set_random_seed(0)
    model = Classifier(backbones.get("resnet8", num_classes=3, input_shape=(16, 16, 3)))
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    assert model.data_options() == {}
    x, y = next(iter(train_batches(task)))
    x, y = to_numpy(x), to_numpy(y)
    logits = to_numpy(model(x)).astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(to_numpy(model.compute_loss(x, y, model(x), training=True)))
    np.testing.assert_allclose(loss, -log_p[np.arange(len(y)), y].mean(), rtol=1e-5)
    history = model.fit(train_batches(task), epochs=1, steps_per_epoch=2, verbose=0).history
    np.testing.assert_allclose(history["loss"], history["ce"], rtol=1e-5)
    assert {v.path for v in model.trainable_variables} == {v.path for v in model.backbone.trainable_variables}
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Classifier)
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-5)
