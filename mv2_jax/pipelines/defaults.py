"""The per-stage sampling defaults and the rules every pipeline, the cascade and the command
lines share: one place for the default steps, guidance and frames of each stage, the latent-size
rule (a multiple of the VAE's factor, at least 8) and the "no step left after `strength`" check.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageDefaults:
    """What a stage samples with when a call does not say. `guidance_scale` None: the model's
    (7.5; 5.0 for SDXL). `num_frames` None: an image stage (T2I) or the input's (V2V)."""

    steps: int
    guidance_scale: float | None = None
    num_frames: int | None = None


# MagicVideo-V2 (arXiv:2401.04468 §3): I2V at ≈600² × 32 frames and V2V to ≈1048² for
# SD1.5-size models; AnimateDiff's own default for text → video is 16 frames.
PAPER_I2V_SIZE, PAPER_FRAMES, PAPER_V2V_SIZE = 600, 32, 1048
STAGE_DEFAULTS = {
    "t2i": StageDefaults(steps=50),
    "t2v": StageDefaults(steps=25, num_frames=16),
    "i2v": StageDefaults(steps=25, num_frames=PAPER_FRAMES),
    "v2v": StageDefaults(steps=25),
}
# The image-to-video options' choices (`ImageToVideoPipeline`): the latent noise prior and the
# frames the ControlNet sees the key image on.
NOISE_PRIORS = ("none", "mean_shift", "frequency")
CONTROLNET_FRAMES = ("first", "all")
# How a guided step runs its unconditional and conditional halves (`guidance_batching`): one UNet
# batch of 2B, two of B one after the other, or chosen from the compiled memory figures.
GUIDANCE_BATCHING = ("auto", "batched", "sequential")
# SDEdit's strength when a V2V call runs a UNet without low-res channels and gives none.
DEFAULT_SDEDIT_STRENGTH = 0.5
# The guidance a pipeline folder gets unless it says otherwise (diffusers' defaults; 8.5 is
# LatentConsistencyModelPipeline's, given to its UNet as an embedding, not as a negative branch).
DEFAULT_GUIDANCE_SCALE, SDXL_GUIDANCE_SCALE, LCM_GUIDANCE_SCALE = 7.5, 5.0, 8.5


def size_multiple(vae_scale_factor: int) -> int:
    """Heights and widths must be multiples of this: the VAE's factor, and at least 8."""
    return max(8, vae_scale_factor)


def size_problems(height: int, width: int, vae_scale_factor: int, where: str = "") -> list[str]:
    """Each of `height`/`width` that is not a positive multiple of `size_multiple`, as one line
    with the nearest sizes that work (`where` prefixes the line, e.g. "i2v: ")."""
    multiple = size_multiple(vae_scale_factor)
    problems = []
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            below = value // multiple * multiple
            near = f"{below} or {below + multiple}" if below >= multiple else str(multiple)
            problems.append(
                f"{where}{name} {value} is not a positive multiple of {multiple}; try {near}"
            )
    return problems


def check_size(height: int, width: int, vae_scale_factor: int) -> None:
    """`size_problems` as one ValueError."""
    problems = size_problems(height, width, vae_scale_factor)
    if problems:
        multiple = size_multiple(vae_scale_factor)
        raise ValueError(
            f"height and width must be multiples of {multiple}: " + "; ".join(problems)
        )


def check_steps_left(start: int, num_steps: int, strength: float, num_inference_steps: int):
    """img2img / SDEdit start at step `start` of `num_steps`; none left is an error."""
    if start >= num_steps:
        raise ValueError(
            f"strength {strength} with {num_inference_steps} steps leaves no step to run; "
            "raise strength or num_inference_steps"
        )
