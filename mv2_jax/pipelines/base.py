"""The one template every diffusion pipeline (T2I, T2V, I2V, V2V) follows:

    request (frozen: every per-call setting)            `SamplingRequest` and subclasses
      → prepare (host: sizes checked, text encoded,      `prepare`, extended by `condition`
                 noise drawn, conditioning fitted)
      → program (one jit per `Program`, params and       `program`, `_generate`
                 traced scalars as arguments)
      → decode (VAE, chunked, tiled if asked) → [0, 1]   `decode_latents`

T2I is the single-frame case: its latents have no frame axis, everything else is shared. A
subclass adds its request fields, a host-side `condition` hook and the traced hooks
(`conditions`, `predict_noise`, `apply_unet`). Whether a call runs the negative branch is
decided once, in `prepare` (`guidance_embedded`: a guidance-distilled UNet takes its guidance
as `timestep_cond` instead), and so is how its two halves run (`guidance_batching.py`: one
batch, or one after the other where memory is short); every UNet call goes through
`apply_unet`. Nothing of a call is stored on the object: the compiled programs, placed params
and progress bars are caches keyed by what they depend on, behind a lock, so one pipeline
serves several threads at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.diffusion.guidance import guidance_scale_embedding
from mv2_jax.diffusion.sampler import denoise, sampler_key, steps_bucket
from mv2_jax.diffusion.schedulers import make_scheduler
from mv2_jax.parallel.sharding import batch_sharding, module_shardings_for, shard_params
from mv2_jax.pipelines import guidance_batching
from mv2_jax.pipelines.defaults import DEFAULT_GUIDANCE_SCALE, check_size, check_steps_left
from mv2_jax.pipelines.lora import LoraMixin, LoraState
from mv2_jax.pipelines.program_store import ProgramStore, default_program_store
from mv2_jax.pipelines.progress import StepProgress
from mv2_jax.pipelines.request import Prepared, Program, SamplingRequest
from mv2_jax.pipelines.text import PromptEncoder


def starting_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The unit Gaussian noise a sample starts from, float32 `shape`, drawn on the host by
    numpy's PCG64 from `seed`: the same numbers on every backend and jax version, and nothing
    to compile (a threefry draw of it costs XLA:CPU seconds of compile per shape)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


class ProgramCache:
    """What a pipeline keeps between calls, each keyed by what it depends on: the jitted
    program of each `Program`, the params placed on each mesh, the open progress bars."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.programs: dict[tuple[Program, bool], Callable] = {}
        self.placements: dict[Any, dict] = {}
        self.progress = StepProgress()
        # what an "auto" guidance-batching Program resolved to, per mesh
        self.resolved: dict[tuple[Program, Any], Program] = {}


