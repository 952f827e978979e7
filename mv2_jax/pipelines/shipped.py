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


def shipped_model(stage: str) -> Path | None:
    """The shipped model folder of `stage` ("t2i", "i2v", "v2v", "vfi"), None if this install
    has none."""
    folder = SHIPPED[stage]
    marker = "config.json" if stage == "vfi" else "model_index.json"
    return folder if (folder / marker).is_file() else None
