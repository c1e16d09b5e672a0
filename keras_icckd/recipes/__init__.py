"""The recipe: runs as library API (`RunConfig` -> `run`), shared by the command line and scripts.

    from keras_icckd import recipes

    teacher = recipes.run(recipes.RunConfig(mode="teacher", arch="resnet14", epochs=3,
                                            output_dir="runs/teacher"))
    student = recipes.run(recipes.RunConfig(mode="student", teacher=teacher.files["model"],
                                            student_arch="resnet8", epochs=3, output_dir="runs/student"))
"""

from keras_icckd.recipes.config import MODES
from keras_icckd.recipes.config import ConfigError
from keras_icckd.recipes.config import RunConfig
from keras_icckd.recipes.runs import ExportFailed
from keras_icckd.recipes.runs import RunOutputs
from keras_icckd.recipes.runs import TrainingStopped
from keras_icckd.recipes.runs import distil_student
from keras_icckd.recipes.runs import evaluate
from keras_icckd.recipes.runs import export
from keras_icckd.recipes.runs import import_torch
from keras_icckd.recipes.runs import run
from keras_icckd.recipes.runs import train_teacher
