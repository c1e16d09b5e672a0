"""Models: the ICCKD contrastive teacher (a plain CE teacher is the same class with lambda 0),
the Distiller that trains students from a frozen teacher, and the Classifier that trains a
backbone with cross-entropy alone."""

from keras_icckd.models.cache import IntraClassCache
from keras_icckd.models.classifier import Classifier
from keras_icckd.models.teacher import ContrastiveTeacher
from keras_icckd.models.distiller import Distiller
from keras_icckd.models.distiller import EpochCounter
from keras_icckd.models.distiller import load_teacher
