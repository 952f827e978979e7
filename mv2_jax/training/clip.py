"""The contrastive text-image stage for the trainer (stage "clip"): the small CLIP text encoder
that the diffusion stages condition on, trained as CLIP is, against a vision tower trained
with it, on the captioned clips of `config.data` (`make_train_iterator` batches).

- Text: a `CLIPTextModelWithProjection` on the captions, tokenised by the project's BPE
  tokenizer (`mv2_jax.training.tokenizer`) or the one `clip.tokenizer` names.
- Vision: a `CLIPVisionModelWithProjection` that sees a clip as one image, either a
  storyboard — a `grid × grid` mosaic of frames spread evenly over the clip, in reading order —
  or, with `clip.channel_frames = k`, k frames spread evenly over the clip stacked on the
  channels (3k of them), so every patch shows where its content moves: a tiny storyboard ViT
  tells the axis of a motion but not its sign (left from right), the stacked frames tell both.
  An image example (F = 1) fills every tile or slot with its frame. Pixels are normalised with
  CLIP's mean and std, as `preprocess_images` does at inference.
- Loss: symmetric InfoNCE with a learned temperature (`logit_scale`, capped at ln 100), as
  CLIP trains, over the in-batch cosine similarities.

Positives. A small world repeats its captions within a batch (the shapes world has 84
combinations, and several wordings of each), so "every other example is a negative" would
push apart a caption and a clip that match. Each example gets a label on the host instead,
and all examples with the same label are positives for each other (multi-positive targets:
the target distribution of a row is uniform over its positives). The label is
`clip.caption_label(caption)` when that names a function ("module:function", e.g. the
world's `parse_prompt`, which maps every wording to (colour, shape, motion)), else the
caption normalised: lower case, words only, `clip.ignore_words` dropped. With all labels
distinct this is exactly CLIP's loss. Accuracy counts a retrieval as right when the top
match is any positive.

The tokenizer folder is `clip.tokenizer` when set; else the stage builds the project's
tokenizer (`write_bpe_tokenizer`, deterministic) into `WORKDIR/tokenizer`, where the export
reads it (and checks its size against the trained token table).
"""

from __future__ import annotations

import importlib
import re
import shutil
import zlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mv2_jax.models.clip import CLIPTextModelWithProjection
from mv2_jax.models.clip_vision import CLIP_MEAN, CLIP_STD, CLIPVisionModelWithProjection
from mv2_jax.pipelines.text import load_tokenizer
from mv2_jax.training.config_data import data_iterator
from mv2_jax.training.stage import FreshModelStage, dtype_of

MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP caps the temperature at 1/100


# ---- configs and tokenizer (shared by the stage and the export)


def tokenizer_folder(settings, workdir: Path) -> Path:
    """The run's tokenizer folder: `clip.tokenizer`, else `workdir/tokenizer`, written by
    `write_bpe_tokenizer` if it is missing (by process 0, once: `written_once`)."""
    from mv2_jax.training.tokenizer import write_bpe_tokenizer
    from mv2_jax.weights.new_folder import written_once

    if settings.tokenizer:
        folder = Path(settings.tokenizer)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"clip.tokenizer={settings.tokenizer!r}: no such folder (a CLIPTokenizer folder, "
                "or '' to build the project's tokenizer)"
            )
        return folder
    return written_once(
        Path(workdir) / "tokenizer",
        lambda out: write_bpe_tokenizer(out, settings.max_length, settings.num_merges),
    )


def text_config(settings, tokenizer) -> dict[str, Any]:
    """`clip.text` with what the tokenizer decides: vocabulary size (if 0), the special token
    ids (pooling reads the first end-of-text token) and the projection size."""
    config = _as_dict(settings.text)
    vocab = len(tokenizer)
    if not config.get("vocab_size"):
        config["vocab_size"] = vocab
    elif config["vocab_size"] < vocab:
        raise ValueError(
            f"clip.text.vocab_size={config['vocab_size']} < the tokenizer's {vocab} tokens; "
            "set it to 0 (the tokenizer's size)"
        )
    if config.get("max_position_embeddings", 77) < tokenizer.model_max_length:
        raise ValueError(
            f"clip.text.max_position_embeddings={config['max_position_embeddings']} < the "
            f"tokenizer's model_max_length {tokenizer.model_max_length}; raise it or lower "
            "clip.max_length"
        )
    config.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=settings.projection_dim,
    )
    return config


