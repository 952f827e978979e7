"""The models that ship inside the package (mv2_jax/assets): the shapes world's T2I, I2V and
V2V pipelines (docs/shapes.md) and the frame interpolator (assets/vfi/README.md). With no model
flags, `sample.py "a prompt"` runs the cascade on them."""

from __future__ import annotations

from pathlib import Path

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
}


# How `sample.py` runs the shipped set unless told otherwise (cascade flags → values): the
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


def shipped_model(stage: str) -> Path | None:
    """The shipped model folder of `stage` ("t2i", "i2v", "v2v", "vfi"), None if this install
    has none."""
    folder = SHIPPED[stage]
    marker = "config.json" if stage == "vfi" else "model_index.json"
    return folder if (folder / marker).is_file() else None
