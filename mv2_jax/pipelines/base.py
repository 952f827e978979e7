"""What the text-to-image and text-to-video pipelines share: the components, prompt embeddings
with classifier-free guidance, params placed on a mesh, a cache of compiled generate functions,
compiling them ahead of a call (`precompile`), the guided denoiser, VAE encode / decode, and the
checks and placement of per-call inputs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.diffusion.guidance import classifier_free_guidance
from mv2_jax.parallel.sharding import batch_sharding, module_shardings_for, shard_params
from mv2_jax.pipelines.progress import StepProgress
from mv2_jax.pipelines.text import PromptEncoder

# Set (per thread) while `precompile` runs a call: the generate function is compiled, not run.
_COMPILE_ONLY = contextvars.ContextVar("compile_only", default=False)


def starting_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The unit Gaussian noise a sample starts from, float32 `shape`, drawn on the host by
    numpy's PCG64 from `seed`: the same numbers on every backend and jax version, and nothing
    to compile (a threefry draw of it costs XLA:CPU seconds of compile per shape)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@dataclass
class LatentDiffusionPipeline:
    """A UNet (2D or motion) + VAE + text encoders; subclasses define `__call__`."""

    unet: Any
    unet_params: Any
    vae: Any
    vae_params: Any
    text: PromptEncoder
    scheduler_config: dict
    default_guidance_scale: float = 7.5
    unet_sample_size: int = 64
    trace_count: int = 0  # how often a generate function was traced (no recompile ⇒ unchanged)
    _compiled: dict = field(default_factory=dict, repr=False)
    _placements: dict = field(default_factory=dict, repr=False)
    _progress: StepProgress = field(default_factory=StepProgress, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.unet_sample_size * self.vae_scale_factor

    def _prompt_context(
        self, prompts: Sequence[str], negatives, per_prompt: int, use_cfg: bool
    ) -> tuple[jax.Array, jax.Array | None]:
        """`(context [N,L,D], pooled [N,P] or None)`, each prompt `per_prompt` times in a row;
        with guidance the negative prompts' come first (`N = 2·B·per_prompt`), as in diffusers."""
        cond = self.text.encode(prompts)
        context, pooled = repeat_each(cond, per_prompt)
        if use_cfg:
            uncond, uncond_pooled = repeat_each(
                self.text.encode_negative(negatives, cond), per_prompt
            )
            context = jnp.concatenate([uncond, context])
            if pooled is not None:
                pooled = jnp.concatenate([uncond_pooled, pooled])
        return context, pooled

    def components(self) -> dict[str, tuple[Any, Any]]:
        """`{name: (module, params)}` of the models the generate function runs; a subclass
        with more models (a ControlNet, an appearance encoder) adds them here."""
        return {"unet": (self.unet, self.unet_params), "vae": (self.vae, self.vae_params)}

    def _placed_params(self, mesh) -> dict[str, Any]:
        """`{name: params}` of `components()`, placed on `mesh` by the logical-axis rules (once
        per mesh); without a mesh, as they are."""
        models = self.components()
        if mesh is None:
            return {name: params for name, (_, params) in models.items()}
        if mesh not in self._placements:
            self._placements[mesh] = {
                name: shard_params(params, module_shardings_for(module, mesh))
                for name, (module, params) in models.items()
            }
        return self._placements[mesh]

    def _params_on(self, mesh):
        """`(unet_params, vae_params)`, placed on `mesh` (see `_placed_params`)."""
        placed = self._placed_params(mesh)
        return placed["unet"], placed["vae"]

    def _compile_cached(self, key: tuple, generate: Callable, static_argnums=()) -> Callable:
        """`jax.jit(generate)`, kept under `key` (the static configuration) across calls."""
        if key not in self._compiled:
            self._compiled[key] = jax.jit(generate, static_argnums=static_argnums)
        return self._compiled[key]

    def precompile(self, *args, **kwargs) -> None:
        """Compile, without running, the generate function that `self(*args, **kwargs)` would
        run: the same checks and host-side preparation (the prompts are encoded), then
        `.lower(...).compile()` of the same jit object with the same arguments, so that the
        call with these settings and input shapes compiles nothing (inputs such as a key image
        or low-res frames only need their shape: zeros do). Safe to run in a thread."""
        token = _COMPILE_ONLY.set(True)
        try:
            self(*args, **kwargs)
        finally:
            _COMPILE_ONLY.reset(token)

    def _launch(self, generate, args: tuple, num_steps: int, progress: bool) -> np.ndarray | None:
        """`generate(*args)` as numpy, under a progress bar of `num_steps` steps; inside
        `precompile`, only `generate.lower(*args).compile()` (and None)."""
        if _COMPILE_ONLY.get():
            generate.lower(*args).compile()
            return None
        with self._progress.bar(num_steps, enabled=progress):
            return np.asarray(generate(*args))  # waits for the last step inside the bar

    @staticmethod
    def guided(predict: Callable, use_cfg: bool, guidance, rescale=0.0) -> Callable:
        """`model_fn(x, t)` for `denoise`: with guidance, `predict` sees `[x; x]` (unconditional
        half first) and the two halves are combined by classifier-free guidance."""

        def model_fn(x, t):
            x = jnp.concatenate([x, x]) if use_cfg else x
            out = predict(x, jnp.broadcast_to(t, (x.shape[0],)))
            if not use_cfg:
                return out
            uncond, cond = jnp.split(out, 2)
            return classifier_free_guidance(uncond, cond, guidance, rescale)

        return model_fn

    def _encode(self, vae_params, image):
        """Images `[N,H,W,3]` in [0,1] → diffusion latents (the VAE posterior mean, scaled)."""
        latents = self.vae.apply({"params": vae_params}, 2 * image - 1, method="encode").mode()
        return self.vae.to_diffusion_latents(latents)

    def _decode(self, vae_params, latents):
        """Diffusion latents `[N,h,w,C]` → images `[N,H,W,3]` in [0,1]."""
        vae = self.vae
        latents = vae.from_diffusion_latents(latents)
        images = vae.apply({"params": vae_params}, latents, method="decode")
        return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


def as_list(value, n: int) -> list[str] | None:
    """Negative prompt(s) as one per prompt (None stays None)."""
    if value is None:
        return None
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} negative prompts for {n} prompts")
    return values


def repeat_each(pair, times: int):
    """Each prompt's embeddings `times` times in a row (diffusers' num_images_per_prompt)."""
    return tuple(None if x is None else jnp.repeat(x, times, axis=0) for x in pair)


def place_batch(mesh, tree):
    """Inputs with a leading batch axis: split over the mesh's data × fsdp axes."""
    if mesh is None:
        return tree
    return jax.tree.map(
        lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim, shape=x.shape)), tree
    )


def place_replicated(mesh, tree):
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def check_size(height: int, width: int, factor: int) -> None:
    multiple = max(8, factor)
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple}; got {height}×{width}")