def vision_config(settings) -> dict[str, Any]:
    config = {**_as_dict(settings.vision), "projection_dim": settings.projection_dim}
    frames = channel_frames(settings)
    if frames:
        if settings.grid != 1:
            raise ValueError(
                f"clip.channel_frames={frames} stacks frames on the channels; set clip.grid=1 "
                f"(not {settings.grid}), or channel_frames=0 for a storyboard"
            )
        config["num_channels"] = 3 * frames
    if config["image_size"] % settings.grid:
        raise ValueError(
            f"clip.vision.image_size={config['image_size']} is not a multiple of clip.grid="
            f"{settings.grid} (the storyboard is grid × grid equal tiles)"
        )
    return config


def channel_frames(settings) -> int:
    """`clip.channel_frames` (0: a storyboard; runs from before the key have none)."""
    return int(settings.get("channel_frames", 0))


def _as_dict(section) -> dict[str, Any]:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def caption_labeller(settings) -> Callable[[str], Hashable]:
    """caption → label: `clip.caption_label`'s function, else the normalised caption."""
    if settings.caption_label:
        module, _, name = settings.caption_label.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(
                f"clip.caption_label={settings.caption_label!r}: not an importable "
                "'module:function' (e.g. 'mv2_jax.data.shapes:parse_prompt')"
            ) from e
    ignored = frozenset(settings.ignore_words)
    return lambda caption: tuple(w for w in re.findall(r"\w+", caption.lower()) if w not in ignored)


def label_ids(captions, labeller) -> np.ndarray:
    """`[B]` int32 ids, equal iff the captions' labels are equal (a stable hash, so every
    process computes the same ids)."""
    return np.asarray(
        [zlib.crc32(repr(labeller(str(c))).encode()) & 0x7FFFFFFF for c in captions], np.int32
    )


# ---- the loss, apart from the models


def spread_frames(pixels: jax.Array, count: int) -> jax.Array:
    """`[B,F,…]` → `[B,count,…]`: `count` frames spread evenly over the clip, first and last
    included (frame 0 … F-1, indices rounded)."""
    return pixels[:, np.round(np.linspace(0, pixels.shape[1] - 1, count)).astype(int)]


def storyboard(pixels: jax.Array, grid: int, size: int) -> jax.Array:
    """`[B,F,H,W,3]` in [-1, 1] → `[B,size,size,3]`: `grid²` frames (`spread_frames`) tiled in
    reading order, resized to `size` if they are not `size / grid` already, normalised as
    CLIP's image processor does."""
    b, _, h, w, c = pixels.shape
    frames = spread_frames(pixels, grid * grid)
    tiles = frames.reshape(b, grid, grid, h, w, c).transpose(0, 1, 3, 2, 4, 5)
    board = tiles.reshape(b, grid * h, grid * w, c)
    if (grid * h, grid * w) != (size, size):
        board = jax.image.resize(board, (b, size, size, c), method="linear", antialias=True)
    return clip_normalised(board)


def stacked_frames(pixels: jax.Array, count: int, size: int) -> jax.Array:
    """`[B,F,H,W,3]` in [-1, 1] → `[B,size,size,3·count]`: `count` frames (`spread_frames`),
    each resized to `size`, normalised as `storyboard`, on the channels in time order."""
    b, _, h, w, c = pixels.shape
    frames = spread_frames(pixels, count)
    if (h, w) != (size, size):
        frames = jax.image.resize(frames, (b, count, size, size, c), "linear", antialias=True)
    frames = clip_normalised(frames)
    return frames.transpose(0, 2, 3, 1, 4).reshape(b, size, size, count * c)


