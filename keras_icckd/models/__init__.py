"""Models: the ICCKD contrastive teacher (a plain CE teacher is the same class with lambda 0)."""

from keras_icckd.models.cache import IntraClassCache
from keras_icckd.models.teacher import ContrastiveTeacher
