"""The base class and registry of distillation objectives."""

import ast
import math

import keras
from keras import ops

_REGISTRY = {}


def register(name):
    """Class decorator: makes an `Objective` selectable by `name` (and Keras-serialisable)."""

    def wrap(cls):
        cls.registry_name = name
        _REGISTRY[name] = cls
        return keras.saving.register_keras_serializable(package="keras_icckd")(cls)

    return wrap


def names():
    """The sorted names accepted by `get` and by `--objectives`."""
    return sorted(_REGISTRY)


def get(key, **kwargs):
    """Builds the objective registered as `key`, its constructor defaults overridden by kwargs."""
    if key not in _REGISTRY:
        raise ValueError(f"unknown objective {key!r}; valid names: {', '.join(names())}")
    return _REGISTRY[key](**kwargs)


def _parse_options(part, text):
    """"beta=2;warmup_epochs=10" -> {"beta": 2, "warmup_epochs": 10} (values as Python literals)."""
    options = {}
    for item in [i.strip() for i in text.split(";") if i.strip()]:
        key, eq, value = item.partition("=")
        try:
            if not eq or not key.strip().isidentifier():
                raise ValueError
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"objective {part!r}: option {item!r} is not key=value with a Python literal "
                             "(syntax: name(key=value;key=value):weight)")
    return options