def clip_normalised(pixels: jax.Array) -> jax.Array:
    """Pixels in [-1, 1] → CLIP's normalisation (its image processor's mean and std)."""
    unit = (pixels.astype(jnp.float32) + 1.0) / 2.0
    return (unit - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def contrastive_loss(
    text: jax.Array, image: jax.Array, labels: jax.Array, logit_scale: jax.Array
) -> tuple[jax.Array, dict]:
    """Symmetric multi-positive InfoNCE of embeddings `text`, `image` `[B,P]`; examples with
    equal `labels` are positives. Returns (loss, metrics)."""
    text = text.astype(jnp.float32)
    image = image.astype(jnp.float32)
    text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
    image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
    scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
    logits = scale * text @ image.T  # rows: texts, columns: images
    labels = jnp.asarray(labels)
    positive = labels[:, None] == labels[None, :]
    targets = positive / positive.sum(axis=1, keepdims=True)  # symmetric: rows = columns

    def cross_entropy(rows):
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(rows, axis=1), axis=1))

    loss = (cross_entropy(logits) + cross_entropy(logits.T)) / 2
    rows = jnp.arange(labels.shape[0])
    metrics = {
        "loss": loss,
        "acc_t2i": positive[rows, jnp.argmax(logits, axis=1)].mean(),
        "acc_i2t": positive[jnp.argmax(logits, axis=0), rows].mean(),
        "logit_scale": scale,
        "positives": positive.sum(axis=1).mean(),
    }
    return loss, metrics


# ---- the stage


def init_params(shapes: dict, seed: int, temperature: float) -> dict:
    """Fresh params drawn on the host (numpy; a jitted `module.init` of these models takes
    XLA:CPU seconds to compile): Dense and convolution kernels normal with std 1/√fan-in,
    token and position tables std 0.02, the class token std 1/√width, LayerNorm scales 1,
    biases 0, and `logit_scale` = ln(1 / `temperature`)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(shapes)
    out = {}
    for path, s in sorted(flat.items()):
        leaf = path[-1]
        if path == ("logit_scale",):
            value = np.log(1.0 / temperature)
        elif leaf == "kernel":
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])), s.shape)
        elif leaf == "embedding":
            value = rng.normal(0.0, 0.02, s.shape)
        elif leaf == "class_embedding":
            value = rng.normal(0.0, 1.0 / np.sqrt(s.shape[-1]), s.shape)
        elif leaf == "scale":
            value = np.ones(s.shape)
        elif leaf == "bias":
            value = np.zeros(s.shape)
        else:
            raise ValueError(f"init_params: no rule for param {'/'.join(path)}")
        out[path] = np.asarray(value, s.dtype)
    return traverse_util.unflatten_dict(out)


@dataclass(kw_only=True)
class ContrastiveStage(FreshModelStage):
    uses_config_data: ClassVar[bool] = True  # the captioned clips of config.data

    text: CLIPTextModelWithProjection
    vision: CLIPVisionModelWithProjection
    tokenizer: Any
    labeller: Callable[[str], Hashable]
    settings: Any  # the config's `clip` section

    @classmethod
    def from_config(cls, config, pipeline: Path | None, mesh, workdir=None) -> ContrastiveStage:
        """The stage of `config` (`pipeline` is unused: the models come from `config.clip`);
        `workdir` is where the built tokenizer is kept (`tokenizer_folder`)."""
        s = config.clip
        if config.data.precomputed_dir:
            raise ValueError(
                "stage clip reads pixels and captions: set config.data.video_dir / image_dir, "
                "not precomputed_dir"
            )
        if not s.tokenizer and workdir is None:
            raise ValueError(
                "clip.tokenizer='': the project's tokenizer is built into the run's folder; "
                "pass workdir= (train.py does) or set clip.tokenizer to a tokenizer folder"
            )
        tokenizer = load_tokenizer(tokenizer_folder(s, workdir))
        compute, params = dtype_of(config.compute_dtype), dtype_of(config.param_dtype)
        kw = dict(dtype=compute, param_dtype=params)
        return cls(
            text=CLIPTextModelWithProjection.from_config(text_config(s, tokenizer), **kw),
            vision=CLIPVisionModelWithProjection.from_config(vision_config(s), **kw),
            tokenizer=tokenizer,
            labeller=caption_labeller(s),
            param_dtype=params,
            settings=s,
            seed=config.seed,
        )

    # ---- the params that train

    def _init(self, key: jax.Array) -> dict:
        """The param tree (its shapes are what `load_params` fills, drawn on the host)."""
        size = self.vision.image_size
        k_text, k_vision = jax.random.split(key)
        text = self.text.init(k_text, jnp.zeros((1, 1), jnp.int32))["params"]
        channels = self.vision.num_channels
        vision = self.vision.init(k_vision, jnp.zeros((1, size, size, channels)))["params"]
        return {
            "text": nn.meta.unbox(text),
            "vision": nn.meta.unbox(vision),
            "logit_scale": jnp.zeros((), jnp.float32),
        }

    def load_params(self, shardings=None) -> dict:
        """Fresh params from `config.seed` (`init_params`), placed on `shardings`."""
        params = init_params(self.param_shapes(), self.seed, self.settings.init_temperature)
        if shardings is None:
            return jax.tree.map(jnp.asarray, params)
        return jax.device_put(params, shardings)

    # ---- host side

    def make_data_iterator(self, config) -> Iterator[dict]:
        """The batches of the run's `config.data`."""
        return data_iterator(config)

    def token_ids(self, captions) -> np.ndarray:
        """`[B, L]` int32 token ids, padded to the tokenizer's `model_max_length`."""
        tokens = self.tokenizer(
            [str(c) for c in captions],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="np",
        )
        return np.asarray(tokens["input_ids"], np.int32)

    def prepare(self, batch: dict) -> dict:
        """The data pipeline's batch → `pixels` `[B,F,H,W,3]`, `input_ids` `[B,L]` and the
        positives' `label` `[B]` (see the module docstring)."""
        captions = list(batch["caption"])
        return {
            "pixels": np.asarray(batch["pixels"], np.float32),
            "input_ids": self.token_ids(captions),
            "label": label_ids(captions, self.labeller),
        }

    # ---- device side (inside the jitted step)

    def embed_text(self, params, input_ids) -> jax.Array:
        return self.text.apply({"params": params["text"]}, input_ids).text_embeds

    def embed_clips(self, params, pixels) -> jax.Array:
        size, frames = self.vision.image_size, channel_frames(self.settings)
        if frames:
            image = stacked_frames(pixels, frames, size)
        else:
            image = storyboard(pixels, self.settings.grid, size)
        return self.vision.apply({"params": params["vision"]}, image).image_embeds

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        text = self.embed_text(params, batch["input_ids"])
        image = self.embed_clips(params, batch["pixels"])
        return contrastive_loss(text, image, batch["label"], params["logit_scale"])


