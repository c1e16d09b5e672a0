"""Where datasets are looked for when no path is given: never inside the installed package.

1. `$KERAS_ICCKD_DATA`: a folder holding the datasets' files (e.g. tinyimagenet200-jpeg.tar.gz);
2. when the package runs from a source checkout (not an installed wheel), the checkout's sibling
   folder `shared/datasets`.
A run can always name its files itself (`data_dir=` / `--data_dir`).
"""

import os

DATA_ENV = "KERAS_ICCKD_DATA"


def checkout_root():
    """The source checkout this package runs from (the folder holding pyproject.toml and keras_icckd/),
    or None for an installed package."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(package)
    if "site-packages" in package.split(os.sep) or "dist-packages" in package.split(os.sep):
        return None
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def data_roots():
    """The folders searched for a dataset's default files, in order: $KERAS_ICCKD_DATA, then the checkout's
    ../shared/datasets (only from a source checkout)."""
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(os.path.abspath(os.path.expanduser(os.environ[DATA_ENV])))
    checkout = checkout_root()
    if checkout is not None:
        roots.append(os.path.normpath(os.path.join(checkout, "..", "shared", "datasets")))
    return roots


def find(*names):
    """The first existing `root/name` over `data_roots()` and `names` (alternatives, in order of preference
    within a root); when none exists, where the first name would be in the first root (for the error
    message), or None when there is no root at all."""
    roots = data_roots()
    for root in roots:
        for name in names:
            path = os.path.join(root, name)
            if os.path.exists(path):
                return path
    return os.path.join(roots[0], names[0]) if roots else None
