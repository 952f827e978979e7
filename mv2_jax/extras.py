"""The optional parts of the install: `require_train_extra` stops a training program with one
line when the `[train]` extra (pyproject.toml) is missing, instead of an ImportError deep in
the data pipeline. Sampling and loading need only the core dependencies."""

from __future__ import annotations

import importlib.util

# Module → distribution, the [train] extra of pyproject.toml.
TRAIN_PACKAGES = {
    "grain": "grain",
    "tensorflow_datasets": "tensorflow-datasets",
    "array_record": "array_record",
    "absl": "absl-py",
    "tensorboardX": "tensorboardX",
    "skimage": "scikit-image",
    "transformers": "transformers",
}
TRAIN_INSTALL = 'pip install "mv2-jax[train]"'


def missing_train_packages() -> list[str]:
    """The [train] extra's distributions that cannot be imported here."""
    return [dist for module, dist in TRAIN_PACKAGES.items() if not _importable(module)]


def require_train_extra(program: str) -> None:
    """Exit with one line (status 1) naming `pip install "mv2-jax[train]"` if any training
    package is missing; `program` is how the user started it (`train.py`)."""
    missing = missing_train_packages()
    if missing:
        raise SystemExit(
            f"{program}: training needs the [train] extra ({', '.join(missing)} missing): "
            f"{TRAIN_INSTALL}"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False
