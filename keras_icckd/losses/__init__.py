"""Loss functions: pure `keras.ops`, static shapes, explicit masks, float32 inside."""

from keras_icckd.losses.intra_class import intra_class_contrastive
from keras_icckd.losses.intra_class import intra_class_objective
from keras_icckd.losses.margin import MARGIN_MODES
from keras_icckd.losses.margin import logit_margin
from keras_icckd.losses.margin import probability_margin
from keras_icckd.losses.dkd import dkd
from keras_icckd.losses.feature import attention_map
from keras_icckd.losses.feature import attention_transfer
from keras_icckd.losses.feature import hint_mse
from keras_icckd.losses.kd import kd
from keras_icckd.losses.rkd import rkd
from keras_icckd.losses.rkd import rkd_angle
from keras_icckd.losses.rkd import rkd_distance
from keras_icckd.losses.dcd import dcd
from keras_icckd.losses.dcd import l2_normalize
from keras_icckd.losses.nce import contrast_scores
from keras_icckd.losses.nce import crd
from keras_icckd.losses.nce import momentum_update
from keras_icckd.losses.nce import nce_loss
