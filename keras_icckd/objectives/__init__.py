"""Distillation objectives, one file per method, selectable by name: `get("kd")`, `parse("kd:0.9")`.

A new objective is one file (a subclass of `Objective` decorated with `@register("name")`) plus its
import line below; `names()` then lists it for the command line's help and the tests
(keras_icckd/ARCHITECTURE.md)."""

from keras_icckd.objectives.base import Objective, get, names, parse, register
from keras_icckd.objectives.at import AT
from keras_icckd.objectives.crd import CRD
from keras_icckd.objectives.dcd import DCD
from keras_icckd.objectives.dkd import DKD
from keras_icckd.objectives.fitnet import FitNet
from keras_icckd.objectives.kd import KD
from keras_icckd.objectives.msdcrd import MSDCRD
from keras_icckd.objectives.pckd import PCKD
from keras_icckd.objectives.rkd import RKD
from keras_icckd.objectives.keras_interop import KerasDistillationLoss, ObjectiveLoss, as_distillation_loss
