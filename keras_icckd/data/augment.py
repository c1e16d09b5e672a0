"""Extra augmentation with Keras preprocessing layers, on top of either input pipeline.

`parse("randaugment,mixup(alpha=0.2)")` reads a spec (the `--augment` flag): layer names from
`LAYERS`, each with constructor options in parentheses separated by ';' (Python literals), applied in
the order given. `augmented(dataset, spec, ...)` wraps a training dataset of either pipeline: each
batch's images are turned back into pixels in [0, 255], run through the layers, and normalised again.

Seeding: before each batch, every random generator of the layers is set from (seed, epoch, step in
the epoch, view, layer): the augmentation of a batch is a function of those alone, so a run resumed at
an epoch boundary sees exactly the batches of an uninterrupted run, as with the pipelines' own crop and
flip. (Keras' layers draw for a whole batch at once, so the draws are per batch, not per sample.)

Mixing layers (MixUp, CutMix) mix images across the batch and return soft labels: the batch's labels
become float (B, num_classes) rows, which `Distiller` and `Classifier` train on with soft-target
cross-entropy. The teacher of a `Distiller` sees the very same mixed images as the student (both are
fed one batch), as function matching (Beyer et al., CVPR 2022) requires. Objectives that read the
labels (DKD, PCKD) and the ICC teacher (it groups images by class) refuse mixed batches.
"""

import keras
import numpy as np

from keras_icckd.objectives.base import _parse_options, _split_top_level

LAYERS = {
    "randaugment": keras.layers.RandAugment,
    "augmix": keras.layers.AugMix,
    "mixup": keras.layers.MixUp,
    "cutmix": keras.layers.CutMix,
    "random_flip": keras.layers.RandomFlip,
    "random_rotation": keras.layers.RandomRotation,
    "random_zoom": keras.layers.RandomZoom,
    "random_translation": keras.layers.RandomTranslation,
    "random_contrast": keras.layers.RandomContrast,
    "random_brightness": keras.layers.RandomBrightness,
    "random_color_jitter": keras.layers.RandomColorJitter,
    "random_erasing": keras.layers.RandomErasing,
    "random_grayscale": keras.layers.RandomGrayscale,
}
MIXING = ("mixup", "cutmix")


def parse(spec):
    """"randaugment,mixup(alpha=0.2)" -> [("randaugment", {}), ("mixup", {"alpha": 0.2})]; "" -> [].

    Raises ValueError naming an unknown layer, a bad option or a repeated name.
    """
    items, seen = [], set()
    for part in [p.strip() for p in _split_top_level(str(spec or "")) if p.strip()]:
        name, options = part, {}
        if "(" in part:
            name, _, rest = part.partition("(")
            inside, close, tail = rest.rpartition(")")
            if not close or tail.strip():
                raise ValueError(f"augmentation {part!r}: expected name(key=value;key=value)")
            options = _parse_options(part, inside)
        name = name.strip()
        if name not in LAYERS:
            raise ValueError(f"augmentation {part!r}: unknown layer {name!r}; valid: {', '.join(sorted(LAYERS))}")
        if name in seen:
            raise ValueError(f"augmentation {name!r} is given twice in {spec!r}")
        seen.add(name)
        try:
            LAYERS[name](**options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"augmentation {part!r}: {e}") from e
        items.append((name, options))
    return items


def mixes(spec):
    """Whether the spec mixes images (and so labels) across the batch."""
    return any(name in MIXING for name, _ in parse(spec))


def _generators(layer):
    found = []
    for sub in layer._flatten_layers(include_self=True):
        for generator in list(getattr(sub, "_seed_generators", [])) + [getattr(sub, "generator", None)] \
                + list(getattr(sub, "_backend_generators", {}).values()):
            if isinstance(generator, keras.random.SeedGenerator) and all(generator is not g for g in found):
                found.append(generator)
    return found


def _key(*values):
    """A 32-bit hash of integers (the pipelines' mixing function, chained)."""
    from keras_icckd.data.numpy_pipeline import mix32

    h = np.uint32(0x9E3779B9)
    for v in values:
        h = mix32(np.uint32(h ^ np.uint32(int(v) & 0xFFFFFFFF)))
    return int(h)


