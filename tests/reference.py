"""Helpers for parity tests against the PyTorch reference implementations.

Reference models get random weights in *every* parameter (zero-initialised ones included, so
that e.g. a zero output projection cannot hide a wrong mapping), scaled so activations stay O(1).
"""

from __future__ import annotations

import contextlib

import numpy as np


def randomize_(model, seed: int = 0):
    """Fill every parameter and floating buffer of a torch module in place; returns it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
            elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")) or (
                "norm" in name and name.endswith("weight")
            ):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def relative_error(actual, expected) -> float:
    """max |actual − expected| / max |expected| over the whole output."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def nchw_to_nhwc(x):
    x = np.asarray(x)
    return np.moveaxis(x, 1, -1)


def nhwc_to_nchw(x):
    x = np.asarray(x)
    return np.moveaxis(x, -1, 1)


@contextlib.contextmanager
def diffusers_draws_our_step_noise(seed: int):
    """While open, diffusers' LCMScheduler re-noises with our step `i` noise
    (`mv2_jax.diffusion.sampler.step_noise`) at its `i`-th draw (it draws once per step but the
    last), moved to its channels-first layout; yields the list of its draws' shapes."""
    import torch
    from diffusers.schedulers import scheduling_lcm

    from mv2_jax.diffusion.sampler import sampler_key, step_noise

    calls = []

    def ours(shape, **kwargs):
        channels_last = (shape[0], *shape[2:], shape[1])
        noise = step_noise(sampler_key(seed), len(calls), channels_last)
        calls.append(shape)
        return torch.from_numpy(np.moveaxis(np.asarray(noise), -1, 1).copy())

    original = scheduling_lcm.randn_tensor
    scheduling_lcm.randn_tensor = ours
    try:
        yield calls
    finally:
        scheduling_lcm.randn_tensor = original
