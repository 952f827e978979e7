"""Training data: tfds ArrayRecord builders for captioned videos and images, the grain input
pipeline (decode, sample, crop, shard, batch, alternate image/video steps, checkpoint) and
precomputed latents. Names load lazily, so `import mv2_jax` does not import tfds or grain.

    build_video_dataset(videos_dir, manifest, data_dir) -> Path
    build_image_dataset(data_dir, *, images_dir=None, manifest=None, parquet=None) -> Path
    make_train_iterator(*, video_dir, image_dir, image_ratio, global_batch_size, num_frames,
                        height, width, ...) -> TrainIterator
    precompute_dataset(batches, encode_fn, out_dir, num_examples) -> Path
    make_precomputed_iterator(data_dir, global_batch_size, seed, process_index,
                              process_count, ...) -> TrainIterator
    build_preference_dataset(data_dir, *, votes=None, pairs=None, pickapic=None, ...) -> Path
    make_preference_iterator(data_dir, *, global_batch_size, height, width, ...) -> TrainIterator
    make_precomputed_preference_iterator(data_dir, global_batch_size, ...) -> TrainIterator
"""

import importlib

_EXPORTS = {
    "build_video_dataset": "builders",
    "build_image_dataset": "builders",
    "open_dataset": "builders",
    "VideoTextBuilder": "builders",
    "ImageTextBuilder": "builders",
    "make_train_iterator": "pipeline",
    "make_iterator_from_sources": "pipeline",
    "ClipSpec": "pipeline",
    "TrainIterator": "iterators",
    "is_image_step": "iterators",
    "precompute_dataset": "precompute",
    "make_precomputed_iterator": "precompute",
    "SKIP_REASONS": "decode",
    "build_preference_dataset": "preferences",
    "make_preference_iterator": "preference_pipeline",
    "make_precomputed_preference_iterator": "preference_pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mv2_jax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mv2_jax.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
