"""Both ways between this project's objectives and `keras.distillation`.

- `as_distillation_loss(objective)`: one of our objectives as a `keras.distillation.DistillationLoss`,
  for Keras' own `keras.distillation.Distiller`. Keras hands a `DistillationLoss` the two models'
  outputs and nothing else: no labels, no sample indices, and it trains no variables of its own. So
  the objectives that fit are the ones that need none of these: KD, and the feature objectives
  without heads (RKD) when both networks return the output dicts of this project's backbones. DKD
  and PCKD read the labels, CRD/PCKD need sample indices, DCD, CRD, FitNet, MSDCRD train heads:
  they are refused with the reason; use `keras_icckd.models.Distiller` for them.
- `KerasDistillationLoss(loss)`: Keras' `LogitsDistillation` / `FeatureDistillation` (or any
  `DistillationLoss`) as an objective of `keras_icckd.models.Distiller`, which wraps them itself
  when they appear in its `distillation_losses`. A loss without layer names compares the logits; a
  `FeatureDistillation` with `teacher_layer_name` / `student_layer_name` compares those outputs of the
  backbones' output dicts (e.g. "feat2", "embedding"), or of the layers that produce them. A
  `LogitsDistillation` with its default `loss="kl_divergence"` is rebuilt with
  `keras.losses.KLDivergence()`: in Keras 3.15 the string form compares the logits themselves
  instead of their softmax (see `_with_softmax_kl`).
"""

import keras
from keras import ops

from keras_icckd.objectives.base import Objective, get

# typical output shapes of a CIFAR backbone: enough for an objective's setup to create its heads
_PROBE_SHAPES = {"logits": (None, 10), "embedding": (None, 64),
                 **{f"{kind}{k}": (None, 32 >> k, 32 >> k, 16 << k) for kind in ("feat", "preact") for k in range(4)}}


def _as_dict(outputs):
    return dict(outputs) if isinstance(outputs, dict) else {"logits": outputs}


class ObjectiveLoss(keras.distillation.DistillationLoss):
    """One of this project's objectives as a `keras.distillation.DistillationLoss` (see the module doc).

    Args:
        objective: an `Objective`, or a registered name ("kd"), or a name with options in the
            objectives syntax ("kd(temperature=2)").

    Example:

    >>> import numpy as np
    >>> loss = ObjectiveLoss("kd")
    >>> z = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> float(loss.compute_loss(z, z))
    0.0
    """

    def __init__(self, objective):
        if isinstance(objective, str):
            from keras_icckd.objectives.base import parse

            (item, _), = parse(objective)
            objective = get(item) if isinstance(item, str) else item
        if not isinstance(objective, Objective):
            raise ValueError(f"expected an Objective or its name; got {type(objective).__name__}")
        reasons = []
        if objective.uses_labels:
            reasons.append("reads the labels")
        if objective.requires:
            reasons.append(f"needs the inputs {list(objective.requires)}")
        if objective.views > 1:
            reasons.append("feeds extra views of each image")
        if not reasons:  # a copy set up on typical backbone outputs shows whether it has heads or state
            probe = type(objective).from_config(objective.get_config())
            try:
                probe.setup(_PROBE_SHAPES, _PROBE_SHAPES, {"num_train": 64, "num_classes": 10})
            except (KeyError, ValueError, TypeError):
                pass  # needs outputs these shapes lack: checked again when it is set up on the real ones
            if probe.weights:
                reasons.append("trains variables of its own (heads or memory)")
        if reasons:
            raise ValueError(
                f"objective {objective.name!r} ({type(objective).__name__}) {' and '.join(reasons)}, but "
                "keras.distillation.Distiller passes a DistillationLoss the two models' outputs alone and trains "
                "none of its variables: use keras_icckd.models.Distiller for it")
        self.objective = objective

    def validate_outputs(self, teacher_outputs, student_outputs):
        for side, outputs in (("teacher", teacher_outputs), ("student", student_outputs)):
            if "logits" not in _as_dict(outputs):
                raise ValueError(f"the {side} returns a dict without 'logits': {sorted(outputs)}")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        teacher = {k: ops.stop_gradient(v) for k, v in _as_dict(teacher_outputs).items()}
        student = _as_dict(student_outputs)
        if not self.objective.built:
            self.objective.prepare({k: tuple(v.shape) for k, v in student.items()},
                                   {k: tuple(v.shape) for k, v in teacher.items()})
            if self.objective.weights:
                raise ValueError(f"objective {self.objective.name!r} trains variables of its own, which "
                                 "keras.distillation.Distiller would not train: use keras_icckd.models.Distiller")
        return ops.cast(self.objective.compute(student, teacher, None, {}), "float32")

    def get_config(self):
        return {"objective": keras.saving.serialize_keras_object(self.objective)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["objective"]))


