"""Schedulers against diffusers', step by step, driven by the same fake model and the same noise
(see `scheduler_harness`): every scheduler × prediction type × spacing, Karras σ, zero-SNR, beta
schedules, odd step counts, the SD1.5 config swapped to each algorithm, and each one's options.
Every step's sample must agree with diffusers' to 1e-5 of its scale.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
# diffusers' own `np.array(torch_tensor)` calls, under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")

from mv2_jax.diffusion.schedulers import SCHEDULERS, make_scheduler  # noqa: E402
from tests.diffusion.scheduler_harness import (  # noqa: E402
    MAX_STEPS,
    SD,
    SD15,
    SD15_LEADING,
    check_parity,
    room_for_max_steps,
)


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with XLA's
    yield
    torch.set_num_threads(threads)


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
    # 61 trailing steps are 62 timesteps in diffusers (a float arange), the last one −1;
    # steps_offset applies to `leading` only.
    cfg = dict(SD, timestep_spacing="trailing", steps_offset=1, clip_sample=False)
    check_parity(name, cfg, steps=(1, 2, 61), **room_for_max_steps(name))
    check_parity(name, dict(SD, clip_sample=False), steps=(3, 33))


@pytest.mark.parametrize("cfg", [SD15, SD15_LEADING], ids=["hub", "leading"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sd15_config_swapped(name, cfg):
    """The SD1.5 folder's PNDM config (scaled_linear, leading, steps_offset 1) run with each
    algorithm, as `XScheduler.from_config(pndm_config)`."""
    check_parity(name, cfg, steps=(7, 25, 50))


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
        {"use_karras_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1},
        {"timestep_spacing": "leading", "steps_offset": 1, "final_sigmas_type": "sigma_min"},
    ],
    ids=str,
)
def test_euler_options(options):
    check_parity("euler", SD, **options)