# ---- export


def export_clip(workdir: str | Path, out: str | Path, step: int | None = None, ema: bool = True):
    """A clip run (EMA weights by default) → `out/text_encoder` (a `CLIPTextModel` folder: the
    transformer without its projection, which diffusion stages condition on),
    `out/image_encoder` (`CLIPVisionModelWithProjection`) and `out/tokenizer`; all read by
    `load_component` / `load_tokenizer` and by transformers' `from_pretrained`."""
    from mv2_jax.training.checkpoint import restore_params, run_config

    config = run_config(workdir, "clip")
    params = restore_params(workdir, step, ema)
    return write_clip_folders(out, config.clip, params, tokenizer_folder(config.clip, workdir))


def write_clip_folders(out: str | Path, settings, params: dict, tokenizer: str | Path) -> Path:
    """`out/{text_encoder,image_encoder,tokenizer}` (see `export_clip`) from the stage's
    `params`, its `clip` config section and its tokenizer folder; `out` must not exist."""
    from mv2_jax.weights.clip import text_model_folder, vision_model_folder
    from mv2_jax.weights.new_folder import new_folder

    text = text_config(settings, load_tokenizer(tokenizer))
    rows = params["text"]["text_model"]["embeddings"]["token_embedding"]["embedding"].shape[0]
    if rows != text["vocab_size"]:
        raise ValueError(
            f"the trained token table has {rows} rows but the tokenizer gives vocab_size "
            f"{text['vocab_size']}; export with the run's own tokenizer folder"
        )
    with new_folder(out) as partial:
        shutil.copytree(tokenizer, partial / "tokenizer")
        text_model_folder(partial / "text_encoder", text, params["text"])
        vision_model_folder(partial / "image_encoder", vision_config(settings), params["vision"])
    return Path(out)
