"""The Distiller: a student trained against a frozen teacher with weighted objectives."""

import math

import keras
from keras import ops

from keras_icckd import objectives as objective_zoo
from keras_icckd import replicas
from keras_icckd.models.classifier import cross_entropy, is_soft

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
    """Trains a student from a frozen teacher: `ce_weight * CE + sum_i w_i * objective_i`.

    The arguments follow `keras.distillation.Distiller`: the teacher first, then the student,
    then the distillation losses. The teacher (a backbone, a `ContrastiveTeacher`, or the path
    of a `.keras` file) runs in inference mode under stop-gradient, is not trainable, and so is
    never in the optimizer or weight-decayed. The student and the teacher each run once per
    step; objectives get both output dicts. Training lives in `compute_loss`, shared by the
    TensorFlow and JAX trainers. Progress-bar metrics: loss, ce, one "<objective>_loss" per
    objective, accuracy and agreement (fraction of images where student and teacher predict the
    same class). `predict` returns the student's logits; `distiller.student` is the plain student
    backbone: save it alone for deployment.

    Two networks passed in the order of earlier versions of this class, `(student, teacher)`, are
    refused rather than trained the wrong way round: a student given as a file path or as a
    `ContrastiveTeacher`, or a teacher with fewer parameters than the student (pass
    `allow_smaller_teacher=True` when that is intended).

    Args:
        teacher: the teacher (see above).
        student: the student backbone.
        distillation_losses: the objectives: "kd:0.9,rkd:1", or a list of (name or `Objective`,
            weight) pairs, or of names / `Objective`s (weight 1). Keras' own
            `keras.distillation.LogitsDistillation` / `FeatureDistillation` instances are accepted in
            the list too (`objectives.KerasDistillationLoss`). Also accepted as `objectives=`.
        distillation_loss_weights: one weight per objective, replacing the weights given with them.
        student_loss_weight: Keras' convex weighting, in [0, 1]: the loss is then
            `s * CE + (1 - s) * sum_i w_i * objective_i`. Give it or `ce_weight`, not both.
        ce_weight: this project's weighting, as the published recipes state it (>= 0):
            `ce_weight * CE + sum_i w_i * objective_i` (e.g. CRD's CE 1 + CRD 0.8). Default 0.1
            (with KD at 0.9), used when neither weight is given.
        num_train: number of training samples, handed to every objective's `setup` (CRD sizes
            its memory banks by it). Default None (unknown; objectives that need it refuse).
        steps_per_epoch: when given, epoch-dependent objectives (DKD's warm-up, PCKD's schedule)
            read the epoch from the optimizer's step count, `iterations // steps_per_epoch + 1`,
            in any training loop; otherwise from `distiller.epoch`, which `fit` advances (an
            `EpochCounter`) and a custom loop sets with `distiller.set_epoch(n)`.
        allow_smaller_teacher: accept a teacher with fewer parameters than the student.

    `distiller.data_options()` gives the arguments of `data.make_train_dataset` that supply the
    extra inputs the objectives require (sample indices, CRD's negatives); a training batch that
    lacks them is refused.

    Example:

    >>> from keras_icckd import backbones
    >>> teacher = backbones.get("resnet14", num_classes=10)
    >>> distiller = Distiller(teacher, backbones.get("resnet8", num_classes=10), "kd:0.9")
    >>> distiller.compile(optimizer="sgd")
    >>> sorted(distiller.weighted_objectives)
    ['kd']
    """

    def __init__(self, teacher, student, distillation_losses=None, distillation_loss_weights=None,
                 student_loss_weight=None, *, objectives=None, ce_weight=None, num_train=None,
                 steps_per_epoch=None, allow_smaller_teacher=False, **kwargs):
        super().__init__(**kwargs)
        if distillation_losses is not None and objectives is not None:
            raise ValueError("give the objectives once: distillation_losses= or objectives=, not both")
        objectives = distillation_losses if distillation_losses is not None else objectives
        objectives = "kd:0.9" if objectives is None else objectives
        if student_loss_weight is not None and ce_weight is not None:
            raise ValueError("give one weight of the student's cross-entropy: student_loss_weight= (Keras' "
                             "convex weighting) or ce_weight= (this project's), not both")
        if student_loss_weight is not None and not (isinstance(student_loss_weight, (int, float))
                                                    and 0.0 <= student_loss_weight <= 1.0):
            raise ValueError(f"student_loss_weight={student_loss_weight!r}: expected a number in [0, 1]")
        if isinstance(student, str):
            raise ValueError(f"the student is a file path ({student!r}): Distiller takes (teacher, student, ...), "
                             "as keras.distillation.Distiller does; a teacher's file goes first")
        if hasattr(student, "project") and hasattr(student, "icc_lambda"):
            raise ValueError("the student is a ContrastiveTeacher: Distiller takes (teacher, student, ...), as "
                             "keras.distillation.Distiller does; the teacher goes first")
        self.student = _as_backbone(student, "student")
        self.teacher = _as_backbone(teacher, "teacher")
        sizes = [sum(int(math.prod(w.shape)) for w in m.weights) for m in (self.teacher, self.student)]
        if sizes[0] < sizes[1] and not allow_smaller_teacher:
            raise ValueError(f"the teacher ({self.teacher.name}, {sizes[0]:,} parameters) is smaller than the student "
                             f"({self.student.name}, {sizes[1]:,}): Distiller takes (teacher, student, ...), as "
                             "keras.distillation.Distiller does; if they are in that order, pass "
                             "allow_smaller_teacher=True")
        self.allow_smaller_teacher = bool(allow_smaller_teacher)
        self.student_loss_weight = None if student_loss_weight is None else float(student_loss_weight)
        ce_weight = 0.1 if ce_weight is None and student_loss_weight is None else ce_weight
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or int(steps_per_epoch) != steps_per_epoch
                                            or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r}: expected a positive integer or None")
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        s_out, t_out = self.student.output, self.teacher.output
        if s_out["logits"].shape[-1] != t_out["logits"].shape[-1]:
            raise ValueError(f"teacher has {t_out['logits'].shape[-1]} classes but the student has "
                             f"{s_out['logits'].shape[-1]}")
        if tuple(self.student.input.shape[1:]) != tuple(self.teacher.input.shape[1:]):
            raise ValueError(f"teacher input shape {tuple(self.teacher.input.shape[1:])} differs from the "
                             f"student's {tuple(self.student.input.shape[1:])}")
        if ce_weight is not None and not ce_weight >= 0:
            raise ValueError(f"ce_weight={ce_weight!r}: expected >= 0")
        if num_train is not None and (isinstance(num_train, bool) or int(num_train) != num_train
                                      or num_train < 1):
            raise ValueError(f"num_train={num_train!r}: expected a positive integer or None")
        self.num_train = None if num_train is None else int(num_train)
        self.teacher.trainable = False
        # Keras' convex weighting is this project's with CE at s and every objective scaled by 1 - s
        self.ce_weight = float(ce_weight) if ce_weight is not None else self.student_loss_weight
        scale = 1.0 - self.student_loss_weight if self.student_loss_weight is not None else 1.0
        if isinstance(objectives, str):
            objectives = objective_zoo.parse(objectives)
        objectives = [item if isinstance(item, (tuple, list)) else (item, 1.0) for item in objectives]
        if distillation_loss_weights is not None:
            if len(distillation_loss_weights) != len(objectives):
                raise ValueError(f"distillation_loss_weights has {len(distillation_loss_weights)} weights for "
                                 f"{len(objectives)} objectives")
            objectives = [(objective, w) for (objective, _), w in zip(objectives, distillation_loss_weights)]
        objectives = [(objective, scale * float(w)) for objective, w in objectives]
        s_shapes = {k: tuple(v.shape) for k, v in s_out.items()}
        t_shapes = {k: tuple(v.shape) for k, v in t_out.items()}
        context = {"num_train": self.num_train, "num_classes": int(s_out["logits"].shape[-1])}
        self.objective_layers, self.objective_weights = [], []
        for objective, weight in objectives:
            if isinstance(objective, str):
                objective = objective_zoo.get(objective, name=objective)
            if isinstance(objective, keras.distillation.DistillationLoss):  # Keras' own losses
                objective = objective_zoo.KerasDistillationLoss(objective)
            if isinstance(objective, objective_zoo.KerasDistillationLoss):
                objective.resolve(self.teacher, self.student)
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
        y = replicas.gather(y)
        soft = is_soft(y, int(self.student.output["logits"].shape[-1]))
        labels = ops.cast(ops.argmax(y, axis=-1), "int32") if soft else ops.cast(ops.reshape(y, (-1,)), "int32")
        if soft and any(o.uses_labels for o in self.objective_layers):
            raise ValueError(
                f"the objectives {[o.name for o in self.objective_layers if o.uses_labels]} read each image's label, "
                "but the batch has soft label rows (a mixing augmentation such as MixUp or CutMix made them): "
                "drop the mixing augmentation or those objectives")
        batch = ops.shape(labels)[0]
        views = self.view_maker.views if self.view_maker is not None else 1
        all_views = tuple(replicas.global_batch(y_pred[k], views) for k in ("student", "teacher"))
        student, teacher = all_views
        if self.view_maker is not None:  # the original images come first
            student, teacher = (replicas.LazyMap(outputs, lambda t: t[:batch]) for outputs in all_views)
        s_logits = ops.cast(student["logits"], "float32")
        ce = cross_entropy(y if soft else labels, s_logits)[0]
        total = self.ce_weight * ce
        constants = {"epoch": self.current_epoch(), "training": training}
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

    def current_epoch(self):
        """The 1-based epoch that epoch-dependent objectives see: from the optimizer's step count when
        `steps_per_epoch` was given, else `self.epoch` (set by `fit`, or by `set_epoch`)."""
        if self.steps_per_epoch is None or getattr(self, "optimizer", None) is None:
            return self.epoch
        step = ops.cast(self.optimizer.iterations, "float32")
        return ops.floor(step / float(self.steps_per_epoch)) + 1.0

    def set_epoch(self, epoch):
        """Sets the 1-based epoch that epoch-dependent objectives see (for a training loop of your own)."""
        self.epoch.assign(float(epoch))

    def predict(self, x, *args, **kwargs):
        """The student's logits (the model being trained), not both networks' outputs: `keras.Model.predict`
        of the student's logits on images `x` (an array or a dataset of images)."""
        # built per call and not kept: an attribute would add it to the Distiller's tracked layers
        logits = keras.Model(self.student.input, self.student.output["logits"], name=f"{self.student.name}_logits")
        return logits.predict(x["image"] if isinstance(x, dict) else x, *args, **kwargs)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with an `EpochCounter` added so epoch-aware objectives see the epoch."""
        callbacks = list(callbacks or [])
        if not any(isinstance(c, EpochCounter) for c in callbacks):
            callbacks.insert(0, EpochCounter())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        """Both networks, the objectives (their state, e.g. CRD's memory banks and DCD's scale, is in the
        weights) and the weights as computed: `model.save` writes a whole training state that
        `keras.saving.load_model` restores (with the optimizer), so `ModelCheckpoint` and
        `BackupAndRestore` work on a distillation run. For deployment save `distiller.student`."""
        return {"name": self.name, "trainable": self.trainable,
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_losses": [keras.saving.serialize_keras_object(o) for o in self.objective_layers],
                "distillation_loss_weights": list(self.objective_weights), "ce_weight": self.ce_weight,
                "num_train": self.num_train, "steps_per_epoch": self.steps_per_epoch,
                "allow_smaller_teacher": self.allow_smaller_teacher}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        config["distillation_losses"] = [keras.saving.deserialize_keras_object(o, custom_objects=custom_objects)
                                         for o in config["distillation_losses"]]
        trainable = config.pop("trainable", True)
        distiller = cls(**config)
        distiller.trainable = trainable
        distiller.teacher.trainable = False
        return distiller