def as_distillation_loss(objective):
    """`ObjectiveLoss(objective)`: an objective (or its name) for `keras.distillation.Distiller`."""
    return ObjectiveLoss(objective)


def _output_key(shapes, tensors_by_layer, layer_name, side):
    """The output-dict key that a Keras loss's layer name designates on one side."""
    if layer_name is None:
        return "logits"
    if layer_name in shapes:
        return layer_name
    if layer_name in tensors_by_layer:
        return tensors_by_layer[layer_name]
    raise ValueError(f"{side} layer {layer_name!r}: keras_icckd.models.Distiller compares the backbones' outputs, "
                     f"and no output of the {side} is that layer's; name one of its outputs instead: "
                     f"{', '.join(sorted(shapes))}")


def _with_softmax_kl(loss):
    """`loss`, except a `LogitsDistillation` built with the string "kl_divergence" (its default).

    Keras 3.15 turns that string into the function `keras.losses.kl_divergence`, while its softmax and
    T^2 handling is keyed to the class `keras.losses.KLDivergence`: the default instance applies the
    KL divergence to the scaled logits themselves (clipped to [1e-7, 1]) instead of to their softmax,
    which is not Hinton's KD. Such a loss is rebuilt with `keras.losses.KLDivergence()` (what the
    class documents), with a warning.
    """
    if isinstance(loss, keras.distillation.LogitsDistillation) and any(
            fn is keras.losses.kl_divergence for fn in keras.tree.flatten(loss.loss)):
        import logging

        logging.getLogger("keras_icckd").warning(
            "LogitsDistillation(loss='kl_divergence') would apply the KL divergence to logits, not to their softmax "
            "(Keras 3.15 keys its softmax to keras.losses.KLDivergence instances): using "
            "LogitsDistillation(temperature=%s, loss=keras.losses.KLDivergence())", loss.temperature)
        return keras.distillation.LogitsDistillation(
            temperature=loss.temperature,
            loss=keras.tree.map_structure(
                lambda fn: keras.losses.KLDivergence() if fn is keras.losses.kl_divergence else fn, loss.loss))
    return loss


@keras.saving.register_keras_serializable(package="keras_icckd")
class KerasDistillationLoss(Objective):
    """A `keras.distillation.DistillationLoss` (e.g. `LogitsDistillation(temperature=4)`) as an objective.

    Args:
        loss: the Keras loss (or its serialised config).
        teacher_output, student_output: the output-dict keys it compares; default from the loss's
            `teacher_layer_name` / `student_layer_name` (an output name, or the name of the layer
            producing one), "logits" without them. Resolved in `setup`.
    """

    def __init__(self, loss, teacher_output=None, student_output=None, **kwargs):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, keras.distillation.DistillationLoss):
            raise ValueError(f"expected a keras.distillation.DistillationLoss; got {type(loss).__name__}")
        loss = _with_softmax_kl(loss)
        if "name" not in kwargs:
            kwargs["name"] = "".join("_" + c.lower() if c.isupper() else c for c in type(loss).__name__).lstrip("_")
        super().__init__(**kwargs)
        self.loss = loss
        self.teacher_output, self.student_output = teacher_output, student_output

    def resolve(self, teacher, student):
        """Sets the compared output keys from the loss's layer names and the two backbones."""
        def by_layer(model):
            return {tensor._keras_history.operation.name: key for key, tensor in model.output.items()}

        if self.teacher_output is None:
            self.teacher_output = _output_key(teacher.output, by_layer(teacher),
                                              getattr(self.loss, "teacher_layer_name", None), "teacher")
        if self.student_output is None:
            self.student_output = _output_key(student.output, by_layer(student),
                                              getattr(self.loss, "student_layer_name", None), "student")

    def setup(self, student_shapes, teacher_shapes, context=None):
        for side, key, shapes in (("teacher", self.teacher_output or "logits", teacher_shapes),
                                  ("student", self.student_output or "logits", student_shapes)):
            if key not in shapes:
                raise ValueError(f"{self.name}: the {side} has no output {key!r}")
        super().setup(student_shapes, teacher_shapes, context)

    def compute(self, student, teacher, labels, inputs):
        t = ops.stop_gradient(teacher[self.teacher_output or "logits"])
        s = student[self.student_output or "logits"]
        self.loss.validate_outputs(t, s)
        return ops.cast(self.loss.compute_loss(t, s), "float32")

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss),
                "teacher_output": self.teacher_output, "student_output": self.student_output}