def _split_top_level(spec):
    """Splits at the commas outside parentheses: "at(stages=(1,2)):1,kd" -> ["at(stages=(1,2)):1", "kd"]."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth <= 0:
            parts.append(spec[start:i])
            start = i + 1
    return parts + [spec[start:]]


def parse(spec):
    """Parses an objectives string: "kd:0.9,rkd:1" -> [("kd", 0.9), ("rkd", 1.0)].

    A name alone has weight 1. Constructor options go in parentheses, separated by ';':
    "dkd(beta=2;warmup_epochs=20):1" -> [(DKD(beta=2, warmup_epochs=20), 1.0)], i.e. the first
    element is then a built `Objective` instead of a name; values are Python literals, tuples
    included: "at(stages=(1,2);maps='feat'):1000".
    Raises ValueError naming the bad item: unknown name or option, unparsable or negative
    weight, repeats.
    """
    items, seen = [], []
    for part in [p.strip() for p in _split_top_level(str(spec)) if p.strip()]:
        head, options = part, None
        if "(" in part:
            head_name, _, rest = part.partition("(")
            inside, close, tail = rest.rpartition(")")
            if not close:
                raise ValueError(f"objective {part!r}: '(' without ')'")
            head, options = head_name + tail, _parse_options(part, inside)
        name, _, weight = head.partition(":")
        name = name.strip()
        if name not in _REGISTRY:
            raise ValueError(f"objective {part!r}: unknown name {name!r}; valid names: {', '.join(names())}")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"objective {part!r}: weight {weight!r} is not a number (syntax: name:weight)")
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"objective {part!r}: weight must be a finite number >= 0")
        if name in seen:
            raise ValueError(f"objective {name!r} is given twice in {spec!r}")
        seen.append(name)
        if options is None:
            items.append((name, value))
            continue
        try:
            items.append((get(name, name=name, **options), value))
        except TypeError as e:
            raise ValueError(f"objective {part!r}: {e}")
    return items


class Objective(keras.layers.Layer):
    """A distillation objective: a layer that owns its heads and returns a scalar loss.

    Subclasses implement `compute(student, teacher, labels, inputs)`, where `student` and
    `teacher` are the backbones' output dicts ("logits", "embedding", "feat0".., "preact0"..),
    the teacher's under stop-gradient, and `inputs` the batch's extra inputs (e.g. "index")
    plus "epoch" and "training".
    Heads and state (memory banks, counters) are created in
    `setup(student_shapes, teacher_shapes, context)`, called once by the `Distiller` with the
    output shapes the two backbones declare and what is known of the training data, so every
    variable exists before training starts (as jit on both backends requires).
    `requires` names the extra inputs the objective needs: "index" and "contrast_index"
    come from the data pipeline (`data_options()` returns the arguments of
    `data.make_train_dataset` that supply them); "classifier" makes the `Distiller` add
    `inputs["student_classifier"]` and `inputs["teacher_classifier"]`, (kernel, bias) pairs of
    the two final Dense layers (the teacher's constant).
    An objective with `views = V > 1` sees each image in V views: the `Distiller` runs both
    networks once on `make_views(images)` (V*B images, the original batch first) and hands
    this objective all V*B outputs, everything else (CE, metrics, other objectives) the
    first B.
    """

    registry_name = None
    requires = ()
    views = 1
    uses_labels = False  # whether `compute` reads the labels (keras.distillation does not pass them)

    def make_views(self, images):
        """(B, ...) images -> (views * B, ...), the original batch first. Identity by default."""
        return images

    def setup(self, student_shapes, teacher_shapes, context=None):
        """Creates and builds the objective's heads and state.

        Args:
            student_shapes: dict output name -> shape tuple of the student backbone.
            teacher_shapes: the same for the teacher.
            context: dict of facts about the training data: "num_train" (number of training
                samples, None when unknown) and "num_classes".
        """
        self.built = True

    def prepare(self, student_shapes, teacher_shapes, context=None):
        """`setup`, refusing clearly when it needs a backbone output that a network lacks.

        The `Distiller` calls this. When `setup` fails after looking up an output name that one of
        the two networks does not have (a model wrapped without that feature tap, for example),
        the error names the missing output, the network and what it has instead.
        """
        student, teacher = OutputShapes(student_shapes), OutputShapes(teacher_shapes)
        try:
            self.setup(student, teacher, context)
        except (ValueError, KeyError, TypeError) as e:
            missing = [(side, key) for side, shapes in (("student", student), ("teacher", teacher))
                       for key in shapes.missing]
            if not missing:
                raise
            side, key = missing[0]
            available = sorted(student_shapes if side == "student" else teacher_shapes)
            raise ValueError(
                f"{type(self).__name__} ({self.name!r}) needs the output {key!r} of the {side}, which has no output "
                f"by that name (it has: {', '.join(available)}). A backbone made with keras_icckd.backbones.wrap "
                f"gets it with features={{{key!r}: '<layer name>'}}") from e

    def data_options(self):
        """Keyword arguments of `data.make_train_dataset` that supply `requires`; call after `setup`.

        The default asks for sample indices when "index" is required.
        """
        return {"with_index": True} if "index" in self.requires else {}

    def compute(self, student, teacher, labels, inputs):
        raise NotImplementedError

    def call(self, student, teacher, labels, inputs=None):
        return self.compute(student, teacher, labels, inputs or {})


class OutputShapes(dict):
    """{output name: shape} of a backbone that remembers the names looked up and not found."""

    def __init__(self, shapes):
        super().__init__(shapes)
        self.missing = []

    def _note(self, key):
        if not dict.__contains__(self, key) and key not in self.missing:
            self.missing.append(key)

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)


def feature_size(shapes, feature, side, method):
    """The flattened per-sample size of `shapes[feature]`; a clear error when it is missing."""
    shape = shapes.get(feature)
    if shape is None:
        raise ValueError(f"{method} feature {feature!r} is not an output of the {side}; "
                         f"available: {sorted(shapes)}")
    if any(d is None for d in shape[1:]):
        raise ValueError(f"{method} feature {feature!r} of the {side} has an unknown size: {shape}")
    return math.prod(shape[1:])


STAGE_MAPS = ("reference", "feat", "preact")


def stage_map_name(shapes, k, maps, method):
    """The backbone output that holds stage k's map for `maps`; a clear error when there is none.

    "reference": the map the references' feature list (RepDistiller/mdistiller `feats`) holds,
    i.e. "stage<k>" where the backbone exposes it (WideResNet: the raw stage sums) and "feat<k>"
    everywhere else (the backbones whose stage output is the activated map); "feat": always
    the post-activation "feat<k>"; "preact": "preact<k>".
    """
    if maps not in STAGE_MAPS:
        raise ValueError(f"{method} maps={maps!r}: expected one of {STAGE_MAPS}")
    if maps == "reference" and f"stage{k}" in shapes.keys():  # a probe, not a lookup that `prepare` reports
        return f"stage{k}"
    return f"{'preact' if maps == 'preact' else 'feat'}{k}"


def num_stage_maps(shapes):
    """The number K + 1 of "feat0".."featK" outputs in a shapes dict."""
    k = 0
    while f"feat{k}" in shapes.keys():
        k += 1
    return k


class EmbeddingHeads:
    """Mixin for objectives that embed both networks' `self.feature` with a Dense head each.

    `build_heads` creates `embed_student` / `embed_teacher` (Dense to `self.feature_dim`, built
    from the declared feature shapes); `embed_features` flattens the two features (the teacher's
    under stop-gradient) and returns the two float32 embeddings, not normalised.
    """

    def build_heads(self, student_shapes, teacher_shapes, method):
        self.student_size = feature_size(student_shapes, self.feature, "student", method)
        self.teacher_size = feature_size(teacher_shapes, self.feature, "teacher", method)
        self.embed_student = keras.layers.Dense(self.feature_dim, name="embed_student")
        self.embed_student.build((None, self.student_size))
        self.embed_teacher = keras.layers.Dense(self.feature_dim, name="embed_teacher")
        self.embed_teacher.build((None, self.teacher_size))

    def embed_features(self, student, teacher):
        f_s = ops.reshape(student[self.feature], (-1, self.student_size))
        f_t = ops.reshape(ops.stop_gradient(teacher[self.feature]), (-1, self.teacher_size))
        return (ops.cast(self.embed_student(f_s), "float32"),
                ops.cast(self.embed_teacher(f_t), "float32"))
