"""The models that ship inside the package (mv2_jax/assets): the shapes world's T2I, I2V and
V2V pipelines (docs/shapes.md) and the frame interpolator (assets/vfi/README.md). With no model
flags, `sample.py "a prompt"` runs the cascade on them."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {
    "t2i": ASSETS / "shapes" / "t2i",
    "i2v": ASSETS / "shapes" / "i2v",
    "v2v": ASSETS / "shapes" / "v2v",
    "vfi": ASSETS / "vfi",
}
# LoRAs trained on the shipped models (docs/shapes.md): name → folder of a diffusers-format file.
SHIPPED_LORAS = {
    "slow_motion": ASSETS / "shapes" / "lora_slow_motion",  # the I2V's objects travel ~half as far
    # consistency-distilled students (configs/lcd.py, issue 22): LCM sampling, unguided
    "lcm_i2v": ASSETS / "shapes" / "lora_lcm_i2v",  # shapes_i2v, 1,550 steps
    "lcm_v2v": ASSETS / "shapes" / "lora_lcm_v2v",  # shapes_v2v, 750 steps
}


# How the shipped models sample as teachers (`--teachers`; cascade flags → values): the
# shapes world's models are small and sample in few steps; guidance below the usual 7.5 keeps
# the key images' shapes (T2I) and the key image in frame 0 (I2V) while the motion still
# follows the prompt; V2V follows its low-res input without guidance (one UNet pass a step, not
# two). Measured in docs/shapes.md ("Sampling settings of the shipped set").
SHIPPED_SAMPLING = {
    "t2i_steps": 30,
    "t2i_guidance_scale": 2.0,
    "i2v_steps": 25,
    "i2v_guidance_scale": 5.0,
    "v2v_steps": 10,
    "v2v_guidance_scale": 1.0,
}


class StageSampling(NamedTuple):
    """One stage's sampling: its scheduler, steps, guidance, and a SHIPPED_LORAS name (None:
    none) with its scale."""

    scheduler: str
    steps: int
    guidance_scale: float
    lora: str | None = None
    lora_scale: float = 1.0


# How the shipped set samples by default (issue 22); `--teachers`, or any sampling flag of a
# stage (steps, guidance, scheduler, LoRA), gives that stage SHIPPED_SAMPLING instead. 16 + 2 + 4
# = 22 UNet calls a video against the teachers' 60 + 50 + 10 = 120, at the teachers' colour,
# shape and direction and a closer frame 0 (docs/shapes.md "Few-step sampling of the shipped
# set"). T2I: the teacher with a better solver (its distilled students round the corners); I2V:
# its student at LoRA scale 0.3 (chosen on a validation seed; at full scale frame 0 blurs); V2V:
# its student.
SHIPPED_FEW_STEP = {
    "t2i": StageSampling("dpmpp_2m", 8, 2.0),
    "i2v": StageSampling("lcm", 2, 1.0, "lcm_i2v", 0.3),
    "v2v": StageSampling("lcm", 4, 1.0, "lcm_v2v"),
}


def shipped_lora(name: str) -> Path | None:
    """The folder of the SHIPPED_LORAS entry `name`, None if this install lacks its file."""
    folder = SHIPPED_LORAS[name]
    return folder if (folder / "pytorch_lora_weights.safetensors").is_file() else None


def shipped_model(stage: str) -> Path | None:
    """The shipped model folder of `stage` ("t2i", "i2v", "v2v", "vfi"), None if this install
    has none."""
    folder = SHIPPED[stage]
    marker = "config.json" if stage == "vfi" else "model_index.json"
    return folder if (folder / marker).is_file() else None
