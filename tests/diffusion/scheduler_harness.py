"""Shared by the scheduler tests: diffusers' scheduler classes, reference configs, and a driver
that runs one of ours and the matching diffusers scheduler side by side, step by step.

The fake model is `0.3·x + 0.1·cos(t/100)` on both sides (the cosine taken in float64 on the host
from the same timestep value). Stochastic schedulers get the same per-step noise: step `i` uses
`torch.randn(shape, generator=Generator().manual_seed(SEED + i))`, which diffusers draws itself
when given that generator (DDPM, Euler ancestral, LCM, TCD: `randn_tensor` is exactly this call
on CPU) or takes as `variance_noise` (DDIM). diffusers takes DDIM's and TCD's `eta` in `step`, we
in the config (`STEP_ETA`).
"""

import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mv2_jax.diffusion.schedulers import SCHEDULERS, make_scheduler  # noqa: E402
from mv2_jax.diffusion.schedulers.lcm import ConsistencyScheduler as Consistency  # noqa: E402

TOL = 1e-5
MAX_STEPS = 64  # every table padded to this: one compile per scheduler config
SHAPE = (2, 3, 4, 2)
SEED = 1000
DIFFUSERS = {name: getattr(diffusers, cls.diffusers_class) for name, cls in SCHEDULERS.items()}
SD15 = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (no spacing key)
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# The same as written by newer diffusers (this repository's single-file default).
SD15_LEADING = dict(SD15, prediction_type="epsilon", timestep_spacing="leading")
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
STEP_ETA = ("ddim", "tcd")  # the schedulers whose `eta` diffusers passes to `step`
GENERATOR_NOISE = ("ddpm", "euler_a", "lcm", "tcd")  # those that draw from `generator`


def img2img_timesteps(ref, n, strength):
    """The SD img2img pipeline's own `get_timesteps` on diffusers scheduler `ref` after
    `set_timesteps(n)` (it also sets the scheduler's begin index)."""
    pipe = types.SimpleNamespace(scheduler=ref)
    timesteps, _ = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(pipe, n, strength, "cpu")
    return timesteps


def room_for_max_steps(name: str) -> dict:
    """Config overrides that let scheduler `name` take up to `MAX_STEPS` steps: the consistency
    schedulers' timesteps are a subset of `original_inference_steps` (50 by default)."""
    return {"original_inference_steps": 100} if issubclass(SCHEDULERS[name], Consistency) else {}


@partial(jax.jit, static_argnums=0)
def advance(sched, tables, state, i, x, noise, c):
    """One loop iteration as a pipeline runs it: scale, fake model, step."""
    out = 0.3 * sched.scale_model_input(tables, x, i) + c
    return sched.step(tables, state, i, x, out, noise)


def _noise(i: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(SEED + i))


def ref_step(ref, name, t, x, i, eta):
    c = 0.1 * np.cos(float(t) / 100)
    out = 0.3 * ref.scale_model_input(x, t) + c
    kw = {}
    if name in GENERATOR_NOISE:
        kw["generator"] = torch.Generator().manual_seed(SEED + i)
    if name == "ddim" and eta > 0:
        kw.update(eta=eta, variance_noise=_noise(i))
    if name == "tcd":
        kw["eta"] = eta
    return ref.step(out, t, x, **kw).prev_sample


def our_step(sched, tables, state, i, x):
    c = np.float32(0.1 * np.cos(float(tables["timesteps"][i]) / 100))
    return advance(sched, tables, state, jnp.int32(i), x, jnp.asarray(_noise(i).numpy()), c)


def step_eta(sched) -> float:
    """The `eta` to pass diffusers' `step` for our scheduler `sched` (0 where it has none)."""
    return sched.config["eta"] if sched.name in STEP_ETA else 0.0


def check_parity(name, cfg, steps=(7, 25), eta=None, run_scale=False, **overrides) -> float:
    """Run both schedulers for each step count; the worst per-step relative error: to the
    step's output scale, or with `run_scale` to the largest sample of the run so far. `eta`
    (DDIM, TCD): None for our default."""
    given = {"eta": eta} if eta is not None and name in STEP_ETA else {}
    sched = make_scheduler(cfg, name, **overrides, **given)
    eta = step_eta(sched)
    worst = 0.0
    for n in steps:
        ref = DIFFUSERS[name].from_config(cfg, **overrides)
        ref.set_timesteps(n)
        tables = sched.tables(n, MAX_STEPS)
        num = int(tables["num_steps"])
        assert num == len(ref.timesteps)
        # Integer timesteps agree exactly, fractional ones (Karras σ mapped back to t, ¼ log σ)
        # to an ulp or so of float32 log.
        np.testing.assert_allclose(tables["timesteps"][:num], ref.timesteps.numpy(), 1e-6, 1e-7)
        # torch's float32 sqrt is not correctly rounded: an ulp apart at most
        np.testing.assert_allclose(tables["init_noise_sigma"], float(ref.init_noise_sigma), 2e-7)
        if "sigmas" in tables:  # to an ulp or so (torch's float32 sqrt is not IEEE-exact)
            np.testing.assert_allclose(tables["sigmas"][: num + 1], ref.sigmas.numpy(), 2e-6)
        x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        x = jnp.asarray(x_ref.numpy()) * tables["init_noise_sigma"]
        x_ref = x_ref * ref.init_noise_sigma
        jtables = jax.tree.map(jnp.asarray, tables)
        state = sched.init_state(x)
        scale = float(x_ref.abs().max())
        for i, t in enumerate(ref.timesteps):
            x_ref = ref_step(ref, name, t, x_ref, i, eta)
            x, state = our_step(sched, jtables, state, i, x)
            scale = max(scale, float(x_ref.abs().max())) if run_scale else float(x_ref.abs().max())
            err = float(np.abs(np.asarray(x, np.float64) - x_ref.numpy()).max()) / scale
            assert err <= TOL, f"{name} n={n} step {i}: relative error {err:.2e}"
            worst = max(worst, err)
    print(f"{name} {dict(cfg, **overrides)}: worst step error {worst:.2e}")
    return worst
