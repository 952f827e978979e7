"""Schedulers against diffusers', step by step, driven by the same fake model and the same noise.

The fake model is `0.3·x + 0.1·cos(t/100)` on both sides (the cosine taken in float64 on the host
from the same timestep value). Stochastic schedulers get the same per-step noise: step `i` uses
`torch.randn(shape, generator=Generator().manual_seed(SEED + i))`, which diffusers draws itself
when given that generator (DDPM, Euler ancestral: `randn_tensor` is exactly this call on CPU) or
takes as `variance_noise` (DDIM). Every step's sample must agree to 1e-5 of its scale.
"""

import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mv2_jax.diffusion.schedulers import (  # noqa: E402
    SCHEDULERS,
    from_diffusers_name,
    make_scheduler,
)
from tests.reference import relative_error  # noqa: E402

TOL = 1e-5
MAX_STEPS = 64  # every table padded to this: one compile per scheduler config
SHAPE = (2, 3, 4, 2)
SEED = 1000
DIFFUSERS = {name: getattr(diffusers, cls.diffusers_class) for name, cls in SCHEDULERS.items()}
SD15 = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
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
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with XLA's
    yield
    torch.set_num_threads(threads)


@partial(jax.jit, static_argnums=0)
def _advance(sched, tables, state, i, x, noise, c):
    """One loop iteration as a pipeline runs it: scale, fake model, step."""
    out = 0.3 * sched.scale_model_input(tables, x, i) + c
    return sched.step(tables, state, i, x, out, noise)


def _noise(i: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(SEED + i))


def _ref_step(ref, name, t, x, i, eta):
    c = 0.1 * np.cos(float(t) / 100)
    out = 0.3 * ref.scale_model_input(x, t) + c
    kw = {}
    if name in ("ddpm", "euler_a"):
        kw["generator"] = torch.Generator().manual_seed(SEED + i)
    if name == "ddim" and eta > 0:
        kw.update(eta=eta, variance_noise=_noise(i))
    return ref.step(out, t, x, **kw).prev_sample


def _our_step(sched, tables, state, i, x):
    c = np.float32(0.1 * np.cos(float(tables["timesteps"][i]) / 100))
    return _advance(sched, tables, state, jnp.int32(i), x, jnp.asarray(_noise(i).numpy()), c)


def check_parity(name, cfg, steps=(7, 25), eta=0.0, run_scale=False, **overrides) -> float:
    """Run both schedulers for each step count; the worst per-step relative error: to the
    step's output scale, or with `run_scale` to the largest sample of the run so far."""
    sched = make_scheduler(cfg, name, **overrides, **({"eta": eta} if name == "ddim" else {}))
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
        x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        x = jnp.asarray(x_ref.numpy()) * tables["init_noise_sigma"]
        x_ref = x_ref * ref.init_noise_sigma
        if "sigmas" in tables:  # to an ulp or so (torch's float32 sqrt is not IEEE-exact)
            np.testing.assert_allclose(tables["sigmas"][: num + 1], ref.sigmas.numpy(), 2e-6)
        jtables = jax.tree.map(jnp.asarray, tables)
        state = sched.init_state(x)
        scale = float(x_ref.abs().max())
        for i, t in enumerate(ref.timesteps):
            x_ref = _ref_step(ref, name, t, x_ref, i, eta)
            x, state = _our_step(sched, jtables, state, i, x)
            scale = max(scale, float(x_ref.abs().max())) if run_scale else float(x_ref.abs().max())
            err = float(np.abs(np.asarray(x, np.float64) - x_ref.numpy()).max()) / scale
            assert err <= TOL, f"{name} n={n} step {i}: relative error {err:.2e}"
            worst = max(worst, err)
    print(f"{name} {dict(cfg, **overrides)}: worst step error {worst:.2e}")
    return worst


# ---- step parity -------------------------------------------------------------------------

SPACINGS = [("linspace", 0), ("leading", 0), ("leading", 1), ("trailing", 0)]
PREDICTIONS = ["epsilon", "v_prediction", "sample"]


@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_step_parity(name, prediction, spacing, offset):
    if name == "euler_a" and prediction == "sample":
        pytest.skip("diffusers' Euler ancestral has no x0 prediction (we raise, tested below)")
    cfg = dict(SD, prediction_type=prediction, timestep_spacing=spacing, steps_offset=offset)
    check_parity(name, dict(cfg, clip_sample=False))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "unipc"])
