"""LCM and TCD against diffusers' `LCMScheduler` / `TCDScheduler`, step by step with the same
fake model and the same re-noising noise (see `scheduler_harness`): few-step runs, prediction
types, `original_inference_steps`, `timestep_scaling`, TCD's γ, both img2img conventions
(`set_timesteps(strength=…)` and the img2img pipelines' start step), and the padded scan.
(The generic scheduler tests run LCM and TCD too.)
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
# diffusers' own `np.array(torch_tensor)` calls, under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")

from mv2_jax.diffusion.sampler import denoise, steps_bucket  # noqa: E402
from mv2_jax.diffusion.schedulers import from_diffusers_name, make_scheduler  # noqa: E402
from tests.diffusion.scheduler_harness import (  # noqa: E402
    DIFFUSERS,
    MAX_STEPS,
    SHAPE,
    TOL,
    check_parity,
    img2img_timesteps,
    our_step,
    ref_step,
    step_eta,
)
from tests.reference import relative_error  # noqa: E402

# SimianLuo/LCM_Dreamshaper_v7's scheduler/scheduler_config.json
LCM_DREAMSHAPER = {
    "_class_name": "LCMScheduler",
    "_diffusers_version": "0.22.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
FEW = (1, 2, 4, 8)
CONSISTENCY = ["lcm", "tcd"]


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with XLA's
    yield
    torch.set_num_threads(threads)


# ---- step parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", CONSISTENCY)
def test_few_step_parity(name, prediction):
    check_parity(name, dict(LCM_DREAMSHAPER, prediction_type=prediction), steps=(*FEW, 50))


@pytest.mark.parametrize(
    "options",
    [
        {"original_inference_steps": 20},
        {"original_inference_steps": 30, "timestep_scaling": 3.3},  # T // 30 = 33: t = 32, 65, …
        {"original_inference_steps": 100, "timestep_scaling": 1.0},
        {"timestep_scaling": 100.0, "prediction_type": "v_prediction"},
        {"clip_sample": True, "clip_sample_range": 0.5},
        {"beta_schedule": "linear", "rescale_betas_zero_snr": True,
         "prediction_type": "v_prediction"},
    ],
    ids=str,
)  # fmt: skip
@pytest.mark.parametrize("name", CONSISTENCY)
def test_options(name, options):
    """LCM's config keys; TCD reads `original_inference_steps` but not `timestep_scaling` nor
    `clip_sample` (diffusers' TCD ignores them: so must we)."""
    check_parity(name, LCM_DREAMSHAPER, steps=FEW, **options)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.3, 0.9, 1.0])
def test_tcd_gamma(gamma, prediction):
    """γ = 0 is deterministic (DDIM), γ = 1 re-noises from x̂₀. s = ⌊(1 − γ)·t'⌋ is floored in
    float32, as torch does: in float64 γ = 0.9 gives another s for every t' divisible by 10,
    e.g. 230, 560 and 890 of the 33i − 1 timesteps of `original_inference_steps=30`."""
    cfg = dict(LCM_DREAMSHAPER, prediction_type=prediction)
    check_parity("tcd", cfg, steps=(*FEW, 25), eta=gamma)
    check_parity("tcd", cfg, steps=(3, 10, 30), eta=gamma, original_inference_steps=30)


# ---- img2img -------------------------------------------------------------------------------


def _run_both(sched, ref, tables, start, timesteps, seed=1):
    """Noise an image to `timesteps[0]` (step `start` of ours), then step both to the end."""
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    x_ref = ref.add_noise(init, noise, timesteps[:1].repeat(SHAPE[0]))
    tables = jax.tree.map(jnp.asarray, tables)
    x = sched.add_noise(tables, jnp.asarray(init.numpy()), jnp.asarray(noise.numpy()), start)
    assert relative_error(x, x_ref.numpy()) <= 1e-6
    state = sched.init_state(x)
    for k, t in enumerate(timesteps):
        x_ref = ref_step(ref, sched.name, t, x_ref, start + k, step_eta(sched))
        x, state = our_step(sched, tables, state, start + k, x)
        assert relative_error(x, x_ref.numpy()) <= TOL, (sched.name, k)


