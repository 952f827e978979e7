"""Building a linen module from a diffusers / transformers `config.json` dict.

Model fields carry the same names as the PyTorch config keys, so a config maps onto a module
directly. Keys for features this project does not implement are accepted only at their
default (inactive) value; otherwise the error names the key, so a model is never built wrong.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def _tupled(value):
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def module_from_config(
    cls,
    config: Mapping[str, Any],
    *,
    inactive: Mapping[str, Any] = {},
    ignored: tuple[str, ...] = (),
    **overrides,
):
    """`cls(**fields)` from `config`; `inactive` maps unimplemented keys to the values that
    leave them off, `ignored` lists keys with no effect here (e.g. `sample_size`)."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
    kwargs, unknown = {}, []
    for key, value in config.items():
        if key.startswith("_") or key in ignored:
            continue
        if key in fields:
            kwargs[key] = _tupled(value)
        elif key in inactive:
            allowed = inactive[key]
            allowed = allowed if isinstance(allowed, tuple) else (allowed,)
            if _tupled(value) not in allowed:
                raise NotImplementedError(
                    f"{cls.__name__}: config sets {key}={value!r}, which mv2_jax does not "
                    f"implement (supported: {allowed})."
                )
        else:
            unknown.append(key)
    if unknown:
        log.warning("%s: ignoring config keys %s", cls.__name__, unknown)
    kwargs.update(overrides)
    return cls(**kwargs)