def test_karras_sigmas(name, final, prediction):
    cfg = dict(SD, prediction_type=prediction, use_karras_sigmas=True, final_sigmas_type=final)
    check_parity(name, cfg, steps=(7, 25, 50))


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_zero_snr_trailing(name, prediction):
    """ᾱ_T = 0 (ε-prediction cannot give x̂₀ at t = T: diffusers divides by 0 too).

    For the σ samplers the first step goes from σ = 4096 to σ ≈ 12 (n = 7): its output is the
    3e-3 that survives a cancellation of its ~1e4 input, so float32 rounding alone (an ulp of
    σ_T = √(2²⁴ − 1), a near-tie that torch's sqrt and IEEE round apart; XLA's x·(1/d) for x/d)
    moves it by ~2e-5 of its own scale on either side. There errors are measured against the
    run's sample scale (its largest sample, the initial σ_T·z); the σ table itself is checked
    against diffusers' to 2e-6 as everywhere."""
    if name == "euler_a" and prediction == "sample":
        pytest.skip("no x0 prediction in Euler ancestral")
    cfg = dict(SD, prediction_type=prediction, rescale_betas_zero_snr=True,
               timestep_spacing="trailing", clip_sample=False)  # fmt: skip
    check_parity(name, cfg, run_scale=name in ("euler", "euler_a"))


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2", "trained"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_beta_schedules(name, schedule):
    cfg = {"beta_schedule": schedule, "clip_sample": False}
    if schedule == "trained":
        cfg = {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist(), "clip_sample": False}
    check_parity(name, cfg, steps=(9,))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_odd_step_counts(name):
    # 61 trailing steps are 62 timesteps in diffusers (a float arange), the last one −1.
    check_parity(name, dict(SD, timestep_spacing="trailing", clip_sample=False), steps=(1, 2, 61))
    check_parity(name, dict(SD, clip_sample=False), steps=(3, 33))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sd15_config_swapped(name):
    """The SD1.5 folder's PNDM config (scaled_linear, leading, steps_offset 1) run with each
    algorithm, as `XScheduler.from_config(pndm_config)`."""
    check_parity(name, SD15, steps=(7, 25, 50))


@pytest.mark.parametrize("clip_range", [1.0, 0.3])
@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_clip_sample(name, clip_range):
    check_parity(name, dict(SD, clip_sample=True, clip_sample_range=clip_range))


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_ddpm_variance_types(variance_type):
    check_parity("ddpm", {"variance_type": variance_type}, steps=(7, 25, 64))


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta(eta, set_alpha_to_one):
    check_parity("ddim", dict(SD, set_alpha_to_one=set_alpha_to_one), eta=eta)


@pytest.mark.parametrize(
    "options",
    [
        {"solver_order": 1},
        {"lower_order_final": False},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"euler_at_final": True, "final_sigmas_type": "sigma_min"},
        {"solver_type": "heun"},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
        {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 8.0},  # a source's keys
    ],
    ids=str,
)
def test_dpm_solver_options(options):
    options = dict(options)
    cfg = dict(SD, **{k: options.pop(k) for k in ("sigma_min", "sigma_max") if k in options})
    check_parity("dpmpp_2m", cfg, steps=(7, 14, 15, 25), **options)


def test_dpm_solver_karras_cosine_timesteps():
    """Karras σ on `squaredcos_cap_v2` map back to unrounded t (truncated to int64). Only the
    tables are compared: the first timesteps repeat, so diffusers' `index_for_timestep` starts
    at the second entry and then indexes past its σ table (IndexError), a run we cannot match."""
    cfg = {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}
    for n in (7, 25):
        ref = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
        ref.set_timesteps(n)
        tables = make_scheduler(cfg, "dpmpp_2m").tables(n, MAX_STEPS)
        np.testing.assert_array_equal(tables["timesteps"][:n], ref.timesteps.numpy())
        np.testing.assert_allclose(tables["sigmas"][: n + 1], ref.sigmas.numpy(), 2e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"solver_order": 1},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        {"disable_corrector": [0, 3]},
        {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 8.0},
        {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    ],
    ids=str,
)
def test_unipc_options(options):
    check_parity("unipc", SD, steps=(7, 14, 15, 25), **options)


@pytest.mark.parametrize(
    "options",
    [
        {"timestep_type": "continuous", "prediction_type": "v_prediction"},
        {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 8.0},
        {"timestep_spacing": "leading", "steps_offset": 1, "final_sigmas_type": "sigma_min"},
    ],
    ids=str,
)
def test_euler_options(options):
    check_parity("euler", SD, **options)


# ---- img2img / SDEdit ------------------------------------------------------------------------


