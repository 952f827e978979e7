"""Param shapes kept on disk between runs: `registry.param_shapes` traces a model's `init`
(`jax.eval_shape`) to learn the param tree a checkpoint must fill, about half of loading a small
model. With a cache folder set (`use_shape_cache`; the command lines set one beside the
compilation cache), the tree is stored as JSON under a digest of the model's class and
configuration (`repr` of the linen module, dtypes included), the flax and jax versions and the
source of `mv2_jax/models/`, and read back instead of traced; a tree not in the folder is looked
for among those shipped with the package (`mv2_jax.traced_ahead`). Library code sets no folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp

from mv2_jax.code_digest import source_digest
from mv2_jax.traced_ahead import SHAPES
from mv2_jax.weights.new_folder import write_file_atomically

_folder: Path | None = None


def use_shape_cache(folder: str | os.PathLike | None) -> None:
    """Keep param shapes in `folder` (None: stop)."""
    global _folder
    _folder = None if folder is None else Path(folder)


def current_folder() -> Path | None:
    return _folder


def cached_shapes(module, trace: Callable[[], dict]) -> dict:
    """`trace()` (the param tree of `module` as `jax.ShapeDtypeStruct`s), or its stored copy."""
    if _folder is None:
        return trace()
    file = f"{_digest(module)}.json"
    for path in (_folder / file, SHAPES / file):  # the shipped models' shapes ship too
        try:
            return _unflatten(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    shapes = trace()
    _write(_folder / file, json.dumps(_flatten(shapes)))
    return shapes


def _digest(module) -> str:
    identity = (type(module).__name__, repr(module), flax.__version__, jax.__version__)
    code = source_digest("models")  # a change there may change the params of one config
    return hashlib.sha256(repr((identity, code)).encode()).hexdigest()[:32]


def _flatten(tree: dict, prefix: tuple = ()) -> list:
    out = []
    for name, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, (*prefix, name))
        else:
            out.append([[*prefix, name], list(value.shape), jnp.dtype(value.dtype).name])
    return out


def _unflatten(rows: list) -> dict:
    tree: dict = {}
    for path, shape, dtype in rows:
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    return tree


def _write(path: Path, text: str) -> None:
    """A folder that cannot be written only means the next run traces again."""
    with contextlib.suppress(OSError):
        write_file_atomically(path, text.encode())
