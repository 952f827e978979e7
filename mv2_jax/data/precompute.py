"""Precomputed training inputs: run an encoder (VAE latents, text embeddings, … — any callable
the trainer supplies) over a pipeline's batches once, store the arrays as a tfds ArrayRecord
dataset, and read them back with the same sharding, shuffling and checkpointing as the pixel
pipeline. One dataset holds one modality (all images or all videos: their shapes differ).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds

from mv2_jax.data.iterators import Reader, SkippingBatcher, TrainIterator
from mv2_jax.data.pipeline import check_image_ratio

log = logging.getLogger(__name__)

_NAME, _VERSION = "precomputed", "1.0.0"
HOW_TO_BUILD = "mv2_jax.data.precompute_dataset(iterator, encode_fn, out_dir, num_examples)"


class PrecomputedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Records `{key: array of the shape and dtype in `spec`, "caption": str}`."""

    name = _NAME
    VERSION = tfds.core.Version(_VERSION)
    code_path = None  # see builders._CaptionedFilesBuilder

    def __init__(self, *, spec=None, examples=None, is_image=False, **kwargs):
        self._spec, self._examples, self._is_image = spec, examples, is_image
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {k: tfds.features.Tensor(shape=s, dtype=d) for k, (s, d) in self._spec.items()}
        features["caption"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(is_image=self._is_image),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        count = 0
        for key, example in enumerate(self._examples):
            count += 1
            yield key, example
        self.info.metadata["num_examples"] = count


def _storable(array) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array


def _encode(batch: dict, encode_fn: Callable) -> dict[str, np.ndarray]:
    encoded = {k: _storable(v) for k, v in encode_fn(batch).items()}
    size = len(batch["caption"])
    wrong = {k: v.shape for k, v in encoded.items() if v.ndim == 0 or v.shape[0] != size}
    if wrong or not encoded or "caption" in encoded:
        raise ValueError(
            f"encode_fn must return a dict of arrays [b, ...] with b = {size} and no 'caption' "
            f"key; got shapes { ({k: v.shape for k, v in encoded.items()}) }"
        )
    return encoded


def precompute_dataset(
    batches: Iterable[dict],
    encode_fn: Callable[[dict], dict],
    out_dir: str | os.PathLike,
    num_examples: int,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `num_examples` encoded examples to `out_dir/precomputed/1.0.0` and return it.

    `batches` yields pipeline batches (e.g. a `TrainIterator`); `encode_fn(batch)` returns
    `{name: array [b, ...]}` (say `latents [b, F, h, w, c]`, `text_embeds [b, L, D]`); each
    example becomes one record of those arrays (bfloat16 stored as float32) plus its caption.
    Shapes and dtypes come from the first batch; every batch must match them and have the
    same `is_image`. The last batch is cut to reach exactly `num_examples`. Run it in one
    process (`process_count=1`) so the dataset holds the whole global order."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    target = Path(out_dir) / _NAME / _VERSION
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target}: already holds a dataset; pass overwrite=True")
        shutil.rmtree(target)
    batches = iter(batches)
    first = next(batches)
    first_encoded = _encode(first, encode_fn)
    spec = {k: (v.shape[1:], v.dtype) for k, v in first_encoded.items()}
    is_image = bool(np.asarray(first["is_image"]).all())

    def examples():
        encoded_batches = itertools.chain(
            [(first, first_encoded)], ((b, _encode(b, encode_fn)) for b in batches)
        )
        for batch, encoded in encoded_batches:
            got = {k: (v.shape[1:], v.dtype) for k, v in encoded.items()}
            if got != spec or bool(np.asarray(batch["is_image"]).all()) != is_image:
                raise ValueError(
                    f"a batch does not match the first one ({got} vs {spec}, is_image "
                    f"{batch['is_image']}); precompute images and videos into separate datasets"
                )
            for i, caption in enumerate(batch["caption"]):
                yield {**{k: v[i] for k, v in encoded.items()}, "caption": str(caption)}

    builder = PrecomputedBuilder(
        spec=spec,
        examples=itertools.islice(examples(), num_examples),
        is_image=is_image,
        data_dir=os.fspath(out_dir),
        file_format="array_record",
    )
    builder.download_and_prepare()
    log.info("precomputed %d examples into %s (%s)", num_examples, target, spec)
    return target


class LoadPrecomputed:
    """`(position, record index)` → the record's arrays, caption (str) and global position."""

    def __init__(self, source):
        self._source = source

    def __call__(self, item: tuple[int, int]) -> dict:
        record = dict(self._source[item[1]])
        caption = record["caption"]
        record["caption"] = caption.decode("utf-8") if isinstance(caption, bytes) else caption
        record["position"] = item[0]
        return record


def make_precomputed_iterator(
    data_dir: str | os.PathLike,
    global_batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    *,
    image_data_dir: str | os.PathLike | None = None,
    image_ratio: float = 0.0,
    num_workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 4,
) -> TrainIterator:
    """Endless, checkpointable per-process batches `{<encoded keys>: [b, ...], "caption":
    str [b], "position": int64 [b], "is_image": bool [b]}` from a dataset `precompute_dataset`
    wrote. With `image_data_dir` (precomputed images) steps alternate as in
    `make_train_iterator`."""
    from mv2_jax.data.builders import open_dataset

    check_image_ratio(image_ratio, True, image_data_dir is not None)
    reader = Reader(global_batch_size, seed, process_index, process_count, num_workers,
                    prefetch, read_threads)  # fmt: skip

    def batcher(folder) -> SkippingBatcher:
        source, metadata = open_dataset(folder, _NAME, HOW_TO_BUILD)
        return reader.batches(len(source), LoadPrecomputed(source), bool(metadata.get("is_image")))

    main = batcher(data_dir) if image_ratio < 1 else None
    images = batcher(image_data_dir) if image_data_dir is not None and image_ratio > 0 else None
    return TrainIterator(main, images, image_ratio)
