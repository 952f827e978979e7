"""Reading preference pairs for training: the `preference_pairs` dataset
(`mv2_jax.data.preferences`) → grain → per-process batches, sharded, shuffled and
checkpointable as `mv2_jax.data.pipeline`'s; and the same pairs once encoded
(`mv2_jax.data.precompute`).

Batches (numpy, channels-last; `b = global_batch_size // process_count`):
    {"chosen": float32 [b, H, W, 3] (images) or [b, F, H, W, 3] (videos) in [-1, 1],
     "rejected": the same shape, "weight": float32 [b],
     "prompt": str [b] (also as "caption", the key the other pipelines and precompute use),
     "input_ids": int32 [b, L] (only with a `tokenizer`), "position": int64 [b],
     "is_image": bool [b]}
and precomputed:
    {"chosen_latents": [b, h, w, C] or [b, F, h, w, C], "rejected_latents": the same,
     "prompt_embeds": [b, L, D] (+ "pooled_prompt_embeds" [b, P] for SDXL), "weight": [b],
     "prompt", "caption", "position", "is_image"}.
The two media of a pair are cut alike: the same frame window (if their lengths agree) and the
same crop, drawn from (seed, record, epoch), so a pair differs only in what the raters judged.
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
from mv2_jax.data.iterators import Reader, TrainIterator, single_kind
from mv2_jax.data.pipeline import ClipSpec
from mv2_jax.data.preferences import NAME

BUILD = "python -m mv2_jax.data.build preferences --votes|--pairs|--pickapic FILE --data-dir OUT"
PRECOMPUTED_KEYS = ("chosen_latents", "rejected_latents", "prompt_embeds", "weight")


class LoadPair:
    """`(global position, record index)` → `{"chosen", "rejected" (float32 [(F,) H, W, 3]),
    "weight", "prompt" (= "caption"), "position"[, "input_ids"]}`, or `{"skip": reason}`."""

    def __init__(self, source, spec: ClipSpec, is_image: bool, seed: int, tokenizer=None):
        self._source, self._spec, self._is_image = source, spec, is_image
        self._seed, self._tokenizer = seed, tokenizer
        self._num_records = len(source)

    def __call__(self, item: tuple[int, int]) -> dict:
        position, record_index = item
        key = [self._seed, record_index, position // self._num_records]
        record = self._source[record_index]
        try:
            # One generator state per side, from the same key: the same clip start and crop.
            media = {
                side: self._media(record[side], np.random.default_rng(key))
                for side in ("chosen", "rejected")
            }
        except BadExample as e:
            return {"skip": e.reason}
        prompt = _text(record["prompt"])
        example = {
            **media,
            "weight": np.float32(record["weight"]),
            "prompt": prompt,
            "caption": prompt,
            "position": position,
        }
        if self._tokenizer is not None:
            ids = self._tokenizer(
                [prompt],
                padding="max_length",
                truncation=True,
                max_length=self._tokenizer.model_max_length,
                return_tensors="np",
            )["input_ids"]
            example["input_ids"] = np.asarray(ids[0], np.int32)
        return example

    def _media(self, data: bytes, rng: np.random.Generator) -> np.ndarray:
        spec = self._spec
        if self._is_image:
            frames = decode_image(data)
        else:
            frames = decode_clip(
                data,
                num_frames=spec.num_frames,
                frame_stride=spec.frame_stride,
                target_fps=spec.target_fps,
                rng=rng,
            )
        crop_rng = rng if spec.random_crop else None
        frames = resize_and_crop(frames, spec.height, spec.width, crop_rng, spec.scale_to)
        pixels = to_model_range(frames)
        return pixels[0] if self._is_image else pixels


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _load_tokenizer(tokenizer):
    if tokenizer is None or callable(tokenizer):
        return tokenizer
    from mv2_jax.pipelines.text import load_tokenizer

    return load_tokenizer(tokenizer)


def make_preference_iterator_from_source(
    source,
    kind: str,
    *,
    global_batch_size: int,
    spec: ClipSpec,
    tokenizer=None,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 4,
    max_consecutive_skips: int = 1000,
) -> TrainIterator:
    """`make_preference_iterator` over a random-access source already open."""
    if kind not in ("image", "video"):
        raise ValueError(f"kind {kind!r}: a preference dataset holds 'image' or 'video' pairs")
    reader = Reader(global_batch_size, seed, process_index, process_count, num_workers,
                    prefetch, read_threads, max_consecutive_skips)  # fmt: skip
    is_image = kind == "image"
    spec = dataclasses.replace(spec, num_frames=1) if is_image else spec
    load = LoadPair(source, spec, is_image, seed, _load_tokenizer(tokenizer))
    return single_kind(reader.batches(len(source), load, is_image), is_image)


def make_preference_iterator(
    data_dir: str | os.PathLike,
    *,
    global_batch_size: int,
    height: int,
    width: int,
    num_frames: int = 1,
    frame_stride: int = 1,
    target_fps: float | None = None,
    random_crop: bool = False,
    scale_to: int = 0,
    tokenizer=None,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 4,
    max_consecutive_skips: int = 1000,
) -> TrainIterator:
    """Endless, checkpointable batches of pairs for one process (format in the module
    docstring) from the `preference_pairs` dataset under `data_dir`. `tokenizer` (a CLIP
    tokenizer folder or object) adds `input_ids`; else the stage tokenises `prompt`."""
    from mv2_jax.data.builders import open_dataset

    source, metadata = open_dataset(data_dir, NAME, BUILD)
    spec = ClipSpec(num_frames, height, width, frame_stride, target_fps, random_crop, scale_to)
    return make_preference_iterator_from_source(
        source,
        metadata.get("kind") or "image",
        global_batch_size=global_batch_size,
        spec=spec,
        tokenizer=tokenizer,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_workers=num_workers,
        prefetch=prefetch,
        read_threads=read_threads,
        max_consecutive_skips=max_consecutive_skips,
    )


class LoadPrecomputedPair:
    """`(position, record index)` → a precomputed pair's arrays, caption and position; the
    weight as float32 (tfds gives a scalar feature back as a Python float)."""

    def __init__(self, source):
        from mv2_jax.data.precompute import LoadPrecomputed

        self._load = LoadPrecomputed(source)

    def __call__(self, item: tuple[int, int]) -> dict:
        record = self._load(item)
        record["weight"] = np.float32(record["weight"])
        record["prompt"] = record["caption"]
        return record


def make_precomputed_preference_iterator(
    data_dir: str | os.PathLike,
    global_batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    *,
    num_workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 4,
) -> TrainIterator:
    """Endless, checkpointable batches of the pairs that `precompute_dataset(
    make_preference_iterator(…), preference_encoder(stage, consts), …)` wrote
    (`mv2_jax.training.preference_data`): `PRECOMPUTED_KEYS` (+ `pooled_prompt_embeds`),
    `prompt` (= `caption`), `position`, `is_image`, sharded and shuffled as the pixel pairs."""
    from mv2_jax.data.builders import open_dataset
    from mv2_jax.data.precompute import HOW_TO_BUILD

    source, metadata = open_dataset(data_dir, "precomputed", HOW_TO_BUILD)
    missing = [k for k in PRECOMPUTED_KEYS if k not in source[0]]
    if missing:
        raise ValueError(
            f"{data_dir}: a precomputed dataset without {missing}, not one of preference pairs; "
            "precompute it from make_preference_iterator's batches"
        )
    reader = Reader(global_batch_size, seed, process_index, process_count, num_workers,
                    prefetch, read_threads)  # fmt: skip
    is_image = bool(metadata.get("is_image"))
    return single_kind(reader.batches(len(source), LoadPrecomputedPair(source), is_image), is_image)


def preference_iterator(config, tokenizer=None) -> TrainIterator:
    """This process's share of the pairs a run's `config.data` names: `preference_dir` (the
    data_dir `python -m mv2_jax.data.build preferences` wrote) or `precomputed_dir` (pairs
    precomputed from it); `height`, `width`, `num_frames`, `frame_stride`, `target_fps`,
    `random_crop`, `scale_to`, `num_workers`, `prefetch` as for the other datasets."""
    import jax

    d = config.data
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    preference_dir = d.get("preference_dir", "")
    if bool(preference_dir) == bool(d.precomputed_dir):
        raise ValueError(
            "set one of config.data.preference_dir (pairs built by `python -m mv2_jax.data.build "
            "preferences`) and config.data.precomputed_dir (pairs precomputed from them)"
        )
    if d.precomputed_dir:
        return make_precomputed_preference_iterator(
            d.precomputed_dir,
            config.batch_size,
            config.seed,
            **shard,
            num_workers=d.num_workers,
            prefetch=d.prefetch,
        )
    return make_preference_iterator(
        preference_dir,
        global_batch_size=config.batch_size,
        height=d.height,
        width=d.width,
        num_frames=d.num_frames,
        frame_stride=d.frame_stride,
        target_fps=d.target_fps or None,
        random_crop=d.random_crop,
        scale_to=d.scale_to,
        tokenizer=tokenizer,
        seed=config.seed,
        num_workers=d.num_workers,
        prefetch=d.prefetch,
        **shard,
    )
