"""PyTorch checkpoint import: every layout against a PyTorch network built here, refusals, real files.

The PyTorch networks (tests/torch_cifar.py) get random weights and BatchNorm statistics and are
saved in both torch formats (zip and legacy) under the usual wrappers; the imported backbone,
fed images normalised the project's way, must give the PyTorch logits for the same pixels
(inference mode, max |difference| <= 1e-4), on whichever backend runs the suite.
"""

import json
import os
import sys
import tarfile

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the importer's tests need PyTorch (requirements-test.txt)")

import torch_cifar  # noqa: E402
import torch_imagenet  # noqa: E402
from helpers import REPO_ROOT, outputs_under_other_backend  # noqa: E402
from keras_icckd import backbones  # noqa: E402
from keras_icckd.backbones import torch_import  # noqa: E402
from keras_icckd.data import sources  # noqa: E402

TOLERANCE = 1e-4
VGG8 = ((64,), (128,), (256,), (512,), (512,))

# preset -> (PyTorch network, number of classes, wrapper of the legacy file)
LAYOUTS = {
    "resnet8": (lambda: torch_cifar.CifarResNet(8), 10, "state_dict"),
    "resnet8x4": (lambda: torch_cifar.CifarResNet(8, (32, 64, 128, 256), num_classes=100), 100, "model"),
    "resnet8_option_a": (lambda: torch_cifar.CifarResNet(8, shortcut="option_a", head="linear"), 10, "net"),
    "wrn_16_1": (lambda: torch_cifar.WideResNet(16, 1), 10, "state_dict"),
    "vgg8": (lambda: torch_cifar.VGG(VGG8), 10, "model"),
    "mobilenetv2": (lambda: torch_cifar.MobileNetV2(6, 0.5), 10, "net"),
    "shufflenetv2": (lambda: torch_cifar.ShuffleNetV2(), 10, "state_dict"),
    "resnet18_imagenet": (lambda: torch_imagenet.TorchvisionResNet("basic", (2, 2, 2, 2)), 10, "model"),
    "mobilenetv1_imagenet": (lambda: torch_imagenet.MobileNetV1(), 10, "state_dict"),
}


