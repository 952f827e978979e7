"""The training data a run's `config.data` names (image, video or precomputed datasets), read by
every stage that does not make its own (`uses_config_data`): its start-up check and its
iterator, sharded over the processes."""

from __future__ import annotations

from collections.abc import Iterator

import jax


def check_data_config(config) -> None:
    """Errors in `config.data` that would otherwise surface minutes later."""
    d = config.data
    if d.precomputed_image_dir and not d.precomputed_dir:
        raise ValueError(
            "config.data.precomputed_image_dir mixes images into config.data.precomputed_dir "
            "(precomputed videos); set that too, or train from data.image_dir"
        )
    if not (d.video_dir or d.image_dir or d.precomputed_dir):
        raise ValueError(
            "no training data: set config.data.image_dir, video_dir or precomputed_dir "
            "(build one with `python -m mv2_jax.data.build --help`)"
        )


def data_iterator(config) -> Iterator[dict]:
    """This process's share of `config.data`'s batches: an endless, checkpointable iterator."""
    from mv2_jax.data import make_precomputed_iterator, make_train_iterator

    d = config.data
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if d.precomputed_dir:
        return make_precomputed_iterator(
            d.precomputed_dir,
            global_batch_size=config.batch_size,
            seed=config.seed,
            image_data_dir=d.precomputed_image_dir or None,
            image_ratio=d.image_ratio if d.precomputed_image_dir else 0.0,
            **shard,
        )
    return make_train_iterator(
        video_dir=d.video_dir or None,
        image_dir=d.image_dir or None,
        # The ratio only chooses between two sources; with one, every step uses it.
        image_ratio=d.image_ratio if d.video_dir and d.image_dir else float(not d.video_dir),
        global_batch_size=config.batch_size,
        num_frames=d.num_frames,
        height=d.height,
        width=d.width,
        frame_stride=d.frame_stride,
        target_fps=d.target_fps or None,
        random_crop=d.random_crop,
        scale_to=d.scale_to,
        seed=config.seed,
        num_workers=d.num_workers,
        prefetch=d.prefetch,
        **shard,
    )
