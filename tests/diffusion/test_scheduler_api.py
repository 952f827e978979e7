"""The scheduler interface around the steps: img2img start and `add_noise` against the SD img2img
pipeline, fixed table shapes, the padded jitted loop, diffusers' `from_config` key resolution,
and clear errors for what is not implemented."""

import inspect
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
# diffusers' own `np.array(torch_tensor)` calls, under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")

from mv2_jax.diffusion import schedules  # noqa: E402
from mv2_jax.diffusion.schedulers import (  # noqa: E402
    SCHEDULERS,
    from_diffusers_name,
    make_scheduler,
)
from tests.diffusion.scheduler_harness import (  # noqa: E402
    DIFFUSERS,
    MAX_STEPS,
    SD,
    SD15,
    SD15_LEADING,
    SHAPE,
    TOL,
    img2img_timesteps,
    our_step,
    ref_step,
    room_for_max_steps,
    step_eta,
)
from tests.reference import relative_error  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with XLA's
    yield
    torch.set_num_threads(threads)


# ---- img2img / SDEdit ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_start_index_and_add_noise(name):
    sched = make_scheduler(SD15_LEADING, name)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for n in (7, 25):
        tables = sched.tables(n, MAX_STEPS)
        for strength in (0.0, 0.1, 0.3, 0.5, 0.75, 0.99, 1.0):
            ref = DIFFUSERS[name].from_config(SD15_LEADING)
            ref.set_timesteps(n)
            timesteps = img2img_timesteps(ref, n, strength)
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
    sched = make_scheduler(SD15_LEADING, name)
    ref = DIFFUSERS[name].from_config(SD15_LEADING)
    ref.set_timesteps(n)
    timesteps = img2img_timesteps(ref, n, strength)
    start = sched.start_index(n, strength)
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    x_ref = ref.add_noise(init, noise, timesteps[:1].repeat(SHAPE[0]))
    tables = jax.tree.map(jnp.asarray, sched.tables(n, MAX_STEPS))
    x = sched.add_noise(tables, jnp.asarray(init.numpy()), jnp.asarray(noise.numpy()), start)
    state = sched.init_state(x)
    for k, t in enumerate(timesteps):
        x_ref = ref_step(ref, name, t, x_ref, start + k, step_eta(sched))
        x, state = our_step(sched, tables, state, start + k, x)
        assert relative_error(x, x_ref.numpy()) <= TOL, (name, k)


# ---- tables and the jitted loop -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_tables_fixed_shapes(name):
    sched = make_scheduler(SD15_LEADING, name, **room_for_max_steps(name))
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
def _loop(sched, tables, x, start):
    """The sampler's loop: a scan over the padded table skipping steps outside [start, n). The
    "noise" is a cheap deterministic stand-in (jax.random's threefry takes seconds to compile)."""
    _traces.append(sched)
    phase = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) * 12.9898

    def one(carry, i):
        x, state = carry
        t = tables["timesteps"][i]
        out = 0.3 * sched.scale_model_input(tables, x, i) + 0.1 * jnp.cos(t / 100)
        noise = jnp.sin(phase + 78.233 * i)
        return sched.step(tables, state, i, x, out, noise)

    def body(carry, i):
        active = (i >= start) & (i < tables["num_steps"])
        return jax.lax.cond(active, one, lambda c, _: c, carry, i), None

    steps = jnp.arange(tables["timesteps"].shape[0], dtype=jnp.int32)
    (x, _), _ = jax.lax.scan(body, (x, sched.init_state(x)), steps)
    return x


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_padded_loop_matches_unpadded(name):
    """Padded to MAX_STEPS, one compiled loop serves every step count and start; it gives what
    the loop over the exact-length tables gives."""
    sched = make_scheduler(SD15_LEADING, name)
    x = jax.random.normal(jax.random.key(1), SHAPE)
    _traces.clear()
    for n, start in ((7, 0), (25, 0), (25, 9)):
        padded = _loop(sched, sched.tables(n, MAX_STEPS), x, start)
        if n == 25:
            exact = _loop(sched, sched.tables(n, n), x, start)
            assert relative_error(padded, exact) <= 1e-6, (n, start)
    assert len(_traces) == 2  # the padded loop traced once, the exact one once


# ---- configs and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_defaults_match_diffusers(name):

    params = inspect.signature(DIFFUSERS[name].__init__).parameters
    expected = {k: p.default for k, p in params.items() if k != "self"}
    ours = dict(SCHEDULERS[name].defaults)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == (tuple(value) if isinstance(value, list) else value), key


SOURCES = {
    "sd15": SD15,
    "sd15_leading": SD15_LEADING,
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
