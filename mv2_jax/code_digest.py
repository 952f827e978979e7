"""A digest of this package's own source, for caches of things the code decides (param shapes,
exported programs): a `git pull` that changes the code must not find the old entries."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def source_digest(*subpackages: str) -> str:
    """sha256 over the `.py` files (paths and contents) of these subpackages of mv2_jax."""
    digest = hashlib.sha256()
    for name in sorted(subpackages):
        for file in sorted((PACKAGE / name).rglob("*.py")):
            digest.update(str(file.relative_to(PACKAGE)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
