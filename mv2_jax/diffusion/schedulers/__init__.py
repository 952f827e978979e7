"""Noise schedulers as pure functions over host-built tables and a small state, with diffusers'
config semantics: DDPM, DDIM, Euler, Euler ancestral, DPM-Solver++ (2M), UniPC, and the
consistency samplers LCM and TCD."""

from mv2_jax.diffusion.schedulers.base import (
    FALLBACKS,
    SCHEDULERS,
    FrozenConfig,
    Scheduler,
    from_diffusers_name,
    make_scheduler,
)
from mv2_jax.diffusion.schedulers.ddim import DDIM
from mv2_jax.diffusion.schedulers.ddpm import DDPM
from mv2_jax.diffusion.schedulers.dpm_solver import DPMSolverPP
from mv2_jax.diffusion.schedulers.euler import Euler, EulerAncestral
from mv2_jax.diffusion.schedulers.lcm import LCM
from mv2_jax.diffusion.schedulers.tcd import TCD
from mv2_jax.diffusion.schedulers.unipc import UniPC

__all__ = [
    "DDIM",
    "DDPM",
    "FALLBACKS",
    "LCM",
    "SCHEDULERS",
    "TCD",
    "DPMSolverPP",
    "Euler",
    "EulerAncestral",
    "FrozenConfig",
    "Scheduler",
    "UniPC",
    "from_diffusers_name",
    "make_scheduler",
]