@dataclass
class LatentDiffusionPipeline(LoraMixin):
    """A UNet (2D or motion) + VAE + text encoders, run by the template above. A subclass
    defines `request(...)` (its call signature, returning its request dataclass); calling the
    pipeline runs that request. LoRA adapters: `load_lora_weights` and the rest of
    `pipelines/lora.py`."""

    unet: Any
    unet_params: Any
    vae: Any
    vae_params: Any
    text: PromptEncoder
    scheduler_config: dict
    default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    unet_sample_size: int = 64
    trace_count: int = 0  # how often a program was traced (no recompile ⇒ unchanged)
    # Exported programs read back instead of traced (None: the command line's, if it set one).
    program_store: ProgramStore | None = None
    _cache: ProgramCache = field(
        default_factory=ProgramCache, init=False, repr=False, compare=False
    )
    _lora: LoraState = field(default_factory=LoraState, init=False, repr=False, compare=False)
    # Whether this pipeline, as its diffusers counterpart, gives a guidance-distilled UNet
    # (config `time_cond_proj_dim`, LCM) its guidance scale as `timestep_cond` and drops the
    # negative branch; a subclass says so (see `guidance_embedded`).
    embeds_guidance: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        """`pipe(...)` is `pipe.run(pipe.request(...))`, with `request`'s signature and doc."""
        super().__init_subclass__(**kwargs)
        if "request" in cls.__dict__:

            @functools.wraps(cls.request)
            def __call__(self, *args, **kwargs):
                return self.run(self.request(*args, **kwargs))

            cls.__call__ = __call__

    def request(self, *args, **kwargs) -> SamplingRequest:
        raise NotImplementedError("a pipeline class defines request(...)")

    @classmethod
    def from_pretrained(
        cls,
        path,
        *,
        dtype=None,
        param_dtype=None,
        variant: str | None = None,
        shared_components: dict | None = None,
        **components,
    ):
        """This pipeline from a local diffusers-format folder: see
        `mv2_jax.pipelines.loading.from_pretrained` (hub ids are not accepted: nothing here
        downloads)."""
        from mv2_jax.pipelines.loading import from_pretrained

        return from_pretrained(
            cls,
            path,
            dtype=dtype,
            param_dtype=param_dtype,
            variant=variant,
            shared_components=shared_components,
            **components,
        )

    # ------------------------------------------------------------------ sizes

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.unet_sample_size * self.vae_scale_factor

    @property
    def guidance_embedded(self) -> bool:
        """True when every UNet call gets `timestep_cond = guidance_scale_embedding(guidance − 1)`
        and no call runs classifier-free guidance (one UNet call per step, whatever the scale):
        the pipeline class `embeds_guidance` and the UNet has `time_cond_proj_dim`. diffusers'
        SD / SDXL / LCM pipelines do this (`do_classifier_free_guidance = guidance_scale > 1
        and time_cond_proj_dim is None`); its AnimateDiff pipelines never build `timestep_cond`
        and guide as usual, and ours built on them (T2V, I2V, V2V) do the same."""
        return self.embeds_guidance and self.unet.time_cond_proj_dim is not None

    @property
    def latent_channels(self) -> int:
        """The channels of the latents the sampler works on (what the UNet predicts)."""
        return self.unet.out_channels

    # ------------------------------------------------------------------ running

    def run(self, request: SamplingRequest) -> np.ndarray:
        """`request`'s images `[B,H,W,3]` or videos `[B,F,H,W,3]`, float32 in [0, 1]."""
        prepared = self.prepare(request)
        generate, args = self._program_and_args(prepared, request.mesh)
        total = request.num_inference_steps
        with self._cache.progress.bar(total, request.progress) as call, _on_mesh(request.mesh):
            scalars = dict(args[2], call=_replicated(request.mesh, call))
            return np.asarray(generate(args[0], args[1], scalars))

    def precompile(self, *args, **kwargs) -> None:
        """Compile, without running, the program that `self(*args, **kwargs)` would run (the
        same checks and host-side preparation), so that such a call compiles nothing. Inputs
        such as a key image or low-res frames only need their shape: zeros do. Thread-safe."""
        request = self.request(*args, **kwargs)
        generate, arrays = self._program_and_args(self.prepare(request), request.mesh)
        _compiled(generate, request.mesh, *arrays)

    def unet_calls(self, *args, **kwargs) -> int:
        """The UNet evaluations that `self(*args, **kwargs)` would make (steps run after
        `strength`, twice each under classifier-free guidance; `Prepared.unet_calls`), from the
        host-side preparation alone: nothing is compiled or run."""
        return self.prepare(self.request(*args, **kwargs)).unet_calls

    def program(self, program: Program, args: tuple | None = None) -> Callable:
        """The jitted `generate(params, inputs, scalars)` of `program`, made once. Given the
        call's `args` and a program store (`program_store`), it is the stored export of the
        program when there is one (no tracing), and exported there when there is not; programs
        with a progress bar are always traced (host callbacks cannot be exported)."""
        key = (program, args is None)  # on a mesh (no args) never a single-device export
        with self._cache.lock:  # made already (traced or read back): a store changes nothing
            if key in self._cache.programs:
                return self._cache.programs[key]
        store = self.program_store or default_program_store()
        stored = store is not None and args is not None and not program.progress
        trace = functools.partial(self._generate, program)
        if stored:
            models = tuple((name, repr(module)) for name, (module, _) in self.components().items())
            generate = store.jitted(type(self).__name__, (models, repr(program)), trace, args)
        else:
            generate = jax.jit(trace)
        with self._cache.lock:  # a thread that made it at the same time: keep the first
            return self._cache.programs.setdefault(key, generate)

    def _program_and_args(self, prepared: Prepared, mesh) -> tuple[Callable, tuple]:
        params = self.placed_params(mesh)
        inputs = place_batch(mesh, prepared.inputs)
        scalars = _replicated(mesh, prepared.scalars)
        # On one device, a stored program may stand in for tracing (the call id included).
        args = None if mesh is not None else (params, inputs, dict(scalars, call=np.int32(0)))
        program = self._resolved(prepared.program, mesh, args, (params, inputs, scalars))
        return self.program(program, args), (params, inputs, scalars)

    def _resolved(self, program: Program, mesh, args, arrays: tuple) -> Program:
        """`program` with guidance batching "auto" made "batched" or "sequential", once per
        program and mesh (`guidance_batching.choose`: the batched program's compiled memory
        figures against the device's memory; that compile is the one a batched call runs)."""
        if program.guidance_batching != "auto":
            return program
        key = (program, mesh)
        if key not in self._cache.resolved:  # threads deciding at once decide alike
            batched = dataclasses.replace(program, guidance_batching="batched")
            devices = jax.devices()[:1] if mesh is None else list(mesh.devices.flat)
            mode = guidance_batching.choose(
                lambda: _compiled(self.program(batched, args), mesh, *arrays),
                devices,
                type(self).__name__,
            )
            self._cache.resolved[key] = dataclasses.replace(program, guidance_batching=mode)
        return self._cache.resolved[key]

    def components(self) -> dict[str, tuple[Any, Any]]:
        """`{name: (module, params)}` of the models the program runs; a subclass with more
        models (a ControlNet, an appearance encoder) adds them here."""
        return {"unet": (self.unet, self.unet_params), "vae": (self.vae, self.vae_params)}

    def lora_components(self) -> dict[str, tuple[Any, Any]]:
        """`{LoRA component: (module, params)}`: the UNet and the text encoder(s), under the
        names LoRA files use."""
        names = ("text_encoder", "text_encoder_2")
        texts = {name: (e.module, e.params) for name, e in zip(names, self.text.encoders)}
        return {"unet": (self.unet, self.unet_params), **texts}

    def _set_component_params(self, name: str, params: Any) -> None:
        if name == "unet":
            self.unet_params = params
        else:  # a new encoder: a cascade's stages may share the old one
            encoders = list(self.text.encoders)
            index = ("text_encoder", "text_encoder_2").index(name)
            encoders[index] = dataclasses.replace(encoders[index], params=params)
            self.text = dataclasses.replace(self.text, encoders=tuple(encoders))
        with self._cache.lock:  # params placed on a mesh are placed again from the new ones
            self._cache.placements.clear()

    def placed_params(self, mesh) -> dict[str, Any]:
        """`{name: params}` of `components()`, placed on `mesh` by the logical-axis rules (once
        per mesh); without a mesh, as they are."""
        models = self.components()
        if mesh is None:
            return {name: params for name, (_, params) in models.items()}
        with self._cache.lock:
            if mesh not in self._cache.placements:
                self._cache.placements[mesh] = {
                    name: shard_params(params, module_shardings_for(module, mesh))
                    for name, (module, params) in models.items()
                }
            return self._cache.placements[mesh]

    # ------------------------------------------------------------------ host side

    def prepare(self, request: SamplingRequest) -> Prepared:
        """Host-side preparation of `request`: the prompts encoded (the unconditional half
        first under guidance, as diffusers), sizes checked, scheduler tables, starting noise;
        then the subclass's `condition`. The one place the negative branch is decided."""
        guidance = request.guidance_scale
        guidance = self.default_guidance_scale if guidance is None else guidance
        use_cfg = guidance > 1.0 and not self.guidance_embedded
        context, pooled = self._prompt_context(request, use_cfg)
        batch = context.shape[0] // (2 if use_cfg else 1)
        height, width = self.output_size(request)
        check_size(height, width, self.vae_scale_factor)
        sched = make_scheduler(self.scheduler_config, request.scheduler)
        factor = self.vae_scale_factor
        frames = self.frame_count(request)
        latent_size = (height // factor, width // factor, self.latent_channels)
        shape = (batch, *latent_size) if frames is None else (batch, frames, *latent_size)
        latents = request.latents
        if latents is not None and tuple(latents.shape) != shape:
            layout = "[B, h, w, C]" if frames is None else "[B, F, h, w, C]"
            raise ValueError(
                f"latents must have shape {shape} ({layout}, channels-last), "
                f"got {tuple(latents.shape)}"
            )
        noise = starting_noise(request.seed, shape) if latents is None else latents
        steps = request.num_inference_steps
        prepared = Prepared(
            Program(
                scheduler=sched,
                use_cfg=use_cfg,
                # without guidance there are no halves: every setting is the same program
                guidance_batching=request.guidance_batching if use_cfg else "batched",
                shape=shape,
                decode_chunk_size=request.decode_chunk_size,
                vae_tile_size=request.vae_tile_size,
                progress=request.progress,
            ),
            inputs={"context": context, "noise": np.asarray(noise, np.float32)},
            scalars={
                "guidance": np.float32(guidance),
                "rescale": np.float32(request.guidance_rescale),
                "tables": sched.tables(steps, steps_bucket(steps)),
                "seed": np.int32(request.seed),
                "start": np.int32(0),
            },
        )
        return self.condition(request, prepared, pooled)

    def condition(self, request, prepared: Prepared, pooled) -> Prepared:
        """Hook: add the request's conditioning inputs and static switches (`pooled`: SDXL's
        pooled text embeddings, None otherwise)."""
        del request, pooled
        return prepared

    def output_size(self, request: SamplingRequest) -> tuple[int, int]:
        """`(height, width)` of the output: the request's, else the pipeline's default."""
        return request.height or self.default_size, request.width or self.default_size

    def frame_count(self, request: SamplingRequest) -> int | None:
        """Hook: the frames of a video pipeline's output; None for an image pipeline."""
        del request
        return None

    def starting_step(self, prepared: Prepared, strength: float, steps: int) -> Prepared:
        """img2img / SDEdit: start at `(1 − strength)·steps` from encoded pixels; an error when
        that leaves no step to run."""
        start = prepared.program.scheduler.start_index(steps, strength)
        check_steps_left(start, int(prepared.scalars["tables"]["num_steps"]), strength, steps)
        return prepared.adding({"init_latents": True}, scalars={"start": np.int32(start)})

    def _prompt_context(self, request: SamplingRequest, use_cfg: bool):
        """`(context [N,L,D], pooled [N,P] or None)`, each prompt `per_prompt` times in a row;
        with guidance the negative prompts' come first (`N = 2·B·per_prompt`), as in diffusers."""
        cond = self.text.encode(request.prompts)
        context, pooled = repeat_each(cond, request.per_prompt)
        if use_cfg:
            negatives = self.text.encode_negative(request.negative_prompt, cond)
            uncond, uncond_pooled = repeat_each(negatives, request.per_prompt)
            context = jnp.concatenate([uncond, context])
            if pooled is not None:
                pooled = jnp.concatenate([uncond_pooled, pooled])
        return context, pooled

    # ------------------------------------------------------------------ traced

    def _generate(self, program: Program, params: dict, inputs: dict, scalars: dict):
        """Noise (or noised pixels) → denoised latents → decoded frames; traced once per
        `program`."""
        with self._cache.lock:
            self.trace_count += 1
        inputs = {**inputs, **self.conditions(program, params, inputs, scalars)}
        if self.guidance_embedded:  # traced: a new scale reuses the program
            w = jnp.full((program.shape[0],), scalars["guidance"] - 1.0, jnp.float32)
            inputs["timestep_cond"] = guidance_scale_embedding(w, self.unet.time_cond_proj_dim)
        scheduler, tables = program.scheduler, scalars["tables"]
        key_steps = sampler_key(scalars["seed"])  # stochastic samplers
        if program.init_latents:
            latents = scheduler.add_noise(
                tables, inputs["init_latents"], inputs["noise"], scalars["start"]
            )
        else:
            latents = inputs["noise"] * tables["init_noise_sigma"]
        model_fn = guidance_batching.guided_model(
            functools.partial(self.predict_noise, program, params),
            inputs,
            program.shape[0],
            program.use_cfg,
            program.guidance_batching == "sequential",
            scalars["guidance"],
            scalars["rescale"],
        )
        latents = denoise(
            scheduler,
            tables,
            model_fn,
            latents,
            key_steps,
            scalars["start"],
            self._cache.progress.update if program.progress else None,
            (scalars["call"],),
        )
        return self.decode_latents(
            params["vae"], latents, program.decode_chunk_size, program.vae_tile_size
        )

    def conditions(self, program: Program, params, inputs: dict, scalars: dict) -> dict:
        """Hook: traced inputs computed once per call (encoded images, reference features);
        `init_latents` when the program starts from pixels."""
        del program, params, inputs, scalars
        return {}

    def predict_noise(self, program: Program, params, inputs: dict, x, t) -> jax.Array:
        """Hook: the UNet's output for `x [N,(F,)h,w,C]` at timesteps `t [N]`. With guidance
        batched, `N = 2B` and every entry of `inputs` with a leading axis of 2B is ordered
        `[unconditional; conditional]` to match (entries of B rows, e.g. the noise, are per
        video); run sequentially, `N = B` and those entries hold one half
        (`guidance_batching.split_halves`)."""
        return self.apply_unet(program, {"params": params["unet"]}, inputs, x, t)

    def apply_unet(self, program: Program, variables: dict, inputs: dict, x, t, **kwargs):
        """The one UNet call: `x [N,(F,)h,w,C]` at `t [N]` with the call's text context, SDXL's
        `added_cond_kwargs` and LCM's `timestep_cond` (when `guidance_embedded`); `kwargs` add
        ControlNet residuals or class labels (the video-to-video pipeline adds its low-res
        latents here)."""
        del program
        return self.unet.apply(
            variables,
            x,
            t,
            inputs["context"],
            added_cond_kwargs=inputs.get("added_cond_kwargs"),
            timestep_cond=inputs.get("timestep_cond"),
            **kwargs,
        )

    def encode_images(self, vae_params, images, chunk: int = 16, tile: int | None = None):
        """Images `[N,H,W,3]` or videos `[N,F,H,W,3]` in [0,1] → diffusion latents (posterior
        means, scaled), `chunk` frames (× N) per VAE call, in tiles of `tile` pixels if set."""
        video = images if images.ndim == 5 else images[:, None]
        posterior = self.vae.apply(
            {"params": vae_params},
            2 * video - 1,
            chunk,
            tile is not None,
            tile,
            method="encode_video",
        )
        latents = self.vae.to_diffusion_latents(posterior.mode())
        return latents if images.ndim == 5 else latents[:, 0]

    def decode_latents(self, vae_params, latents, chunk: int = 16, tile: int | None = None):
        """Diffusion latents `[N,h,w,C]` or `[N,F,h,w,C]` → frames in [0,1] of the same layout,
        `chunk` frames (× N) per VAE call (a `lax.map`, as diffusers' `decode_chunk_size`), in
        tiles of `tile` pixels if set; the VAE treats frames independently."""
        video = latents if latents.ndim == 5 else latents[:, None]
        images = self.vae.apply(
            {"params": vae_params},
            self.vae.from_diffusion_latents(video),
            chunk,
            tile is not None,
            tile,
            method="decode_video",
        )
        images = jnp.clip(images / 2 + 0.5, 0.0, 1.0)
        return images if latents.ndim == 5 else images[:, 0]


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


def _replicated(mesh, tree):
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _compiled(generate: Callable, mesh, params, inputs, scalars):
    """`generate` lowered and compiled for these arguments (a placeholder call id), not run."""
    with _on_mesh(mesh):
        call = _replicated(mesh, np.int32(0))
        return generate.lower(params, inputs, dict(scalars, call=call)).compile()


def _on_mesh(mesh):
    """Under a mesh, the motion UNet keeps frames split over its `frames` axis."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def prompt_count(prompt: str | Sequence[str]) -> int:
    return 1 if isinstance(prompt, str) else len(prompt)
