"""Reading `.safetensors` files (single or sharded) into numpy, bf16 included, without torch.

The `safetensors` package's numpy backend rejects bf16, so the (simple, documented) format is
read here: an 8-byte little-endian header length, a JSON header, then raw tensor bytes. Tensors
are read one at a time as they are used, so a multi-GB checkpoint never sits in memory whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections import ChainMap
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

log = logging.getLogger(__name__)


class CheckpointFileError(ValueError):
    """A weights file that cannot be read: truncated, corrupt, or of an unknown format."""


class LazyTensors(Mapping):
    """The tensors of one file, each read from disk when it is looked up (not kept), so that
    converting a 10 GB checkpoint holds one source tensor in memory at a time."""

    def __init__(self, path: Path, data_start: int, entries: dict[str, tuple], metadata=None):
        self.path, self._data_start, self._entries = path, data_start, entries
        # the header's `__metadata__` (string → string; diffusers keeps a LoRA's config there)
        self.metadata: dict[str, str] = dict(metadata or {})

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, start = self._entries[name]
        count = int(np.prod(shape))
        array = np.fromfile(self.path, dtype=dtype, count=count, offset=self._data_start + start)
        return array.reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def read_safetensors(path: str | os.PathLike) -> LazyTensors:
    """All tensors of one `.safetensors` file (header and sizes checked now, data read lazily)."""
    path = Path(path)
    size = path.stat().st_size
    fix = "re-download or re-convert the file"
    if size < 8:
        raise CheckpointFileError(
            f"{path}: {size} bytes is too short for a safetensors file; {fix}"
        )
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise CheckpointFileError(
                f"{path}: header claims {header_len} bytes but the file has {size}; "
                f"the file is truncated or not safetensors; {fix}"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointFileError(f"{path}: unreadable safetensors header ({e}); {fix}") from e
    metadata = header.pop("__metadata__", None)
    data_start = 8 + header_len
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if data_start + end > size:
        raise CheckpointFileError(
            f"{path}: truncated: tensors need {data_start + end} bytes, the file has {size}; {fix}"
        )
    entries = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise CheckpointFileError(
                f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}"
            )
        dtype = np.dtype(_DTYPES[info["dtype"]])
        start, stop = info["data_offsets"]
        shape = tuple(info["shape"])
        if (stop - start) != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointFileError(f"{path}: tensor {name!r} has inconsistent byte range; {fix}")
        entries[name] = (dtype, shape, start)
    return LazyTensors(path, data_start, entries, metadata)


def read_weights_folder(
    folder: str | os.PathLike, stem: str, variant: str | None = None
) -> Mapping[str, np.ndarray]:
    """The tensors of a component folder: `{stem}.safetensors`, or the shards listed in
    `{stem}.safetensors.index.json`. With `variant` ("fp16", …) the files of that precision
    variant, as diffusers names them: `{stem}.{variant}.safetensors` or the shards of
    `{stem}.{variant}.safetensors.index.json` (also `{stem}.safetensors.index.{variant}.json`).
    Without one, the un-suffixed files; a folder holding only one variant reads that, and one
    holding several stops with an error listing them. A folder without the asked variant reads
    its un-suffixed files (with a warning), as diffusers' pipelines do."""
    folder = Path(folder)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    found = _weight_files(folder, stem)
    if variant is None:
        if None in found:
            return _read_weights(found[None])
        if len(found) > 1:
            raise FileNotFoundError(
                f"{folder}: no plain {stem}.safetensors but several variants "
                f"({', '.join(sorted(found))}); pass variant= one of them. Files: {present}"
            )
        if found:
            return _read_weights(next(iter(found.values())))
    elif variant in found:
        return _read_weights(found[variant])
    elif None in found:  # as diffusers: a component without that variant loads its plain files
        log.warning("%s: no %s variant; reading %s", folder, variant, found[None].name)
        return _read_weights(found[None])
    else:
        raise FileNotFoundError(
            f"{folder}: no {stem}.{variant}.safetensors (or its sharded index) for "
            f"variant={variant!r}; variants here: "
            f"{sorted(v or '(none)' for v in found) or 'none'}. Files: {present}"
        )
    raise FileNotFoundError(
        f"{folder}: no {stem}.safetensors (or sharded index) found; files here: {present}. "
        "Point at a component folder (e.g. pipeline/unet), or convert .bin/.ckpt weights with "
        "`python convert/to_flax.py`."
    )


def _weight_files(folder: Path, stem: str) -> dict[str | None, Path]:
    """`{variant or None: file}`: each variant's index file if sharded, else its one file."""
    found: dict[str | None, Path] = {}
    if not folder.is_dir():
        return found
    variant, index = r"(?:\.(?P<v1>[^.]+))?", r"(?:\.index(?:\.(?P<v2>[^.]+))?\.json)?"
    pattern = re.compile(rf"^{re.escape(stem)}{variant}\.safetensors{index}$")
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match is None or "-of-" in path.name:
            continue
        name = match["v1"] or match["v2"]
        if path.name.endswith(".json") or name not in found:  # an index wins
            found[name] = path
    return found


def _read_weights(path: Path) -> Mapping[str, np.ndarray]:
    return _read_sharded(path) if path.name.endswith(".json") else read_safetensors(path)


def _read_sharded(index_path: Path) -> Mapping[str, np.ndarray]:
    index = json.loads(index_path.read_text())
    weight_map: dict[str, str] = index["weight_map"]
    shards = []
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise CheckpointFileError(f"{index_path}: shard {shard} is listed but missing")
        shards.append(read_safetensors(shard_path))
    tensors = ChainMap(*shards)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointFileError(
            f"{index_path}: tensors listed but absent from shards: {missing[:10]}"
        )
    return tensors
