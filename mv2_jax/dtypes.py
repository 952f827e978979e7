"""Dtype names: the one parser that the command lines, configs, converters and pipelines use.

`"fp32"`/`"float32"`, `"bf16"`/`"bfloat16"`, `"fp16"`/`"float16"` (any case), numpy/jax dtype
objects and their scalar types all resolve to a numpy dtype; anything else is an error that
lists the accepted names.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

_BY_NAME = {
    "fp32": np.dtype(np.float32),
    "float32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "fp16": np.dtype(np.float16),
    "float16": np.dtype(np.float16),
}
# The short names, as command lines offer them.
DTYPE_CHOICES = ("fp32", "bf16", "fp16")


def parse_dtype(value) -> np.dtype:
    """`value` (a name above, a dtype, or a scalar type such as `jnp.bfloat16`) → its numpy
    dtype; a ValueError naming the accepted names otherwise."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _BY_NAME:
            return _BY_NAME[key]
        raise ValueError(f"dtype {value!r}: choose one of {', '.join(sorted(_BY_NAME))}")
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype not in _BY_NAME.values():
        raise ValueError(
            f"dtype {value!r}: choose float32, bfloat16 or float16 (or a name: "
            f"{', '.join(sorted(_BY_NAME))})"
        )
    return dtype


def dtype_name(value) -> str:
    """The short name (`fp32`, `bf16`, `fp16`) of anything `parse_dtype` takes."""
    dtype = parse_dtype(value)
    return {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16"}.get(dtype, "bf16")
