"""A randomly initialised pipeline folder, for training from scratch: the configs give each
component's diffusers / transformers config, this writes the same folder layout that
`convert/to_flax.py` writes (model_index.json, orbax params per component, tokenizer,
scheduler), so training from scratch and fine-tuning converted weights share one code path, and
the result loads with `mv2_jax.load_pipeline`. The params are written by the calling process
alone (`save_params`), so process 0 of a multi-process run can write the folder by itself.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mv2_jax.weights.convert import write_component
from mv2_jax.weights.load import build_module, read_config
from mv2_jax.weights.new_folder import check_new_folder, new_folder

# Lower-case text is all CLIP's tokenizer passes on; every character is a token on its own
# (mid-word) and with the end-of-word mark, so no merges are needed.
_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation


def write_char_tokenizer(folder: Path, max_length: int = 77) -> Path:
    """A character-level CLIP tokenizer (vocab.json, empty merges.txt, tokenizer_config.json):
    transformers' `CLIPTokenizer` reads it like any CLIP vocabulary. Vocabulary size
    `char_vocab_size()`; characters outside it become `<|endoftext|>` (CLIP's unknown).
    `folder` must not exist; it appears whole or not at all (`new_folder`)."""
    from transformers import CLIPTokenizer

    vocab = ["<|startoftext|>", "<|endoftext|>", *_CHARACTERS, *(c + "</w>" for c in _CHARACTERS)]
    with new_folder(folder, "write the tokenizer") as partial:
        (partial / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (partial / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(
            str(partial / "vocab.json"), str(partial / "merges.txt"), model_max_length=max_length
        )
        tokenizer.save_pretrained(str(partial))
    return Path(folder)


def char_vocab_size() -> int:
    return 2 + 2 * len(_CHARACTERS)


def _random_component(config: Mapping[str, Any], seed: int, out: Path) -> None:
    module, family = build_module(dict(config), jnp.float32, where=str(out / "config.json"))
    args, kwargs = family.example_inputs(module)
    params = jax.jit(lambda rng: nn.meta.unbox(module.init(rng, *args, **kwargs)["params"]))(
        jax.random.key(seed)
    )
    write_component(out, config, params)


def write_random_pipeline(model: Mapping[str, Any], folder: Path, seed: int) -> Path:
    """A `StableDiffusionPipeline`-layout folder from the `model` config section: `unet`, `vae`,
    `text_encoder` (configs with `_class_name` / `architectures`: random weights from `seed`;
    or the path of a trained component folder, copied as it is), `scheduler` (a
    `scheduler_config.json` dict) and `tokenizer` (a tokenizer folder; default: a character
    tokenizer). With a `UNetMotionModel` unet it is an `AnimateDiffPipeline` (same layout).
    `folder` must not exist; it appears complete or not at all (`new_folder`)."""
    folder = check_new_folder(folder, "write the random pipeline")
    names = ("unet", "vae", "text_encoder")
    for name in (*names, "tokenizer"):  # before minutes of random init
        if isinstance(model.get(name), str) and not Path(model[name]).is_dir():
            raise FileNotFoundError(
                f"config.model.init.{name}={model[name]!r}: no such folder (a component folder "
                "written by `python -m mv2_jax.training.export`, or a component config dict)"
            )
    with new_folder(folder, "write the random pipeline") as partial:
        _write_pipeline(model, partial, seed)
    return folder


def _write_pipeline(model: Mapping[str, Any], folder: Path, seed: int) -> None:
    unet = model["unet"]
    video = not isinstance(unet, str) and unet.get("_class_name") == "UNetMotionModel"
    pipeline_class = "AnimateDiffPipeline" if video else "StableDiffusionPipeline"
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1"}
    for offset, name in enumerate(("unet", "vae", "text_encoder")):
        if isinstance(model[name], str):
            config = _copy_folder(Path(model[name]), folder / name, name)
        else:
            config = dict(model[name])
            _random_component(config, seed + offset, folder / name)
        library = "transformers" if "architectures" in config else "diffusers"
        index[name] = [library, config.get("_class_name") or config["architectures"][0]]
    if model.get("tokenizer"):
        _copy_folder(Path(model["tokenizer"]), folder / "tokenizer", "tokenizer")
    else:
        write_char_tokenizer(folder / "tokenizer", model.get("max_text_length", 77))
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    scheduler = dict(model["scheduler"])
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _copy_folder(src: Path, dst: Path, name: str) -> dict:
    """Copy a trained component (or tokenizer) folder; its config, `{}` for a tokenizer."""
    shutil.copytree(src, dst)
    return read_config(dst) if name != "tokenizer" else {}
