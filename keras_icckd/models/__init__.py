"""Models: the ICCKD contrastive teacher (a plain CE teacher is the same class with lambda 0)
and the Distiller that trains students from a frozen teacher."""

from keras_icckd.models.cache import IntraClassCache
from keras_icckd.models.teacher import ContrastiveTeacher
from keras_icckd.models.distiller import Distiller
from keras_icckd.models.distiller import EpochCounter
from keras_icckd.models.distiller import load_teacher