def _pipeline_timesteps(ref, n, strength):
    """The SD img2img pipeline's own `get_timesteps` (it also sets the scheduler's begin index)."""
    pipe = types.SimpleNamespace(scheduler=ref)
    timesteps, _ = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(pipe, n, strength, "cpu")
    return timesteps


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_start_index_and_add_noise(name):
    sched = make_scheduler(SD15, name)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for n in (7, 25):
        tables = sched.tables(n, MAX_STEPS)
        for strength in (0.0, 0.1, 0.3, 0.5, 0.75, 0.99, 1.0):
            ref = DIFFUSERS[name].from_config(SD15)
            ref.set_timesteps(n)
            timesteps = _pipeline_timesteps(ref, n, strength)
            start = sched.start_index(n, strength)
            np.testing.assert_array_equal(
                tables["timesteps"][start : tables["num_steps"]], timesteps.numpy()
            )
            if len(timesteps) == 0:
                continue
            expected = ref.add_noise(x0, noise, timesteps[:1].repeat(SHAPE[0])).numpy()
            ours = sched.add_noise(
                tables, jnp.asarray(x0.numpy()), jnp.asarray(noise.numpy()), start
            )
            assert relative_error(ours, expected) <= 1e-6, (n, strength)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_img2img_run(name):
    """A strength-0.6 run as the img2img pipeline does it: multistep solvers restart at order 1
    and UniPC without a corrector, as diffusers does after `set_begin_index`."""
    n, strength = 20, 0.6
    sched = make_scheduler(SD15, name)
    ref = DIFFUSERS[name].from_config(SD15)
    ref.set_timesteps(n)
    timesteps = _pipeline_timesteps(ref, n, strength)
    start = sched.start_index(n, strength)
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    x_ref = ref.add_noise(init, noise, timesteps[:1].repeat(SHAPE[0]))
    tables = jax.tree.map(jnp.asarray, sched.tables(n, MAX_STEPS))
    x = sched.add_noise(tables, jnp.asarray(init.numpy()), jnp.asarray(noise.numpy()), start)
    state = sched.init_state(x)
    for k, t in enumerate(timesteps):
        x_ref = _ref_step(ref, name, t, x_ref, start + k, 0.0)
        x, state = _our_step(sched, tables, state, start + k, x)
        assert relative_error(x, x_ref.numpy()) <= TOL, (name, k)


# ---- tables and the jitted loop -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_tables_fixed_shapes(name):
    sched = make_scheduler(SD15, name)
    shapes = None
    for n in (1, 7, 25, 61, 63):
        tables = sched.tables(n, MAX_STEPS)
        assert tables["timesteps"].dtype == np.float32 and tables["num_steps"].dtype == np.int32
        assert tables["init_noise_sigma"].dtype == np.float32
        got = {k: (v.shape, v.dtype) for k, v in tables.items()}
        assert shapes is None or got == shapes
        shapes = got
        for key, value in tables.items():
            assert np.all(np.isfinite(value)), (key, n)
    with pytest.raises(ValueError, match="max_steps"):
        sched.tables(65, MAX_STEPS)


_traces = []


@partial(jax.jit, static_argnums=0)
def _loop(sched, tables, x, start, key):
    """The sampler's loop: a scan over the padded table skipping steps outside [start, n)."""
    _traces.append(sched)

    def one(carry, i):
        x, state = carry
        out = 0.3 * sched.scale_model_input(tables, x, i) + 0.1 * jnp.cos(
            tables["timesteps"][i] / 100
        )
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return sched.step(tables, state, i, x, out, noise)

    def body(carry, i):
        active = (i >= start) & (i < tables["num_steps"])
        return jax.lax.cond(active, one, lambda c, _: c, carry, i), None

    steps = jnp.arange(tables["timesteps"].shape[0], dtype=jnp.int32)
    (x, _), _ = jax.lax.scan(body, (x, sched.init_state(x)), steps)
    return x


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_padded_loop_matches_unpadded(name):
    sched = make_scheduler(SD15, name)
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), SHAPE)
    _traces.clear()
    for n, start in ((7, 0), (25, 0), (25, 9)):
        padded = _loop(sched, sched.tables(n, MAX_STEPS), x, start, key)
        exact = _loop(sched, sched.tables(n, sched.tables(n, n + 1)["num_steps"]), x, start, key)
        assert relative_error(padded, exact) <= 1e-6, (n, start)
    # One trace for the padded tables (any n, any start), one per exact length (7 and 25).
    assert len(_traces) == 3


# ---- configs and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_defaults_match_diffusers(name):
    import inspect

    params = inspect.signature(DIFFUSERS[name].__init__).parameters
    expected = {k: p.default for k, p in params.items() if k != "self"}
    ours = dict(SCHEDULERS[name].defaults)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == (tuple(value) if isinstance(value, list) else value), key


