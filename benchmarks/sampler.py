"""The lax.scan denoising loop against the UNet calls it is made of.

For a tiny UNet (20 DDIM steps) and the full-size SD1.5 UNet (5 steps), both with classifier-free
guidance (batch 2): the whole jitted sampler vs steps × one jitted guided UNet call — the scan's
overhead (padded steps, scheduler math, per-step noise) must stay ≤ 5%; the first call's compile
time; and a second prompt, seed, guidance and step count, which must not recompile.

    python benchmarks/sampler.py [--repeats 3] [--skip-sd15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, table, timed
from unet_step import reference_folder

# SD1.5's scheduler config (its folder ships PNDM; the algorithm is swapped to DDIM here).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
TINY_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    layers_per_block=1,
    norm_num_groups=8,
)


def build(model: str):
    """(UNet module, params, latent size, context dim)."""
    import jax

    import mv2_jax
    from mv2_jax.models.unet import UNet2DConditionModel

    if model == "tiny":
        unet = UNet2DConditionModel(**TINY_UNET)
        x = np.zeros((1, 32, 32, 4), np.float32)
        params = unet.init(jax.random.key(0), x, np.zeros(1), np.zeros((1, 77, 32)))["params"]
        return unet, jax.tree.map(np.asarray, params), 32, 32
    unet, params = mv2_jax.load_component(reference_folder("sd15"))
    return unet, params, 64, 768


def measure(model: str, steps: int, repeats: int) -> list:
    import jax
    import jax.numpy as jnp

    from mv2_jax.diffusion.guidance import classifier_free_guidance
    from mv2_jax.diffusion.sampler import denoise, steps_bucket
    from mv2_jax.diffusion.schedulers import make_scheduler

    unet, params, size, dim = build(model)
    scheduler = make_scheduler(SD15_SCHEDULER, "ddim")
    rng = np.random.default_rng(0)
    context = jnp.asarray(rng.standard_normal((2, 77, dim), np.float32))
    latents = jnp.asarray(rng.standard_normal((1, size, size, 4), np.float32))
    traces = []

    def guided(params, x, t, context, guidance):
        out = unet.apply({"params": params}, jnp.concatenate([x, x]), jnp.full((2,), t), context)
        uncond, cond = jnp.split(out, 2)
        return classifier_free_guidance(uncond, cond, guidance)

    @jax.jit
    def sample(params, latents, context, guidance, tables, seed):
        traces.append(1)
        fn = lambda x, t: guided(params, x, t, context, guidance)  # noqa: E731
        return denoise(scheduler, tables, fn, latents, jax.random.key(seed))

    one_call = jax.jit(guided)
    tables = scheduler.tables(steps, steps_bucket(steps))
    args = (params, latents, context, jnp.float32(7.5), tables, jnp.int32(0))
    compile_s = timed(lambda: jax.block_until_ready(sample(*args)))
    jax.block_until_ready(one_call(params, latents, 500.0, context, 7.5))
    loop, calls = [], []
    for _ in range(repeats):
        loop.append(timed(lambda: jax.block_until_ready(sample(*args))))
        calls.append(
            timed(lambda: jax.block_until_ready(one_call(params, latents, 500.0, context, 7.5)))
        )
    # a new prompt, seed, guidance and step count: the compiled loop is reused
    other = scheduler.tables(steps - 1, steps_bucket(steps - 1))
    jax.block_until_ready(sample(params, latents, -context, jnp.float32(3.0), other, jnp.int32(9)))
    t_loop, t_call = median(loop), median(calls)
    overhead = t_loop / (steps * t_call) - 1
    return [
        model,
        steps,
        f"{t_loop:.3f}",
        f"{t_call * 1e3:.1f}",
        f"{100 * overhead:+.1f}%",
        f"{compile_s - t_loop:.1f}",
        len(traces) - 1,
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median)")
    parser.add_argument("--skip-sd15", action="store_true", help="only the tiny UNet")
    args = parser.parse_args(argv)
    rows = [measure("tiny", 20, args.repeats)]
    if not args.skip_sd15:
        rows.append(measure("sd15", 5, args.repeats))
    print("\n## lax.scan sampler vs steps × one guided UNet call (DDIM, CFG batch 2, fp32)")
    print(f"machine: {machine()}")
    print(
        table(
            [
                "UNet",
                "steps",
                "sampler s",
                "one call ms",
                "scan overhead",
                "compile s",
                "recompiles for new prompt/seed/guidance/steps",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
