import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_report_header(config):
    import keras

    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


# The suite compiles much and computes little. For the whole session and its subprocesses, set
# before any backend is imported (a value set by the caller wins): XLA's quick CPU code generation
# (TensorFlow's jit-compiled steps and JAX; a quarter to a third less wall time, results equal to
# the float rounding) and, on JAX, one persistent compilation cache (tests and subprocesses that
# build the same programs compile them once).
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_JAX_CACHE = tempfile.mkdtemp(prefix="keras_icckd_test_jax_cache_")
for _name, _value in {"XLA_FLAGS": QUICK_XLA_FLAGS, "JAX_COMPILATION_CACHE_DIR": _JAX_CACHE,
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}.items():
    os.environ.setdefault(_name, _value)


def pytest_unconfigure(config):
    shutil.rmtree(_JAX_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def jax_subprocess_env():
    """The session's compilation settings above, for subprocesses started with an environment of
    their own. Tests add their own XLA_FLAGS after these."""
    names = ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
    return {name: os.environ[name] for name in names}


# Tests of code that does not depend on the Keras backend (command-line validation and error
# paths, tf.data streaming, the sweep and bench drivers, subprocess kill-and-resume orchestration)
# run in one backend's session only, to keep the two-backend suite short: nodeid prefix -> the
# backend whose session runs it. Every numerical piece still runs on both backends; the models
# these drivers train are covered on both backends by the in-process tests (test_resume's
# interrupted-training tests, test_run, test_export, test_distiller).
ONE_BACKEND = {
    "tests/test_export.py::test_cli_export_and_its_errors": "tensorflow",
    "tests/test_export.py::test_cli_exports_every_format": "jax",
    "tests/test_augment.py::test_cli_kd_with_randaugment": "tensorflow",  # eager augmentation is slow on JAX
    # the children run every backend whatever the parent's: once per suite
    "tests/test_deploy.py::test_the_plain_file_loads_in_bare_keras_on_each_backend": "jax",
    # TensorFlow converts in-process here; the JAX path (a TensorFlow child) is the CLI test's
    "tests/test_export.py::test_every_format_with_uint8_input": "tensorflow",
    "tests/test_export.py::test_a_relative_output_dir_works": "tensorflow",
    "tests/test_bench.py::test_a_real_run_on_this_backend": "tensorflow",  # JAX: test_gpu_session's JAX half
    "tests/test_resume.py::test_cli_killed_run_resumes_to_the_uninterrupted_result": "tensorflow",
    "tests/test_resume.py::test_random_sigkills_never_leave_a_file_that_loads_truncated": "jax",
    "tests/test_sweep.py::test_sweep_runs_each_flagfile_per_seed_and_tabulates": "tensorflow",
    "tests/test_run.py::test_bad_flags_fail_before_any_work": "tensorflow",
    "tests/test_run.py::test_bad_student_inputs": "tensorflow",
    "tests/test_run.py::test_bad_init_model": "tensorflow",
    "tests/test_streaming.py": "tensorflow",  # tf.data whatever the Keras backend
    "tests/test_distribution.py::test_a_model_axis_may_not_span_processes": "jax",  # model_parallel is JAX's
    "tests/test_multi_host.py::test_model_parallel_in_two_processes_like_one_process": "jax",  # likewise
    "tests/test_gpu_session.py::test_run_until_kills_the_whole_process_group": "jax",  # processes, no Keras
    "tests/test_tinyimagenet.py::test_tinyimagenet_loads": "tensorflow",
    "tests/test_tinyimagenet.py::test_default_location": "tensorflow",
    "tests/test_tinyimagenet.py::test_resized": "tensorflow",
    "tests/test_tinyimagenet.py::test_channel_statistics": "tensorflow",
    "tests/test_tinyimagenet.py::test_a_data_problem_ends_the_run_in_one_line": "tensorflow",
    "tests/test_tinyimagenet.py::test_tinyimagenet_run_at_another_image_size": "jax",
    "tests/test_distiller.py::test_heterogeneous_pairs": "tensorflow",  # output wiring across families
    "tests/test_mixed_precision.py::test_teacher_and_distiller_train_in_mixed_precision[mixed_float16]": "tensorflow",
    "tests/test_cache.py::test_enqueue_with_a_batch_size_known_only_when_the_step_runs": "tensorflow",  # tf.function
    # a script and the command line doing the same runs: the recipe's plumbing, not backend arithmetic
    "tests/test_recipes.py::test_readme_script_example_runs_and_equals_the_command_line": "jax",
    "tests/test_run.py::test_a_teacher_run_on_other_data_is_refused_or_named": "tensorflow",  # checks before work
    # the study reports: NumPy and matplotlib over JSON files, no Keras computation
    "tests/test_converged_report.py": "tensorflow",
    "tests/test_tinyimagenet_report.py": "tensorflow",
}


def pytest_collection_modifyitems(config, items):
    """Deselects (reported by pytest as deselected) the ONE_BACKEND tests of the other backend."""
    import keras

    current = keras.backend.backend()
    keep, drop = [], []
    for item in items:
        owner = next((b for prefix, b in ONE_BACKEND.items() if item.nodeid.startswith(prefix)), current)
        (keep if owner == current else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