class Augmenter:
    """The layers of a spec, applied to one batch of pixels with seeds from (seed, epoch, step, view).

    Args:
        spec: the augmentation spec (see `parse`).
        seed: the run's seed.
        num_classes: classes of the labels (for the soft labels of mixing layers).
    """

    def __init__(self, spec, seed, num_classes):
        self.items = parse(spec)
        self.seed, self.num_classes = int(seed), int(num_classes)
        self.layers = [LAYERS[name](**options, name=name) for name, options in self.items]
        self.mixing = any(name in MIXING for name, _ in self.items)

    def _reseed(self, epoch, step, view):
        for i, layer in enumerate(self.layers):
            for j, generator in enumerate(_generators(layer)):
                dtype = keras.backend.standardize_dtype(generator.state.dtype)
                state = np.array([_key(self.seed, epoch, step, view, i, j, 0), _key(self.seed, epoch, step, view, i, j, 1)],
                                 "uint32")
                generator.state.assign(state.view("int32") if dtype == "int32" else state.astype(dtype))

    def __call__(self, pixels, labels, epoch, step, view=0):
        """(augmented float32 pixels, labels: int (B,) as given, or float (B, C) soft labels after mixing)."""
        self._reseed(epoch, step, view)
        images = keras.ops.convert_to_tensor(np.asarray(pixels, "float32"))
        targets = None
        for (name, _), layer in zip(self.items, self.layers):
            if name in MIXING:
                if targets is None:
                    targets = keras.ops.one_hot(keras.ops.convert_to_tensor(np.asarray(labels).reshape(-1)),
                                                self.num_classes)
                out = layer({"images": images, "labels": targets}, training=True)
                images, targets = out["images"], out["labels"]
            else:
                images = layer(images, training=True)
        images = np.clip(keras.ops.convert_to_numpy(images), 0.0, 255.0).astype("float32")
        return images, (labels if targets is None else keras.ops.convert_to_numpy(targets).astype("float32"))


class AugmentedDataset(keras.utils.PyDataset):
    """A training dataset of either pipeline with an `Augmenter` applied to every batch, in order.

    Batch g is batch g % steps of epoch initial_epoch + g // steps, as in the pipelines.
    """

    def __init__(self, dataset, augmenter, *, mean, std, steps, initial_epoch, num_batches):
        super().__init__(workers=1, use_multiprocessing=False)
        self.dataset, self.augmenter = dataset, augmenter
        self.mean = np.asarray(mean, "float32")
        self.std = np.asarray(std, "float32")
        self.steps, self.initial_epoch, self._num_batches = int(steps), int(initial_epoch), int(num_batches)
        self._iterator, self._next = None, 0

    @property
    def num_batches(self):
        return self._num_batches

    def __len__(self):
        return self._num_batches

    def _base(self, g):
        if isinstance(self.dataset, keras.utils.PyDataset):
            return self.dataset[g]
        if self._iterator is None or g != self._next:  # tf.data: read in order (from the start if asked to)
            self._iterator = iter(self.dataset.as_numpy_iterator())
            for _ in range(g):
                next(self._iterator)
        self._next = g + 1
        return next(self._iterator)

    def __getitem__(self, g):
        if not 0 <= g < self._num_batches:
            raise IndexError(f"batch {g} of a dataset of {self._num_batches} batches")
        x, labels = self._base(g)
        epoch, step = self.initial_epoch + g // self.steps, g % self.steps
        keys = ["image", "view2"] if isinstance(x, dict) else [None]
        out = dict(x) if isinstance(x, dict) else None
        soft = labels
        for view, key in enumerate(keys):
            if key is not None and key not in x:
                continue
            images = np.asarray(x[key] if key else x, "float32")
            pixels = (images * self.std + self.mean) * 255.0
            pixels, soft = self.augmenter(pixels, labels, epoch, step, view)
            normalised = ((pixels / 255.0 - self.mean) / self.std).astype("float32")
            if key is None:
                return normalised, soft
            out[key] = normalised
        return out, soft


def augmented(dataset, spec, *, seed, mean, std, num_classes, steps, initial_epoch, epochs):
    """`dataset` (a training dataset of either pipeline) with the augmentations of `spec`, or itself
    when the spec is empty. See the module doc; `steps` is the number of batches per epoch."""
    if not parse(spec):
        return dataset
    return AugmentedDataset(dataset, Augmenter(spec, seed, num_classes), mean=mean, std=std, steps=steps,
                            initial_epoch=initial_epoch, num_batches=steps * (int(epochs) - int(initial_epoch)))
