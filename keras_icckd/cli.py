"""The command line: `keras-icckd`, `python -m keras_icckd` and experiments/run.py are this module.

    keras-icckd --flagfile=experiments/flags/quickstart.flags
    keras-icckd --mode=teacher --arch=resnet20 --dataset=folder --epochs=2 --output_dir=runs/teacher

Its one job: flags -> `keras_icckd.recipes.RunConfig` (one flag per field, same names, defaults and
help) -> `keras_icckd.recipes.run`, and the run's summary on stdout. Usage errors and data problems
end with one line on stderr and exit status 1. The backend is chosen by KERAS_BACKEND.
"""

import json
import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
_DEFINED = []


def define_flags(flag_values=FLAGS):
    """Defines one flag per `RunConfig` option on `flag_values` (once), plus --check_flags."""
    if any(defined is flag_values for defined in _DEFINED):
        return
    from keras_icckd import objectives
    from keras_icckd.data import datasets
    from keras_icckd.recipes.config import RunConfig

    defaults = RunConfig.defaults()
    for option in RunConfig.options():
        name, default, choices = option.name, defaults[option.name], RunConfig.choices(option.name)
        help_text = option.metadata["help"]
        if name == "dataset":
            help_text += " Registered: " + "; ".join(f"{d}: {datasets.get(d).description}" for d in datasets.names())
        if name == "objectives":
            help_text += " Registered: " + ", ".join(
                n + (" (EXPERIMENTAL)" if getattr(objectives.base._REGISTRY[n], "experimental", False) else "")
                for n in objectives.names()) + "."
        if isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, list):
            flags.DEFINE_list(name, default, help_text, flag_values=flag_values)
        elif choices:
            flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    flags.DEFINE_bool("check_flags", False, "Parse the flags (flagfiles included), print their values as JSON and "
                      "exit without running (experiments/sweep.py checks its runs with it before starting any).",
                      flag_values=flag_values)
    flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    _DEFINED.append(flag_values)


def config_from_flags(flag_values=FLAGS):
    """The `RunConfig` of parsed flags; the flags present on the command line (or in a flagfile) are its
    `given` options."""
    from keras_icckd.recipes.config import RunConfig

    names = [option.name for option in RunConfig.options()]
    return RunConfig(**{name: flag_values[name].value for name in names},
                     given=frozenset(name for name in names if flag_values[name].present))


def summary(outputs):
    """The lines a run prints when it ends: its headline numbers and where its files went."""
    results, files = outputs.results, outputs.files
    mode, lines = results.get("mode"), []
    if mode in ("teacher", "student"):
        lines.append(f"test top-1: {results['test_top1']:.2f}% (best {results['best_test_top1']:.2f}%), "
                     f"{results['wall_seconds']:.0f} s on {results['backend']}")
    elif mode == "import":
        lines.append(f"imported {results['torch_checkpoint']} as {results['arch']} ({results['num_classes']} classes, "
                     f"{results['parameters']:,} parameters)")
        if "test_top1" in results:
            lines.append(f"test top-1 on {results['num_test']} {results['dataset']} test images: "
                         f"{results['test_top1']:.2f}%")
    elif mode == "evaluate":
        soft = results["soft_labels"]
        lines += [f"{results['arch']} on {results['num_test']} {results['dataset']} test images: top-1 "
                  f"{results['test_top1']:.2f}%, top-5 {results['test_top5']:.2f}%, ECE {results['ece']:.4f} "
                  f"({results['ece_bins']} bins)",
                  f"soft labels at T={soft['temperature']:g}: entropy {soft['mean_entropy']:.4f} nats, off-class mass "
                  f"{soft['mean_off_class_mass']:.4f}; within-class std (mean over classes): entropy "
                  f"{soft['mean_over_classes']['entropy_std']:.4f}, off-class mass "
                  f"{soft['mean_over_classes']['off_class_mass_std']:.4f}"]
        if "class_distances" in results:
            lines.append(f"intra/inter-class distance ratio: {results['class_distances']['intra_inter_ratio']:.4f} "
                         f"({results['class_distances']['num_examples']} test images)")
    else:  # export
        lines.append(f"Keras top-1 on {results['num_test']} {results['dataset']} test images: "
                     f"{results['keras_top1']:.2f}%")
        lines.append(f"{'file':<22} {'input':<7} {'KB':>8} {'top-1 %':>8} {'drop':>6} {'agree %':>8} {'max|dz|':>9} "
                     f"{'ms/img':>7}")
        for entry in results["files"].values():
            lines.append(f"{entry['file']:<22} {entry['input']['dtype']:<7} {entry['size_kb']:8.1f} {entry['top1']:8.2f} "
                         f"{entry['top1_drop']:6.2f} "
                         f"{100 * entry['top1_agreement']:8.2f} {entry['max_abs_diff']:9.2e} "
                         f"{entry['latency_ms']:7.3f}")
    labels = {"model": "model:  ", "metrics": "results:", "curves": "curves: ", "picture": "picture:",
              "report": "report:"}
    return lines + [f"{labels[k]} {os.path.abspath(v)}" for k, v in files.items()]


