"""Loss functions: pure `keras.ops`, static shapes, explicit masks, float32 inside."""

from keras_icckd.losses.intra_class import intra_class_contrastive
from keras_icckd.losses.intra_class import intra_class_objective
from keras_icckd.losses.margin import MARGIN_MODES
from keras_icckd.losses.margin import logit_margin
from keras_icckd.losses.margin import probability_margin
