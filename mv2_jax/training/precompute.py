"""Encode a training dataset once — VAE latents and text embeddings of every example — and
store them as a dataset the trainer reads instead (`config.data.precomputed_dir`): the usual
way at scale, where the frozen encoders would otherwise run at every step of every epoch.

    python train.py --config configs/t2i.py:sd15 --workdir W \
        --precompute_to DATA --precompute_examples N

Latents are the posterior means (deterministic); run it in one process.
"""

from __future__ import annotations

from pathlib import Path

import jax
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.parallel.mesh import make_mesh


def precompute(config, workdir: str | Path, out_dir: str | Path, num_examples: int) -> Path:
    from mv2_jax.data import precompute_dataset
    from mv2_jax.training.trainer import check_config, model_folder, run_stage_class, stage_class

    if jax.process_count() != 1:
        raise ValueError("precompute in one process: the dataset holds the whole global order")
    if config.data.precomputed_dir:
        raise ValueError("config.data.precomputed_dir is set: precompute reads the raw data")
    check_config(config)
    workdir = Path(workdir).absolute()
    mesh = make_mesh(config.mesh)
    folder = model_folder(config, workdir)
    # A Diffusion-DPO config (configs/dpo.py) precomputes its pairs (mv2_jax.training.dpo).
    dpo = config.get("dpo") is not None
    cls = run_stage_class(config) if dpo else stage_class(config.stage)
    stage = cls.from_config(config, folder, mesh, workdir=workdir)
    consts = jax.device_put(stage.consts, NamedSharding(mesh, PartitionSpec()))
    encode = jax.jit(stage.encode_for_precompute)

    def encode_fn(batch: dict) -> dict:
        prepared = stage.prepare(batch)
        prepared.pop("position", None)
        return jax.device_get(encode(consts, prepared))

    # The stage's own batches: config.data's for t2i/i2v/v2v, preference pairs for DPO.
    batches = stage.make_data_iterator(config)
    return precompute_dataset(batches, encode_fn, out_dir, num_examples)
