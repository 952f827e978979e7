"""Prompt → text embeddings for SD1.x/2.x (one CLIP encoder, last hidden state) and SDXL (two
encoders, penultimate hidden states concatenated, pooled `text_embeds` of the second)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def load_tokenizer(folder: str | os.PathLike):
    """The CLIP tokenizer of a pipeline's `tokenizer*/` folder (no download), through the
    `tokenizers` library alone (`clip_tokenizer.ClipTokenizer`: the ids of transformers'
    `CLIPTokenizer`, held equal by tests), so sampling never imports transformers."""
    from mv2_jax.pipelines.clip_tokenizer import ClipTokenizer

    folder = Path(folder)
    if not any((folder / f).exists() for f in ("tokenizer.json", "vocab.json")):
        raise FileNotFoundError(
            f"{folder}: no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt)"
        )
    return ClipTokenizer.from_folder(folder)


def prompt_embeddings(outputs: Sequence[Any]) -> tuple[jax.Array, jax.Array | None]:
    """`(embeds [B,L,D], pooled [B,P] or None)` from the text encoders' outputs (called with
    `output_hidden_states=True`): one encoder (SD1.x/2.x) gives its last hidden state; two
    (SDXL) give their penultimate hidden states side by side and the second's `text_embeds`."""
    if len(outputs) == 1:
        return outputs[0].last_hidden_state, None
    embeds = jnp.concatenate([o.hidden_states[-2] for o in outputs], axis=-1)
    return embeds, outputs[-1].text_embeds


@dataclass
class TextEncoder:
    """One tokenizer + one Flax CLIP text encoder; `jit` is compiled once per sequence shape."""

    tokenizer: Any
    module: Any
    params: Any

    def __post_init__(self):
        self._encode = jax.jit(partial(self.module.apply, output_hidden_states=True))
        # A Rust-backed tokenizer sets its padding and truncation on each call, which two
        # threads at once must not do ("Already borrowed"); pipelines serve several threads.
        self._tokenizing = threading.Lock()

    def token_ids(self, prompts: Sequence[str], length: int | None = None) -> np.ndarray:
        length = length or self.tokenizer.model_max_length
        with self._tokenizing:
            tokens = self.tokenizer(
                list(prompts),
                padding="max_length",
                max_length=length,
                truncation=True,
                return_tensors="np",
            )
        return np.asarray(tokens["input_ids"], np.int32)

    def __call__(self, prompts: Sequence[str]):
        return self._encode({"params": self.params}, self.token_ids(prompts))


@dataclass
class PromptEncoder:
    """The text side of a SD (`len(encoders) == 1`) or SDXL (`== 2`) pipeline."""

    encoders: tuple[TextEncoder, ...]
    force_zeros_for_empty_prompt: bool = False  # SDXL: no negative prompt → zero embeddings

    @property
    def sdxl(self) -> bool:
        return len(self.encoders) == 2

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array | None]:
        """`(embeds [B,L,D], pooled [B,P] or None)` as diffusers' `encode_prompt` computes them."""
        return prompt_embeddings([encoder(prompts) for encoder in self.encoders])

    def encode_negative(
        self, negative: Sequence[str] | None, cond: tuple[jax.Array, jax.Array | None]
    ) -> tuple[jax.Array, jax.Array | None]:
        """Unconditional embeddings matching `cond = encode(prompts)`: of the `negative` prompts,
        of "" — or zeros for SDXL pipelines configured `force_zeros_for_empty_prompt`."""
        embeds, pooled = cond
        if negative is None and self.sdxl and self.force_zeros_for_empty_prompt:
            return jnp.zeros_like(embeds), jnp.zeros_like(pooled)
        return self.encode(list(negative) if negative is not None else [""] * embeds.shape[0])
