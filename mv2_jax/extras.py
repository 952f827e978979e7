"""The optional parts of the install: `require_extra` stops a program with one line when its
extra (pyproject.toml: `[train]` for training, `[studies]` for side-by-side studies) is
missing, instead of an ImportError deep inside. Sampling and loading need only the core
dependencies."""

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
# The [studies] extra: the store, the web app, the report.
STUDIES_PACKAGES = {
    "sqlalchemy": "sqlalchemy",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "jinja2": "jinja2",
    "psycopg": "psycopg",
    "krippendorff": "krippendorff",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
}
EXTRAS = {"train": ("training", TRAIN_PACKAGES), "studies": ("studies", STUDIES_PACKAGES)}


def missing_packages(extra: str) -> list[str]:
    """The distributions of `extra` that cannot be imported here."""
    return [dist for module, dist in EXTRAS[extra][1].items() if not _importable(module)]


def missing_train_packages() -> list[str]:
    return missing_packages("train")


def require_extra(extra: str, program: str) -> None:
    """Exit with one line (status 1) naming `pip install "mv2-jax[EXTRA]"` if any package of
    the extra is missing; `program` is how the user started it (`train.py`)."""
    missing = missing_packages(extra)
    if missing:
        raise SystemExit(
            f"{program}: {EXTRAS[extra][0]} needs the [{extra}] extra "
            f'({", ".join(missing)} missing): pip install "mv2-jax[{extra}]"'
        )


def require_train_extra(program: str) -> None:
    require_extra("train", program)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False