def main(argv):
    from keras_icckd import recipes
    from keras_icckd.recipes.config import RESUMABLE_CHANGES

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags()
    if FLAGS.check_flags:
        print(json.dumps({"flags": config.values(), "defaults": recipes.RunConfig.defaults(),
                          "resumable_changes": RESUMABLE_CHANGES}))
        return
    outputs = recipes.run(config)
    if outputs.results is None:  # a multi-host run's other processes
        print(f"process {config.process_id}: training done; process 0 writes the outputs")
        return
    for line in summary(outputs):
        print(line)


def tf_error_text(message):
    """The reason in a TensorFlow error message, without node names, stack notes and op suffixes."""
    import re

    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "File ", "[[")
    lines = [line.strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith(skip)] or [message.strip()]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0])
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text)


def data_problem(error):
    """The one line that ends a run on a data problem (naming the flag and the file), or None for other errors."""
    from keras_icckd import data

    message = str(error)
    if not isinstance(error, data.DataError):
        tf = sys.modules.get("tensorflow")
        decoding = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError,
                    tf.errors.UnknownError) if tf is not None else ()
        if not (FLAGS.stream and isinstance(error, decoding)):
            return None
        message = "an image could not be read: " + tf_error_text(message)
    if FLAGS.data_dir:
        where = f"--data_dir={FLAGS.data_dir}"
    elif FLAGS.dataset == "synthetic":
        where = "--dataset=synthetic"
    else:
        where = f"--data_dir (default for --dataset={FLAGS.dataset}: {data.default_data_dir(FLAGS.dataset)})"
    if FLAGS.dataset == "tfds":
        where += f" --tfds_name={FLAGS.tfds_name}"
    return f"data error: {where}: {' '.join(message.split())}"


def _program():
    """(name in error lines, the command that lists the flags) of how this process was started."""
    if os.path.basename(sys.argv[0]) == "run.py":
        return "run.py", "python experiments/run.py"
    return "keras-icckd", "keras-icckd"


def cli_main(argv):
    """`main`, ending every usage error and data problem with one line on stderr and exit code 1 (no
    traceback, and not absl's page of flag help before the line that matters)."""
    from keras_icckd import recipes

    name, command = _program()
    try:
        main(argv)
    except (app.UsageError, recipes.ConfigError) as e:
        print(f"{name}: error: {e}\n({command} --helpshort lists the flags)", file=sys.stderr)
        sys.exit(1)
    except (recipes.TrainingStopped, recipes.ExportFailed) as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001  (only data problems are caught; the rest is raised again)
        line = data_problem(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(1)


def run_cli(argv=None):
    """Defines the flags and runs the command line (the console script's entry point)."""
    name, command = _program()
    try:
        define_flags()
    except ImportError as e:  # Keras could not start its backend
        print(f"{name}: error: Keras could not start its backend (KERAS_BACKEND="
              f"{os.environ.get('KERAS_BACKEND', '<unset: tensorflow>')}): {e}. Without TensorFlow, train with "
              "KERAS_BACKEND=jax (see BUILD.md)", file=sys.stderr)
        sys.exit(1)
    app.run(cli_main, argv=argv)


if __name__ == "__main__":
    run_cli()
