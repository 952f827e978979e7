"""The reward-gradient (DRaFT-K) training step at K = 1, 2, 4 (issue 21), beside a plain
denoising step of the same UNet and batch: step time and the compiled step's temporary memory.

The model is the shipped shapes-world T2I (mv2_jax/assets/shapes/t2i), sampled as the quick start
samples it (DDIM, 30 steps, guidance 2.0: two UNet passes a step) with a rank-4 LoRA on the
attention projections, as configs/reward.py:shapes_t2i_draft tunes it, on the brightness reward
(a trained reward model adds one VAE encode and the small head). Every step runs all 30 sampling
steps forward; only the last K are differentiated (rematerialised), so time grows with K by
about one UNet forward + backward per extra step, and memory stays near one step's activations.
Seconds are the median of `--repeats` steps after the compile; bytes from `memory_analysis`.

    python benchmarks/reward_gradient_step.py [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # configs/
from common import machine, median, table, timed  # noqa: E402

from configs.reward import SHIPPED, get_config  # noqa: E402

PROMPTS = ["a red square moving right", "a blue circle moving up"]


def step_of(config):
    """(jitted train step, state, consts, prepared batch) of `config`'s stage on one device."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from mv2_jax.parallel.mesh import make_mesh
    from mv2_jax.training.optim import make_optimizer, trainable_paths
    from mv2_jax.training.state import create_state
    from mv2_jax.training.step import make_train_step
    from mv2_jax.training.trainer import run_stage_class

    mesh = make_mesh("data:1")
    pipeline = Path(config.model.pipeline)
    stage = run_stage_class(config).from_config(config, pipeline, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = stage.load_params(jax.tree.map(lambda _: replicated, stage.param_shapes()))
    paths = trainable_paths(params, stage.trainable_patterns(config.trainable))
    optimizer = make_optimizer(config)
    state = create_state(params, optimizer, paths, config.seed)
    step = jax.jit(make_train_step(stage.loss, optimizer, paths), donate_argnums=(0,))
    captions = np.array([PROMPTS[i % len(PROMPTS)] for i in range(config.batch_size)])
    pixels = np.zeros((config.batch_size, config.data.height, config.data.width, 3), np.float32)
    batch = stage.prepare({"caption": captions, "pixels": pixels})
    return step, state, stage.consts, batch


def measure(config, repeats: int) -> dict:
    import jax

    step, state, consts, batch = step_of(config)
    compiled = step.lower(state, consts, batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    state, _ = compiled(state, consts, batch)  # warm

    def one():
        nonlocal state
        state, metrics = compiled(state, consts, batch)
        jax.block_until_ready(metrics)

    return {"seconds": median([timed(one) for _ in range(repeats)]), "temp_mb": temp / 2**20}


def configs(batch: int):
    """(label, config) of the plain LoRA denoising step and the DRaFT-K steps."""
    from configs.t2i import get_config as t2i_config

    plain = t2i_config("shapes")
    plain.model.init = {}
    plain.model.pipeline = f"{SHIPPED}/t2i"
    plain.model.lora.rank = 4
    plain.batch_size = batch
    yield "denoising loss (1 UNet pass)", plain
    for k in (1, 2, 4):
        config = get_config("shapes_t2i_draft")
        config.reward_gradient.reward = "brightness"
        config.reward_gradient.grad_steps = k
        config.batch_size = batch
        yield f"DRaFT-K, K = {k}", config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for label, config in configs(args.batch):
        result = measure(config, args.repeats)
        rows.append([label, f"{result['seconds']:.2f}", f"{result['temp_mb']:.0f}"])
        print(rows[-1], flush=True)
    print(machine())
    print(table([f"step (shapes T2I, LoRA r4, batch {args.batch})", "s", "temp MB"], rows))


if __name__ == "__main__":
    main()
