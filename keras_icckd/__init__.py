"""keras_icckd: knowledge distillation for Keras 3 on the TensorFlow and JAX backends.

The core method is ICCKD (Yuan et al., "Enriching Knowledge Distillation with Intra-Class
Contrastive Learning", arXiv 2509.22053): a teacher trained with cross-entropy plus an
intra-class contrastive loss, stabilised by a margin, whose soft labels are then distilled
into students.

Submodules: `backbones` (CIFAR ResNet/WRN/VGG/MobileNetV2/ShuffleNetV2 by name), `data`
(sources and tf.data pipelines), `losses` (pure keras.ops functions), `models`
(`ContrastiveTeacher`, `Distiller`), `objectives` (KD, DKD, RKD, FitNet, AT, CRD, DCD, PCKD,
MSDCRD), `training` (`TorchSGD`, schedules, checkpoints, callbacks, crash-safe run outputs),
`export` (TFLite), `recipes` (whole runs as library API: `RunConfig` -> `run`) and `cli` (the
`keras-icckd` command line over the recipes).
"""

from keras_icckd.version import __version__  # noqa: F401

try:
    import keras as _keras  # noqa: F401  (starts the KERAS_BACKEND backend)
except ImportError:  # the backend cannot start: the command line says so in one line (keras_icckd.cli),
    pass             # and importing any submodule raises the error itself
else:
    from keras_icckd import backbones  # noqa: F401  (registers serializable classes)
    from keras_icckd import losses  # noqa: F401
    from keras_icckd import models  # noqa: F401
    from keras_icckd import objectives  # noqa: F401
    from keras_icckd import training  # noqa: F401  (TorchSGD, EpochStepDecay)
