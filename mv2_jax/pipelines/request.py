"""What one pipeline call asks for, and what it compiles to.

A call is `request → prepare → program → decode` (docs/pipelines.md):
- `SamplingRequest` (and each pipeline's subclass) is every per-call setting, frozen and checked
  when it is made; nothing of a call is ever stored on the pipeline object;
- `prepare` turns it, on the host, into a `Prepared`: the `Program` (the static settings that
  decide the compiled program: shapes, scheduler, which conditionings run, tiling) and the
  arrays the program takes — `inputs` (batched) and `scalars` (traced, replicated);
- the pipeline keeps one compiled program per `Program`, so a new prompt, seed, guidance scale,
  step count or conditioning scale reuses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mv2_jax.pipelines.defaults import GUIDANCE_BATCHING


@dataclass(frozen=True, kw_only=True, eq=False)
class SamplingRequest:
    """The settings every diffusion pipeline call shares (diffusers' names). `prompt` is one
    string or several; `negative_prompt` one for all or one each. `guidance_scale` None: the
    pipeline's default; ≤ 1 turns guidance off (a pipeline whose UNet embeds the scale, LCM's,
    never runs the negative branch: `guidance_embedded`). `latents`: channels-last unit
    Gaussian noise (scaled by the scheduler's initial sigma inside). `height`/`width`/
    `num_frames` None: the pipeline's defaults. `vae_tile_size`: VAE tiles of that many pixels,
    None for whole frames. `guidance_batching`: how the guided halves run, "batched" (one UNet
    call of 2B a step), "sequential" (two calls of B, about half the activation memory, the same
    numbers) or "auto" (sequential when the batched program's compiled memory exceeds the
    device's; batched where the device states no limit, as on CPU); see
    `mv2_jax/pipelines/guidance_batching.py`."""

    prompt: str | Sequence[str]
    negative_prompt: str | Sequence[str] | None = None
    num_inference_steps: int = 50
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    latents: np.ndarray | None = None
    seed: int = 0
    mesh: Any = None
    per_prompt: int = 1  # diffusers' num_images_per_prompt / num_videos_per_prompt
    decode_chunk_size: int = 16
    vae_tile_size: int | None = None
    progress: bool = False
    guidance_batching: str = "auto"

    def __post_init__(self):
        prompts = (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt: a string or a list of strings, got {self.prompt!r}")
        object.__setattr__(self, "prompt", prompts)
        negatives = self.negative_prompt
        if negatives is not None:
            negatives = (negatives,) * len(prompts) if isinstance(negatives, str) else negatives
            negatives = tuple(negatives)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
            object.__setattr__(self, "negative_prompt", negatives)
        _check_int(self.num_inference_steps, "num_inference_steps", 1)
        _check_int(self.per_prompt, "num_images_per_prompt / num_videos_per_prompt", 1)
        _check_int(self.decode_chunk_size, "decode_chunk_size", 1)
        _check_int(self.seed, "seed", None)
        for name in ("height", "width", "num_frames", "vae_tile_size"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 1)
        if self.guidance_scale is not None:
            _check_finite(self.guidance_scale, "guidance_scale")
        _check_finite(self.guidance_rescale, "guidance_rescale")
        check_choice(self.guidance_batching, "guidance_batching", GUIDANCE_BATCHING)

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.prompt


@dataclass(frozen=True)
class Program:
    """The static settings of a call: what decides the compiled program (its cache key).
    Everything else a call changes is an array argument of the program."""

    scheduler: Any  # an immutable, hashable Scheduler
    use_cfg: bool
    shape: tuple[int, ...]  # the latents: [B, h, w, C] (images) or [B, F, h, w, C] (videos)
    # under guidance: "batched" (one UNet call of 2B), "sequential" (two of B) or "auto" (the
    # pipeline resolves it to one of those before compiling; `pipelines/guidance_batching.py`)
    guidance_batching: str = "batched"
    decode_chunk_size: int = 16
    vae_tile_size: int | None = None
    progress: bool = False
    init_latents: bool = False  # img2img / SDEdit: start from encoded pixels at step `start`
    sdxl: bool = False  # SDXL micro-conditioning (`added_cond_kwargs`)
    reference: bool = False  # I2V: reference attention to the key image (appearance encoder)
    ip_adapter: bool = False  # I2V: IP-Adapter image-prompt attention
    controlnet_frames: str | None = None  # I2V: "first" / "all" frames see the ControlNet
    noise_prior: str = "none"  # I2V: "none" / "mean_shift" / "frequency"
    concat_low_res: bool = False  # V2V: low-res latents concatenated at conv_in


@dataclass(frozen=True)
class Prepared:
    """A request after host-side preparation: its `program` and the program's arguments."""

    program: Program
    inputs: dict = field(default_factory=dict)  # batched arrays (split over data × fsdp)
    scalars: dict = field(default_factory=dict)  # traced scalars and step tables (replicated)

    @property
    def unet_calls(self) -> int:
        """Denoiser evaluations the program makes: one per step it runs (from `start`), counted
        twice under classifier-free guidance (the batch's two halves), as the cost of a few-step
        sampler is compared (issue 22)."""
        steps = int(self.scalars["tables"]["num_steps"]) - int(self.scalars.get("start", 0))
        return steps * (2 if self.program.use_cfg else 1)

    def adding(self, program: dict | None = None, inputs=None, scalars=None) -> Prepared:
        """A copy with `program` fields replaced and `inputs` / `scalars` entries added."""
        return Prepared(
            replace(self.program, **(program or {})),
            {**self.inputs, **(inputs or {})},
            {**self.scalars, **(scalars or {})},
        )


def from_arguments(cls: type[SamplingRequest], arguments: dict) -> SamplingRequest:
    """`cls` from the `locals()` of a pipeline's `request` method: its parameters are the
    request's fields by name (diffusers' `num_images_per_prompt` / `num_videos_per_prompt` is
    `per_prompt`; a `**conditioning` catch-all is spread), so each signature is written once."""
    fields = {k: v for k, v in arguments.items() if k not in ("self", "__class__", "conditioning")}
    for name in ("num_images_per_prompt", "num_videos_per_prompt"):
        if name in fields:
            fields["per_prompt"] = fields.pop(name)
    return cls(**fields, **arguments.get("conditioning", {}))


def _check_int(value, name: str, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")


def _check_finite(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def check_unit_interval(value, name: str, open_below: bool = False) -> None:
    """`value` in [0, 1] (or (0, 1] with `open_below`), else a ValueError naming it."""
    _check_finite(value, name)
    if value > 1 or value < 0 or (open_below and value == 0):
        raise ValueError(f"{name} must be in {'(' if open_below else '['}0, 1], got {value}")


def check_choice(value, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r}; choose from {tuple(choices)}")
