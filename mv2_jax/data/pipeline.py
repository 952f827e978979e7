"""The training input pipeline: tfds ArrayRecord datasets written by `mv2_jax.data.builders` →
grain → per-process batches of pixels and captions.

Batches (numpy): `{"pixels": float32 [b, F, H, W, 3] in [-1, 1] (F = 1 for images),
"caption": object array of str [b], "position": int64 [b], "is_image": bool [b]}` with
`b = global_batch_size // process_count`; `position` is each example's place in the global
order. Captions are not tokenized here. See docs/data.md.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mv2_jax.data.decode import (
    BadExample,
    decode_clip,
    decode_image,
    resize_and_crop,
    to_model_range,
)
from mv2_jax.data.iterators import Reader, SkippingBatcher, TrainIterator

BUILD_VIDEO = "python -m mv2_jax.data.build video --videos-dir DIR --manifest FILE --data-dir OUT"
BUILD_IMAGE = "python -m mv2_jax.data.build image --images-dir DIR --manifest FILE --data-dir OUT"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What one training example looks like and how it is cut from its record."""

    num_frames: int
    height: int
    width: int
    frame_stride: int = 1
    target_fps: float | None = None
    random_crop: bool = False
    scale_to: int = 0  # > 0: the shorter side before the crop (resize_and_crop)


class LoadExample:
    """`(global position, record index)` → `{"pixels": float32 [F, H, W, 3], "caption": str,
    "position": int}`, or `{"skip": reason}` for a record that cannot be used. The position
    names the example whatever the process layout (the trainer derives its noise from it).

    The random clip start and crop come from `(seed, record index, epoch)` alone, so they do
    not depend on the process count, the workers or the order of reading."""

    def __init__(self, source, spec: ClipSpec, is_image: bool, seed: int):
        self._source, self._spec, self._is_image, self._seed = source, spec, is_image, seed
        self._num_records = len(source)

    def __call__(self, item: tuple[int, int]) -> dict:
        position, record_index = item
        epoch = position // self._num_records
        rng = np.random.default_rng([self._seed, record_index, epoch])
        record = self._source[record_index]
        try:
            return {**self._load(record, rng), "position": position}
        except BadExample as e:
            return {"skip": e.reason}

    def _load(self, record: dict, rng: np.random.Generator) -> dict:
        caption = _text(record["caption"]).strip()
        if not caption:
            raise BadExample("empty_caption")
        spec = self._spec
        if self._is_image:
            frames = decode_image(record["image"])
        else:
            fps = float(record.get("fps") or 0.0)
            frames = decode_clip(
                record["video"],
                num_frames=spec.num_frames,
                frame_stride=spec.frame_stride,
                target_fps=spec.target_fps,
                fps=fps if fps > 0 else None,
                rng=rng,
            )
        frames = resize_and_crop(
            frames, spec.height, spec.width, rng if spec.random_crop else None, spec.scale_to
        )
        return {"pixels": to_model_range(frames), "caption": caption}


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def check_image_ratio(image_ratio: float, has_video: bool, has_image: bool) -> None:
    if not 0.0 <= image_ratio <= 1.0:
        raise ValueError(f"image_ratio must be in [0, 1], got {image_ratio}")
    if not has_video and not has_image:
        raise ValueError("give a video dataset, an image dataset, or both")
    if image_ratio > 0 and not has_image:
        raise ValueError(f"image_ratio {image_ratio} > 0 needs an image dataset (image_dir)")
    if image_ratio < 1 and not has_video:
        raise ValueError(f"image_ratio {image_ratio} < 1 needs a video dataset (video_dir)")


def make_iterator_from_sources(
    video_source,
    image_source,
    *,
    image_ratio: float,
    global_batch_size: int,
    spec: ClipSpec,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 4,
    max_consecutive_skips: int = 1000,
) -> TrainIterator:
    """`make_train_iterator` over random-access sources already open (anything with `len` and
    `source[i]` → record dict, e.g. a list in tests)."""
    check_image_ratio(image_ratio, video_source is not None, image_source is not None)
    reader = Reader(global_batch_size, seed, process_index, process_count, num_workers,
                    prefetch, read_threads, max_consecutive_skips)  # fmt: skip

    def batcher(source, is_image: bool) -> SkippingBatcher | None:
        if source is None or (is_image and image_ratio == 0) or (not is_image and image_ratio == 1):
            return None
        image_spec = dataclasses.replace(spec, num_frames=1)
        load = LoadExample(source, image_spec if is_image else spec, is_image, seed)
        return reader.batches(len(source), load, is_image)

    return TrainIterator(batcher(video_source, False), batcher(image_source, True), image_ratio)


def make_train_iterator(
    *,
    video_dir: str | os.PathLike | None,
    image_dir: str | os.PathLike | None,
    image_ratio: float,
    global_batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    frame_stride: int = 1,
    target_fps: float | None = None,
    random_crop: bool = False,
    scale_to: int = 0,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 4,
    max_consecutive_skips: int = 1000,
) -> TrainIterator:
    """Endless, checkpointable batches for one process (see the module docstring for the
    format). `video_dir` / `image_dir` are the tfds `data_dir`s the builders wrote; a step is
    an image step iff `floor((s+1)·image_ratio) > floor(s·image_ratio)`.

    `num_workers > 0` decodes in that many processes per stream (grain `mp_prefetch`), else
    in `read_threads` threads; `prefetch` is the number of batches decoded ahead."""
    from mv2_jax.data.builders import open_dataset

    check_image_ratio(image_ratio, video_dir is not None, image_dir is not None)
    video_source = image_source = None
    if video_dir is not None and image_ratio < 1:
        video_source, _ = open_dataset(video_dir, "video_text", BUILD_VIDEO)
    if image_dir is not None and image_ratio > 0:
        image_source, _ = open_dataset(image_dir, "image_text", BUILD_IMAGE)
    spec = ClipSpec(num_frames, height, width, frame_stride, target_fps, random_crop, scale_to)
    return make_iterator_from_sources(
        video_source,
        image_source,
        image_ratio=image_ratio,
        global_batch_size=global_batch_size,
        spec=spec,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_workers=num_workers,
        prefetch=prefetch,
        read_threads=read_threads,
        max_consecutive_skips=max_consecutive_skips,
    )
