"""Training helpers: schedules, callbacks, diagnostics and crash-safe run outputs."""

from keras_icckd.training.callbacks import ClassDistanceDiagnostics
from keras_icckd.training.diagnostics import class_distance_stats
from keras_icckd.training.outputs import atomic_save_model
from keras_icckd.training.outputs import atomic_write_json
from keras_icckd.training.outputs import atomic_write_text
from keras_icckd.training.outputs import load_model_file
from keras_icckd.training.outputs import plot_curves
from keras_icckd.training.optimizers import TorchSGD
from keras_icckd.training.schedules import EpochStepDecay
from keras_icckd.training.schedules import epoch_step_decay
from keras_icckd.training.checkpoint import CheckpointError
from keras_icckd.training.checkpoint import NonFiniteLossError
from keras_icckd.training.checkpoint import RunRecorder
from keras_icckd.training.checkpoint import StopOnNonFinite
from keras_icckd.training.checkpoint import epoch_row
from keras_icckd.training.checkpoint import read_checkpoint
from keras_icckd.training.checkpoint import restore_checkpoint
from keras_icckd.training.checkpoint import save_checkpoint