def pixels(n, seed=0, shape=(32, 32, 3)):
    """Random images in [0, 1], the same pixels for both frameworks."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape)).astype("float32") / 255.0


def normalised(images, spec):
    return (images - np.asarray(spec["mean"], "float32")) / np.asarray(spec["std"], "float32")


def torch_logits(net, images, normalization):
    x = torch.from_numpy(normalised(images, normalization).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return net.eval()(x).numpy()


def keras_logits(model, images):
    """Inference-mode logits for pixels in [0, 1], normalised as the model records it is fed.

    JAX runs the whole network compiled (predict): op by op it compiles every layer apart.
    """
    x = normalised(images, model.input_normalization["feed"])
    if keras.backend.backend() == "jax":
        return model.predict(x, verbose=0)["logits"]
    return keras.ops.convert_to_numpy(model(x, training=False)["logits"])


def save_both_formats(net, folder, wrapper):
    """The zip file holds the bare state_dict; the legacy one wraps it, with 'module.' prefixes."""
    state = net.state_dict()
    zip_path, legacy_path = os.path.join(folder, "zip.pt"), os.path.join(folder, "legacy.th")
    torch.save(state, zip_path)
    torch.save({wrapper: {f"module.{k}": v for k, v in state.items()}, "best_acc": 71.5, "epoch": 240},
               legacy_path, _use_new_zipfile_serialization=False)
    return zip_path, legacy_path


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """layouts(preset) -> (preset, classes, zip file, legacy file, images, PyTorch logits), made once."""
    made = {}

    def get(name):
        if name not in made:
            build, classes, wrapper = LAYOUTS[name]
            torch.manual_seed(0)
            net = torch_cifar.randomize(build(), seed=1)
            folder = str(tmp_path_factory.mktemp(name))
            zip_path, legacy_path = save_both_formats(net, folder, wrapper)
            images = pixels(4)
            reference = torch_logits(net, images, sources.parse_normalization("imagenet"))
            made[name] = name, classes, zip_path, legacy_path, images, reference
        return made[name]

    return get


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_imports_exactly_from_both_formats(layouts, name):
    name, classes, zip_path, legacy_path, images, reference = layouts(name)
    assert np.std(reference) > 0.1  # logits that depend on the weights, not a constant
    with open(legacy_path, "rb") as f:  # the legacy format is a pickle, not a zip archive
        assert f.read(2) != b"PK"
    from_zip, from_legacy = (torch_import.load_state_dict(p) for p in (zip_path, legacy_path))
    assert list(from_zip) == list(from_legacy)
    assert all(np.array_equal(from_zip[k], from_legacy[k]) for k in from_zip)
    # Half the layouts import the zip file with the architecture inferred, half the legacy file
    # with it named (both files hold the same arrays, checked above).
    if sorted(LAYOUTS).index(name) % 2:
        model = backbones.from_torch(legacy_path, name, torch_normalization="imagenet")
    else:
        model = backbones.from_torch(zip_path, torch_normalization="imagenet")
    assert model.name == name and model.num_classes == classes
    assert model.input_normalization["network"]["name"] == "imagenet"
    assert model.input_normalization["feed"]["name"] == ("cifar100" if classes == 100 else "cifar10")
    diff = np.abs(keras_logits(model, images) - reference).max()
    assert diff <= TOLERANCE, (name, diff)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_parameter_counts_equal_pytorch(name):
    build, classes, _ = LAYOUTS[name]
    torch_count = sum(p.numel() for p in build().parameters())
    with keras.StatelessScope(initialize_variables=False):
        model = backbones.get(name, num_classes=classes)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    keras.utils.clear_session()
    assert count == torch_count


def test_torchvision_bottleneck_blocks_map_onto_the_imagenet_resnet():
    """The bottleneck path of the torchvision layout (resnet50's), on a one-block-per-stage network."""
    from keras_icckd.backbones.imagenet import ImageNetResNet

    torch.manual_seed(0)
    net = torch_cifar.randomize(torch_imagenet.TorchvisionResNet("bottleneck", (1, 1, 1, 1)), seed=2)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    family = next(f for f in torch_import._registry() if f.name == "torchvision_resnet")
    assert family.matches(state) and family.infer(state) == {"block": "bottleneck", "blocks": (1, 1, 1, 1)}
    assert [f.name for f in torch_import._registry() if f.matches(state)] == ["torchvision_resnet"]
    imagenet = sources.parse_normalization("imagenet")
    model = ImageNetResNet("bottleneck", (1, 1, 1, 1), num_classes=10, input_shape=(32, 32, 3),
                           input_normalization={"network": imagenet, "feed": imagenet})
    family.assign(model, state)
    images = pixels(4)
    diff = np.abs(keras_logits(model, images) - torch_logits(net, images, imagenet)).max()
    assert diff <= TOLERANCE, diff


def test_input_normalization_keeps_the_borders_exact():
    # One conv layer: with the renormalisation folded into the kernel, the zero-padded border
    # pixels would differ; as a first layer, every output pixel equals PyTorch's.
    torch.manual_seed(0)
    net = torch_cifar.randomize(torch_cifar.CifarResNet(8), seed=3)
    images = pixels(2, seed=5)
    spec = {"network": sources.parse_normalization("imagenet"), "feed": sources.parse_normalization("cifar10")}
    model = backbones.get("resnet8", num_classes=10)
    model = type(model).from_config({**model.get_config(), "input_normalization": spec})
    stem = keras.Model(model.inputs, model.output["preact0"])
    family = next(f for f in torch_import._registry() if f.name == "cifar_resnet")
    family.assign(model, {k: v.numpy() for k, v in net.state_dict().items()})
    x = torch.from_numpy(normalised(images, spec["network"]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        reference = net.bn1(net.conv1(x)).numpy().transpose(0, 2, 3, 1)
    out = stem.predict(normalised(images, spec["feed"]), verbose=0)
    np.testing.assert_allclose(out, reference, atol=1e-5)
    np.testing.assert_allclose(out[:, 0], reference[:, 0], atol=1e-5)  # the top border row


def test_saved_import_keeps_its_normalization_and_loads_on_the_other_backend(layouts, tmp_path):
    _, _, zip_path, _, images, reference = layouts("resnet8_option_a")
    model = backbones.from_torch(zip_path, torch_normalization="imagenet")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.input_normalization == model.input_normalization
    assert np.abs(keras_logits(loaded, images) - reference).max() <= TOLERANCE
    feed = normalised(images, model.input_normalization["feed"])
    other = outputs_under_other_backend(path, feed, tmp_path)
    assert np.abs(other["logits"] - reference).max() <= TOLERANCE


# --- refusals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet8_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torch_cifar.randomize(torch_cifar.CifarResNet(8), seed=2)
    folder = tmp_path_factory.mktemp("refusals")
    path = str(folder / "resnet8.pt")
    torch.save(net.state_dict(), path)
    return net.state_dict(), folder, path


def _saved(folder, name, obj):
    path = str(folder / name)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("arch, message", [
    ("resnet8x4", "checkpoint key conv1.weight has shape (16, 3, 3, 3) but resnet8x4 expects (32, 3, 3, 3)"),
    ("resnet14", "checkpoint lacks the key layer1.1.conv1.weight (shape (16, 16, 3, 3)) that resnet14 needs"),
    ("wrn_16_1", "checkpoint lacks the key block1.layer.0.bn1.weight"),
    ("resnet8_option_a", "checkpoint lacks the key linear.weight, the classifier of resnet8_option_a"),
    ("resnet9", "arch='resnet9' cannot be imported: expected one of"),
])
def test_wrong_or_unknown_arch_is_refused_with_the_first_mismatch(resnet8_file, arch, message):
    with pytest.raises(backbones.TorchImportError) as info:
        backbones.from_torch(resnet8_file[2], arch, torch_normalization="cifar10")
    assert message in str(info.value), str(info.value)


def test_missing_and_extra_keys_are_refused(resnet8_file):
    state, folder, _ = resnet8_file
    missing = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.running_var"}
    with pytest.raises(backbones.TorchImportError, match=r"lacks the key layer2\.0\.downsample\.1\.running_var"):
        backbones.from_torch(_saved(folder, "missing.pt", missing), torch_normalization="cifar10")
    extra = {**state, "layer3.0.extra.weight": torch.zeros(3)}
    with pytest.raises(backbones.TorchImportError,
                       match=r"checkpoint key layer3\.0\.extra\.weight \(shape \(3,\)\) has no place in resnet8"):
        backbones.from_torch(_saved(folder, "extra.pt", extra), torch_normalization="cifar10")


def test_files_that_are_not_checkpoints_are_refused(resnet8_file, tmp_path):
    _, folder, _ = resnet8_file
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    cases = [
        (str(text), "is not a PyTorch checkpoint that torch.load can read"),
        (str(tmp_path / "absent.pt"), "does not exist"),
        (_saved(folder, "meta.pt", {"epoch": 3, "best_acc": 70.0}), "holds no state_dict"),
        (_saved(folder, "foreign.pt", {"encoder.weight": torch.zeros(4, 4)}), "has no known key layout"),
    ]
    for path, message in cases:
        with pytest.raises(backbones.TorchImportError, match=message):
            backbones.from_torch(path, torch_normalization="cifar10")


@pytest.mark.parametrize("value", [None, "cifar", "1,2,3", "0,0,0,1,0,1", [0.5] * 5])
def test_bad_torch_normalization_is_refused_before_reading(value):
    with pytest.raises(ValueError, match="torch_normalization=.* is not allowed: expected one of cifar10, cifar100, "
                                         "imagenet, tinyimagenet or six numbers"):
        backbones.from_torch("/nonexistent.pt", torch_normalization=value)


def test_missing_torch_names_the_install_command(resnet8_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        backbones.from_torch(resnet8_file[2], torch_normalization="cifar10")


def test_load_state_dict_unwraps_and_strips_module_prefixes(resnet8_file):
    state, folder, _ = resnet8_file
    prefixed = {f"module.{k}": v for k, v in state.items()}
    for name, obj in [("bare.pt", state), ("nested.pt", {"model": {"state_dict": prefixed}, "epoch": 1}),
                      ("net.pt", {"net": prefixed, "acc": 0.5})]:
        loaded = torch_import.load_state_dict(_saved(folder, name, obj))
        assert list(loaded) == list(state)
        np.testing.assert_array_equal(loaded["layer1.0.bn1.running_var"], state["layer1.0.bn1.running_var"].numpy())


def test_feeding_other_normalization_is_refused(layouts):
    zip_path = layouts("resnet8")[2]
    model = backbones.from_torch(zip_path, torch_normalization="imagenet")
    backbones.check_feed_normalization(model, sources.CIFAR10_MEAN, sources.CIFAR10_STD)
    with pytest.raises(ValueError, match=r"expects images normalised with mean \[0\.4914.*\(cifar10\), but the data "
                                         r"is normalised with mean \[0\.5071"):
        backbones.check_feed_normalization(model, sources.CIFAR100_MEAN, sources.CIFAR100_STD, "the teacher")
    backbones.check_feed_normalization(backbones.get("resnet8", num_classes=10), (0, 0, 0), (1, 1, 1))


def test_backbone_refuses_bad_input_normalization():
    with pytest.raises(ValueError, match="input_normalization must be None or a dict with the keys"):
        backbones.ResNet(depth=8, input_normalization={"network": "imagenet"})
    with pytest.raises(ValueError, match=r"input_normalization\['feed'\] must be a dict"):
        backbones.ResNet(depth=8, input_normalization={"network": sources.parse_normalization("imagenet"),
                                                       "feed": {"mean": [0, 0, 0], "std": [1, 0, 1]}})


# --- the published checkpoints -----------------------------------------------------------------

TEACHERS = os.environ.get("KERAS_ICCKD_TEACHERS", os.path.join(REPO_ROOT, "..", "shared", "teachers"))
# file -> (preset, PyTorch network, the checkpoint's normalisation)
# One file of each layout and torch format here (resnet32/56 option A: experiments/teachers_table.py).
PUBLISHED = {
    "resnet20-12fca82f.th": ("resnet20_option_a", lambda: torch_cifar.CifarResNet(
        20, shortcut="option_a", head="linear"), "imagenet"),
    "cifar100_resnet56-f2eff4c8.pt": ("resnet56", lambda: torch_cifar.CifarResNet(56, num_classes=100),
                                      "0.5070,0.4865,0.4409,0.2673,0.2564,0.2761"),
}


def bundled_test_images(per_class):
    """The first `per_class` JPEG test images of every class of the bundled CIFAR-10 subset."""
    from PIL import Image

    images, labels = [], []
    with tarfile.open(sources.BUNDLED_CIFAR10) as tar:
        members = sorted((m for m in tar if m.isfile() and "/test/" in f"/{m.name}"), key=lambda m: m.name)
        classes = sorted({m.name.split("/")[-2] for m in members})
        for label, cls in enumerate(classes):
            for member in [m for m in members if m.name.split("/")[-2] == cls][:per_class]:
                with Image.open(tar.extractfile(member)) as image:
                    images.append(np.asarray(image.convert("RGB")))
                labels.append(label)
    return np.stack(images).astype("float32") / 255.0, np.array(labels)


@pytest.fixture(scope="module")
def jpeg_test_images():
    return bundled_test_images(10)


@pytest.mark.parametrize("file", sorted(PUBLISHED))
def test_published_checkpoint_imports_and_matches_pytorch(file, jpeg_test_images):
    path = os.path.join(TEACHERS, file)
    if not os.path.isfile(path):
        pytest.skip(f"the published checkpoint {path} is not here (set KERAS_ICCKD_TEACHERS)")
    arch, build, normalization = PUBLISHED[file]
    model = backbones.from_torch(path, torch_normalization=normalization)
    assert model.name == arch
    net = build()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in torch_import.load_state_dict(path).items()})
    images, labels = jpeg_test_images
    reference = torch_logits(net, images, sources.parse_normalization(normalization))
    logits = keras_logits(model, images)
    assert np.abs(logits - reference).max() <= TOLERANCE
    if model.num_classes == 10:  # trained on lossless CIFAR-10; ~81-83 % on the JPEG copy
        assert np.mean(np.argmax(logits, -1) == labels) >= 0.6


# --- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    """run.py --mode=import of a 3-class resnet8 checkpoint, measured on 3-class synthetic data."""
    from test_run import run

    folder = tmp_path_factory.mktemp("import_run")
    torch.manual_seed(0)
    net = torch_cifar.randomize(torch_cifar.CifarResNet(8, num_classes=3), seed=4)
    checkpoint = str(folder / "resnet8.th")
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, checkpoint,
               _use_new_zipfile_serialization=False)
    out = str(folder / "imported")
    result = run(["--mode=import", f"--torch_checkpoint={checkpoint}", "--torch_normalization=imagenet",
                  "--dataset=synthetic", "--synthetic_classes=3", "--synthetic_train_per_class=4",
                  "--synthetic_test_per_class=8", f"--output_dir={out}"])
    return net, out, result


def test_import_mode_writes_the_model_and_its_test_top1(imported_run):
    from keras_icckd import data

    net, out, result = imported_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["metrics.json", "model.keras"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["mode"] == "import" and metrics["arch"] == "resnet8" and metrics["num_classes"] == 3
    assert metrics["torch_normalization"]["name"] == "imagenet" and metrics["feed_normalization"]["name"] == "cifar10"
    splits = data.make_synthetic(num_classes=3, train_per_class=4, test_per_class=8, seed=0)
    images = splits.test_images.astype("float32") / 255.0
    reference = torch_logits(net, images, sources.parse_normalization("imagenet"))
    expected = 100.0 * np.mean(np.argmax(reference, -1) == splits.test_labels)
    assert metrics["num_test"] == 24 and abs(metrics["test_top1"] - expected) < 1e-6
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert np.abs(keras_logits(model, images) - reference).max() <= TOLERANCE


def test_imported_model_fed_other_normalization_is_refused_as_teacher(imported_run, tmp_path):
    from test_run import run

    net, out, _ = imported_run
    checkpoint = str(tmp_path / "resnet8.pt")
    torch.save(net.state_dict(), checkpoint)
    model = backbones.from_torch(checkpoint, torch_normalization="imagenet", feed_normalization="cifar100")
    teacher = str(tmp_path / "teacher.keras")
    model.save(teacher)
    result = run(["--mode=student", f"--teacher={teacher}", "--student_arch=resnet8", "--dataset=synthetic",
                  "--synthetic_classes=3", f"--output_dir={tmp_path / 'student'}"])
    assert result.returncode != 0
    assert f"--teacher='{teacher}' expects images normalised with mean [0.5071" in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(str(tmp_path / "student" / "model.keras"))


def test_docstring_examples():
    import doctest

    result = doctest.testmod(torch_import, extraglobs={"keras": keras}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