@pytest.mark.parametrize("strength", [0.3, 0.5, 0.75, 0.99])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", CONSISTENCY)
def test_strength_in_the_schedule(name, prediction, strength):
    """`LatentConsistencyModelImg2ImgPipeline`: `set_timesteps(n, strength=…)` puts n steps
    below the strength's noise level and runs them all: our `tables(n, …, strength=…)`, start 0."""
    cfg = dict(LCM_DREAMSHAPER, prediction_type=prediction)
    sched = make_scheduler(cfg, name)
    for n in FEW:
        ref = DIFFUSERS[name].from_config(cfg)
        ref.set_timesteps(n, strength=strength)
        tables = sched.tables(n, MAX_STEPS, strength=strength)
        assert int(tables["num_steps"]) == n
        np.testing.assert_array_equal(tables["timesteps"][:n], ref.timesteps.numpy())
        _run_both(sched, ref, tables, 0, ref.timesteps)


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("name", CONSISTENCY)
def test_strength_as_the_start_step(name, strength):
    """diffusers' SD img2img and AnimateDiff video-to-video pipelines (and ours): the full
    n-step schedule entered at step n − ⌊n·strength⌋; the last step still returns x̂₀."""
    sched = make_scheduler(LCM_DREAMSHAPER, name)
    for n in (2, 4, 8):
        ref = DIFFUSERS[name].from_config(LCM_DREAMSHAPER)
        ref.set_timesteps(n)
        timesteps = img2img_timesteps(ref, n, strength)
        start = sched.start_index(n, strength)
        tables = sched.tables(n, MAX_STEPS)
        np.testing.assert_array_equal(tables["timesteps"][start:n], timesteps.numpy())
        if len(timesteps):
            _run_both(sched, ref, tables, start, timesteps)


@pytest.mark.parametrize(
    "n,options",
    [(51, {}), (8, {"strength": 0.1}), (4, {"original_inference_steps": 2000})],
    ids=str,
)
@pytest.mark.parametrize("name", CONSISTENCY)
def test_schedule_errors_as_diffusers(name, n, options):
    """Where diffusers' `set_timesteps` refuses, so do we (before anything is traced)."""
    options = dict(options)
    strength = options.pop("strength", 1.0)
    with pytest.raises(ValueError):
        DIFFUSERS[name].from_config(LCM_DREAMSHAPER, **options).set_timesteps(n, strength=strength)
    with pytest.raises(ValueError, match="steps"):
        make_scheduler(LCM_DREAMSHAPER, name, **options).tables(n, 64, strength=strength)


# ---- the sampler's scan ----------------------------------------------------------------------


@partial(jax.jit, static_argnums=(0, 4))
def _denoise(sched, tables, x, start, model_fn):
    return denoise(sched, tables, model_fn, x, jax.random.key(7), start)


def _fake_model(x, t):
    return 0.3 * x + 0.1 * jnp.cos(t / 100)


@pytest.mark.parametrize("name", CONSISTENCY)
def test_denoise_matches_stepping_by_hand(name):
    """`sampler.denoise` (one scan over the table padded to its bucket, steps before `start`
    skipped, noise from `fold_in(key, i)`) gives what stepping the scheduler by hand gives."""
    sched = make_scheduler(LCM_DREAMSHAPER, name)
    x0 = jax.random.normal(jax.random.key(1), SHAPE)
    for n, start in ((4, 0), (8, 3), (1, 0)):
        tables = jax.tree.map(jnp.asarray, sched.tables(n, steps_bucket(n)))
        scanned = _denoise(sched, tables, x0, jnp.int32(start), _fake_model)
        x, state = x0, sched.init_state(x0)
        for i in range(start, n):
            out = _fake_model(sched.scale_model_input(tables, x, i), tables["timesteps"][i])
            noise = jax.random.normal(jax.random.fold_in(jax.random.key(7), i), SHAPE)
            x, state = sched.step(tables, state, jnp.int32(i), x, out, noise)
        assert relative_error(scanned, x) <= 1e-6, (n, start)


# ---- configs ---------------------------------------------------------------------------------


def test_folder_config_selects_the_scheduler(tmp_path):
    """A folder whose scheduler_config.json names LCMScheduler / TCDScheduler (as diffusers
    writes it) loads as ours, with the same resolved keys; either swaps to the other."""
    for cls, name in ((diffusers.LCMScheduler, "lcm"), (diffusers.TCDScheduler, "tcd")):
        ref = cls.from_config(dict(LCM_DREAMSHAPER, original_inference_steps=25))
        ref.save_pretrained(tmp_path / name)
        config = ref.load_config(tmp_path / name)
        assert from_diffusers_name(config["_class_name"]) == name
        sched = make_scheduler(config)
        assert sched.name == name and sched.config["original_inference_steps"] == 25
        for key in sched.defaults:
            assert sched.config[key] == ref.config[key], key
    assert make_scheduler(LCM_DREAMSHAPER, "tcd").config["steps_offset"] == 1


@pytest.mark.parametrize(
    "name,options,error,match",
    [
        ("lcm", {"thresholding": True}, NotImplementedError, "thresholding"),
        ("tcd", {"eta": 1.5}, ValueError, "eta"),
        ("tcd", {"eta": -0.1}, ValueError, "eta"),
        ("lcm", {"eta": 0.3}, ValueError, "eta"),
    ],
)
def test_config_errors(name, options, error, match):
    with pytest.raises(error, match=match):
        make_scheduler(LCM_DREAMSHAPER, name, **options)
