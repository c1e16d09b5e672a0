"""The Distiller: a student trained against a frozen teacher with weighted objectives."""

import keras
from keras import ops

from keras_icckd import objectives as objective_zoo
from keras_icckd import replicas

_RESERVED = ("loss", "ce", "accuracy", "agreement")
_MODEL_REQUIREMENTS = ("classifier",)  # what objectives read from the networks, not from the batch


def _as_backbone(model, role):
    """A keras_icckd backbone (dict outputs with 'logits') from a model, a teacher or a path."""
    if isinstance(model, str):
        model = load_teacher(model)
    model = getattr(model, "backbone", model)  # a ContrastiveTeacher distils through its backbone
    outputs = getattr(model, "output", None)
    if not isinstance(outputs, dict) or "logits" not in outputs:
        raise ValueError(f"the {role} must be a keras_icckd backbone (outputs: a dict with 'logits', "
                         f"'embedding', 'feat<k>'); got {type(model).__name__}")
    return model


def load_teacher(path):
    """Loads a teacher from a .keras file written by keras_icckd; clear errors otherwise."""
    from keras_icckd.training import load_model_file

    return _as_backbone(load_model_file(path, "teacher file"), f"teacher in {path!r}")


class EpochCounter(keras.callbacks.Callback):
    """Sets `model.epoch` to the 1-based number of the epoch about to run."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(epoch + 1)


@keras.saving.register_keras_serializable(package="keras_icckd")
class Distiller(replicas.MultiWorkerFixes, keras.Model):
    """Trains a student from a frozen teacher with `ce_weight * CE + sum_i w_i * objective_i`.

    The teacher (a backbone, a `ContrastiveTeacher`, or the path of a `.keras` file) runs in
    inference mode under stop-gradient, is not trainable, and so is never in the optimizer or
    weight-decayed. The student and the teacher each run once per step; objectives get both
    output dicts. Training lives in `compute_loss`, shared by the TensorFlow and JAX trainers.
    Progress-bar metrics: loss, ce, one "<objective>_loss" per objective, accuracy and
    agreement (fraction of images where student and teacher predict the same class).
    `distiller.student` is the plain student backbone: save it alone for deployment.

    Args:
        student: the student backbone.
        teacher: the teacher (see above).
        objectives: "kd:0.9,rkd:1", or a list of (name or `Objective`, weight) pairs.
        ce_weight: weight of the student's cross-entropy. Default 0.1 (with KD at 0.9).
        num_train: number of training samples, handed to every objective's `setup` (CRD sizes
            its memory banks by it). Default None (unknown; objectives that need it refuse).

    `distiller.data_options()` gives the arguments of `data.make_train_dataset` that supply the
    extra inputs the objectives require (sample indices, CRD's negatives).

    Example:

    >>> from keras_icckd import backbones
    >>> teacher = backbones.get("resnet14", num_classes=10)
    >>> distiller = Distiller(backbones.get("resnet8", num_classes=10), teacher, "kd:0.9")
    >>> distiller.compile(optimizer="sgd")
    >>> sorted(distiller.weighted_objectives)
    ['kd']
    """

    def __init__(self, student, teacher, objectives="kd:0.9", ce_weight=0.1, num_train=None, **kwargs):
        super().__init__(**kwargs)
        self.student = _as_backbone(student, "student")
        self.teacher = _as_backbone(teacher, "teacher")
        s_out, t_out = self.student.output, self.teacher.output
        if s_out["logits"].shape[-1] != t_out["logits"].shape[-1]:
            raise ValueError(f"teacher has {t_out['logits'].shape[-1]} classes but the student has "
                             f"{s_out['logits'].shape[-1]}")
        if tuple(self.student.input.shape[1:]) != tuple(self.teacher.input.shape[1:]):
            raise ValueError(f"teacher input shape {tuple(self.teacher.input.shape[1:])} differs from the "
                             f"student's {tuple(self.student.input.shape[1:])}")
        if not ce_weight >= 0:
            raise ValueError(f"ce_weight={ce_weight!r}: expected >= 0")
        if num_train is not None and (isinstance(num_train, bool) or int(num_train) != num_train
                                      or num_train < 1):
            raise ValueError(f"num_train={num_train!r}: expected a positive integer or None")
        self.num_train = None if num_train is None else int(num_train)
        self.teacher.trainable = False
        self.ce_weight = float(ce_weight)
        if isinstance(objectives, str):
            objectives = objective_zoo.parse(objectives)
        s_shapes = {k: tuple(v.shape) for k, v in s_out.items()}
        t_shapes = {k: tuple(v.shape) for k, v in t_out.items()}
        context = {"num_train": self.num_train, "num_classes": int(s_out["logits"].shape[-1])}
        self.objective_layers, self.objective_weights = [], []
        for objective, weight in objectives:
            if isinstance(objective, str):
                objective = objective_zoo.get(objective, name=objective)
            objective.prepare(s_shapes, t_shapes, context)
            self.objective_layers.append(objective)
            self.objective_weights.append(float(weight))
        names = [o.name for o in self.objective_layers]
        if len(set(names)) != len(names) or set(names) & set(_RESERVED):
            raise ValueError(f"objective names must be distinct and not in {_RESERVED}; got {names}")
        self.requires = tuple(sorted({r for o in self.objective_layers for r in o.requires}))
        multi_view = [o for o in self.objective_layers if o.views > 1]
        if len(multi_view) > 1:
            raise ValueError(f"at most one objective may feed extra views of each image; got "
                             f"{[o.name for o in multi_view]}")
        self.view_maker = multi_view[0] if multi_view else None
        self.epoch = self.add_weight(shape=(), initializer="ones", trainable=False, dtype="float32",
                                     name="epoch")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.objective_trackers = [keras.metrics.Mean(name=f"{n}_loss") for n in names]
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.agreement_tracker = keras.metrics.Mean(name="agreement")
        self.built = True

    @property
    def weighted_objectives(self):
        """{name: weight} of the objectives."""
        return {o.name: w for o, w in zip(self.objective_layers, self.objective_weights)}

    def data_options(self):
        """The keyword arguments of `data.make_train_dataset` that the objectives need, merged.

        Raises ValueError when two objectives ask for different values of one argument.
        """
        options = {}
        for objective in self.objective_layers:
            for key, value in objective.data_options().items():
                if key in options and options[key] != value:
                    raise ValueError(f"objective {objective.name!r} needs the data option {key}={value!r} "
                                     f"but another objective needs {key}={options[key]!r}")
                options[key] = value
        return options

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        if self.view_maker is not None:
            images = self.view_maker.make_views(images)
        student = self.student(images, training=training)
        teacher = keras.tree.map_structure(ops.stop_gradient, self.teacher(images, training=False))
        return {"student": student, "teacher": teacher}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del sample_weight
        # Under tf.distribute every output, label and extra input is read over the global batch
        # (gathered from all replicas on first use), so batch-wide objectives (CRD's memory and
        # normaliser, RKD/DCD/PCKD/MSDCRD's in-batch relations) see it as on one device; one
        # replica's share of the loss is returned.
        labels = replicas.gather(ops.cast(ops.reshape(y, (-1,)), "int32"))
        batch = ops.shape(labels)[0]
        views = self.view_maker.views if self.view_maker is not None else 1
        all_views = tuple(replicas.global_batch(y_pred[k], views) for k in ("student", "teacher"))
        student, teacher = all_views
        if self.view_maker is not None:  # the original images come first
            student, teacher = (replicas.LazyMap(outputs, lambda t: t[:batch]) for outputs in all_views)
        s_logits = ops.cast(student["logits"], "float32")
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, s_logits, from_logits=True))
        total = self.ce_weight * ce
        constants = {"epoch": self.epoch, "training": training}
        if "classifier" in self.requires:
            constants["student_classifier"] = (self.student.classifier.kernel, self.student.classifier.bias)
            constants["teacher_classifier"] = tuple(
                ops.stop_gradient(ops.convert_to_tensor(v))
                for v in (self.teacher.classifier.kernel, self.teacher.classifier.bias))
        missing = [r for r in self.requires if r not in _MODEL_REQUIREMENTS and not (isinstance(x, dict) and r in x)]
        if training and missing:
            raise ValueError(
                f"the objectives {[o.name for o in self.objective_layers if set(o.requires) & set(missing)]} need "
                f"the inputs {missing} in every training batch, which lacks them (they would train on nothing). "
                f"Make the batches with keras_icckd.data.make_train_dataset(..., **distiller.data_options()) "
                f"(here {self.data_options()})")
        extras = replicas.global_batch(x if isinstance(x, dict) else {}, constants=constants)
        for objective, weight, tracker in zip(self.objective_layers, self.objective_weights,
                                              self.objective_trackers):
            outputs = all_views if objective is self.view_maker else (student, teacher)
            value = ops.cast(objective.compute(*outputs, labels, extras), "float32")
            total = total + weight * value
            tracker.update_state(value, sample_weight=batch)
        self.ce_tracker.update_state(ce, sample_weight=batch)
        self.accuracy_tracker.update_state(labels, s_logits)
        agree = ops.equal(ops.argmax(s_logits, axis=-1), ops.argmax(teacher["logits"], axis=-1))
        self.agreement_tracker.update_state(ops.mean(ops.cast(agree, "float32")), sample_weight=batch)
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses]))
        return replicas.replica_share(total)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with an `EpochCounter` added so epoch-aware objectives see the epoch."""
        callbacks = list(callbacks or [])
        if not any(isinstance(c, EpochCounter) for c in callbacks):
            callbacks.insert(0, EpochCounter())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def save(self, *args, **kwargs):
        raise NotImplementedError(
            "a Distiller is not saved as a whole: save `distiller.student` (the deployable model) "
            "and keep the teacher's own .keras file")