SOURCES = {
    "sd15": SD15,
    "sdxl": dict(SD, _class_name="EulerDiscreteScheduler", timestep_spacing="leading",
                 steps_offset=1, interpolation_type="linear", use_karras_sigmas=False,
                 skip_prk_steps=True, set_alpha_to_one=False, sample_max_value=1.0),
    "unipc": dict(SD, _class_name="UniPCMultistepScheduler", solver_type="bh2",
                  use_karras_sigmas=True, sigma_min=0.1),
    "dpm": dict(SD, _class_name="DPMSolverMultistepScheduler", solver_type="heun",
                euler_at_final=True, _use_default_values=["timestep_spacing"],
                timestep_spacing="trailing"),
}  # fmt: skip


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_from_config_semantics(name, source):
    """`make_scheduler(cfg, name)` resolves keys exactly as `XScheduler.from_config(cfg)`."""
    cfg = SOURCES[source]
    ref = DIFFUSERS[name].from_config(cfg)
    sched = make_scheduler(cfg, name)
    for key in sched.defaults:
        value = ref.config[key]
        assert sched.config[key] == (tuple(value) if isinstance(value, list) else value), key


def test_default_class_and_fallbacks():
    assert make_scheduler(SD15).name == "ddim"  # PNDM runs as DDIM with the same config
    assert make_scheduler(SOURCES["sdxl"]).name == "euler"
    assert from_diffusers_name("LMSDiscreteScheduler") == "euler"
    for name, cls in SCHEDULERS.items():
        assert from_diffusers_name(cls.diffusers_class) == name
    a, b = make_scheduler(SD15, "unipc"), make_scheduler(dict(SD15), "unipc")
    assert a == b and hash(a) == hash(b) and a != make_scheduler(SD15, "dpmpp_2m")
    assert make_scheduler(SD15, "ddim", eta=1.0).config["eta"] == 1.0


@pytest.mark.parametrize(
    "name,options,error,match",
    [
        ("nope", {}, ValueError, "known"),
        ("ddim", {"thresholding": True}, NotImplementedError, "thresholding"),
        ("ddim", {"beta_schedule": "sigmoid"}, NotImplementedError, "beta_schedule"),
        ("ddim", {"timestep_spacing": "karras"}, ValueError, "timestep_spacing"),
        ("ddim", {"not_a_key": 1}, ValueError, "not_a_key"),
        ("ddpm", {"variance_type": "learned_range"}, NotImplementedError, "variance_type"),
        ("euler", {"interpolation_type": "log_linear"}, NotImplementedError, "interpolation"),
        ("euler", {"use_exponential_sigmas": True}, NotImplementedError, "exponential"),
        ("euler_a", {"prediction_type": "sample"}, NotImplementedError, "prediction_type"),
        ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, NotImplementedError, "algorithm"),
        ("dpmpp_2m", {"solver_order": 3}, NotImplementedError, "solver_order"),
        ("dpmpp_2m", {"use_lu_lambdas": True}, NotImplementedError, "use_lu_lambdas"),
        ("unipc", {"predict_x0": False}, NotImplementedError, "predict_x0"),
        ("unipc", {"solver_type": "bh1"}, NotImplementedError, "final_sigmas_type"),
    ],
)
def test_unsupported_errors(name, options, error, match):
    with pytest.raises(error, match=match):
        make_scheduler(SD15, name, **options)


def test_unsupported_class_errors():
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        make_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler"})
    with pytest.raises(ValueError, match="_class_name"):
        make_scheduler({"beta_schedule": "linear"})


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_bit_exact(schedule):
    """ᾱ is diffusers' bit for bit; with zero-SNR rescaling too, given torch's sqrt."""
    from mv2_jax.diffusion import schedules

    cfg = dict(SD, beta_schedule=schedule)
    ref = diffusers.DDIMScheduler.from_config(cfg)
    np.testing.assert_array_equal(make_scheduler(cfg, "ddim").train_alphas_cumprod(),
                                  ref.alphas_cumprod.numpy())  # fmt: skip
    ref = diffusers.DDIMScheduler.from_config(dict(cfg, rescale_betas_zero_snr=True))
    betas = schedules.make_betas(schedule, SD["beta_start"], SD["beta_end"], 1000)
    torch_sqrt = lambda a: torch.sqrt(torch.from_numpy(a)).numpy()  # noqa: E731
    rescaled = schedules.rescale_zero_terminal_snr(betas, sqrt=torch_sqrt)
    np.testing.assert_array_equal(rescaled, ref.betas.numpy())
    np.testing.assert_array_equal(schedules.alphas_cumprod(rescaled), ref.alphas_cumprod.numpy())
