"""The package version (its one source: pyproject.toml reads it from here) and the code version that
a run records."""

import os
import subprocess

__version__ = "0.2.0"


def code_version():
    """{"version": the package version, "commit": the git commit of the source tree (with "-dirty" when
    the package's or experiments/' tracked files differ from it, results aside), or None when the package is not inside a git checkout (an
    installed wheel)}: recorded by every run, so that results can be traced to the code that made them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = None
    try:
        git = ["git", "-C", root]
        inside = subprocess.run(git + ["rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
        if inside.returncode == 0 and os.path.samefile(inside.stdout.strip(), root):
            commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--", "keras_icckd",
                                    "experiments", ":(exclude)experiments/results"],
                                   capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            commit += "-dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError, ValueError):
        commit = None
    return {"version": __version__, "commit": commit}
