"""`python -m keras_icckd`: the command line (`keras-icckd`)."""

from keras_icckd.cli import run_cli

run_cli()
