"""The entry point of keras_icckd runs from a checkout: the same command line as `keras-icckd`.

    python experiments/run.py --flagfile=experiments/flags/quickstart.flags
    python experiments/run.py --mode=teacher --arch=resnet20 --dataset=folder --epochs=2 \
        --output_dir=runs/teacher

The flags are the fields of `keras_icckd.recipes.RunConfig` (`python experiments/run.py --helpfull`);
the run is `keras_icckd.recipes.run`, which a script can call itself. The backend is chosen by
KERAS_BACKEND (tensorflow or jax), as everywhere in Keras. A run writes into --output_dir:
model.keras, metrics.json, curves.png and tensorboard/.
"""

import os
import sys

# The package beside this script (the checkout's), whether or not one is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from keras_icckd import cli  # noqa: E402

if __name__ == "__main__":
    cli.run_cli()
