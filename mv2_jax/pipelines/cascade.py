"""MagicVideo-V2's text-to-video cascade (arXiv:2401.04468, Fig. 2), one stage per line:

    prompt ─T2I─▶ key image ─I2V─▶ keyframes ─V2V─▶ high-res keyframes ─VFI ×k─▶ frames

Every stage is an ordinary pipeline of this package run with its own `StageSettings` (steps,
guidance, seed, size); T2I is skipped by giving a key image, V2V and VFI by leaving them out.
`plan` checks the sizes of the whole cascade before any stage runs; from those sizes the first
call compiles every stage ahead, several at a time in threads (`compile_ahead`). The pipelines
keep their compiled functions, so the next prompt with the same settings compiles nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mv2_jax.pipelines.defaults import STAGE_DEFAULTS, size_problems

STAGES = ("t2i", "i2v", "v2v", "vfi")
TITLES = {
    "t2i": "text → key image",
    "i2v": "key image → keyframes",
    "v2v": "keyframes → high-res keyframes",
    "vfi": "frame interpolation",
}


@dataclass(frozen=True)
class StageSettings:
    """How one diffusion stage samples; `extra` holds the stage's own keyword arguments (the
    I2V conditioning scales, V2V's `noise_level` / `strength`). Sizes None: the model's."""

    steps: int = STAGE_DEFAULTS["i2v"].steps
    guidance_scale: float | None = None
    seed: int = 0
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def kwargs(self, height: int, width: int, mesh) -> dict:
        return dict(
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            scheduler=self.scheduler,
            height=height,
            width=width,
            mesh=mesh,
            **self.extra,
        )


@dataclass(frozen=True)
class CascadePlan:
    """The sizes every stage works at, `(height, width)`; None where a stage is skipped."""

    key_size: tuple[int, int] | None
    keyframe_size: tuple[int, int]
    num_frames: int
    upscaled_size: tuple[int, int] | None
    factor: int

    @property
    def output_frames(self) -> int:
        return (self.num_frames - 1) * self.factor + 1

    def describe(self, stage: str) -> str:
        h, w = self.keyframe_size
        if stage == "t2i":
            return f"{self.key_size[0]}×{self.key_size[1]}"
        if stage == "i2v":
            return f"{h}×{w} × {self.num_frames} frames"
        if stage == "v2v":
            return f"{h}×{w} → {self.upscaled_size[0]}×{self.upscaled_size[1]}"
        return f"×{self.factor}: {self.num_frames} → {self.output_frames} frames"


@dataclass
class CascadeOutput:
    """The final `frames [N,H,W,3]` in [0,1] and every intermediate (None: stage skipped)."""

    key_image: np.ndarray  # [H,W,3]
    keyframes: np.ndarray  # [F,h,w,3]
    upscaled: np.ndarray | None  # [F,H',W',3]
    frames: np.ndarray  # [(F−1)·k+1, H',W',3]


@dataclass(frozen=True)
class RunSettings:
    """What decides the programs a call of the cascade compiles: everything but the prompt."""

    plan: CascadePlan
    t2i: StageSettings
    i2v: StageSettings
    v2v: StageSettings
    negative_prompt: str | None
    vfi_batch_size: int
    mesh: Any
    progress: bool
    guidance_batching: str = "auto"

    def programs(self) -> RunSettings:
        """These settings but the seeds (traced: a new seed runs the same programs)."""
        unseeded = {stage: replace(getattr(self, stage), seed=0) for stage in ("t2i", "i2v", "v2v")}
        return replace(self, **unseeded)


@dataclass
class TextToVideoCascade:
    """`cascade(prompt, ...) → CascadeOutput` from up to four pipelines; `image_to_video` is
    required, the others optional (`text_to_image` only when no key image is given)."""

    image_to_video: Any  # ImageToVideoPipeline
    text_to_image: Any = None  # TextToImagePipeline
    video_to_video: Any = None  # VideoToVideoPipeline (trained V2V UNet, or SDEdit mode)
    interpolator: Any = None  # FrameInterpolationPipeline
    report: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    _compiled: list = field(default_factory=list, repr=False)  # RunSettings.programs() compiled
    _counts: list = field(default_factory=list, repr=False)  # (programs(), UNet calls) seen

    def plan(
        self,
        *,
        key_image: np.ndarray | None = None,
        t2i: StageSettings = StageSettings(),
        i2v: StageSettings = StageSettings(),
        v2v: StageSettings = StageSettings(),
        num_frames: int | None = None,
        factor: int = 3,
    ) -> CascadePlan:
        """The sizes of every stage, checked together before anything runs; a ValueError lists
        every problem at once."""
        problems = []
        key_size = None
        if key_image is None:
            if self.text_to_image is None:
                problems.append("no key image and no text-to-image model: give one of them")
            else:
                key_size = _size(self.text_to_image, t2i, "t2i", problems)
        i2v_pipe = self.image_to_video
        keyframe_size = _size(i2v_pipe, i2v, "i2v", problems)
        max_frames = i2v_pipe.unet.motion_max_seq_length
        if num_frames is None:
            num_frames = min(STAGE_DEFAULTS["i2v"].num_frames, max_frames)
        if num_frames < 1 or (max_frames and num_frames > max_frames):
            problems.append(
                f"i2v: {num_frames} frames; the motion modules take 1 to {max_frames} "
                "(motion_max_seq_length)"
            )
        upscaled_size = None
        if self.video_to_video is not None:
            upscaled_size = _size(self.video_to_video, v2v, "v2v", problems)
            if upscaled_size[0] < keyframe_size[0] or upscaled_size[1] < keyframe_size[1]:
                problems.append(
                    f"v2v: target {upscaled_size[0]}×{upscaled_size[1]} is smaller than the "
                    f"keyframes' {keyframe_size[0]}×{keyframe_size[1]}; raise the V2V size or "
                    "lower the I2V size"
                )
        if self.interpolator is None:
            factor = 1
        elif factor < 1:
            problems.append(f"vfi: factor {factor}; need an integer ≥ 1 (1 = no new frames)")
        elif factor > 1 and num_frames < 2:
            problems.append("vfi: interpolation needs at least 2 keyframes")
        if problems:
            raise ValueError("the cascade cannot run:\n  " + "\n  ".join(problems))
        return CascadePlan(key_size, keyframe_size, num_frames, upscaled_size, factor)

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        *,
        key_image: np.ndarray | None = None,
        t2i: StageSettings = StageSettings(),
        i2v: StageSettings = StageSettings(),
        v2v: StageSettings = StageSettings(),
        num_frames: int | None = None,
        factor: int = 3,
        vfi_batch_size: int = 8,
        mesh=None,
        progress: bool = False,
        compile_workers: int = 2,
        guidance_batching: str = "auto",
    ) -> CascadeOutput:
        """Run the cascade for one prompt (see the module docstring). The first call with these
        settings (any prompt or seeds) compiles every stage before the first runs,
        `compile_workers` stages at a time in threads (`compile_ahead`); 0 compiles each stage
        as it starts. `guidance_batching` ("auto", "batched", "sequential"): how every guided
        stage runs its two halves (`SamplingRequest`); "auto" decides per stage."""
        plan = self.plan(
            key_image=key_image, t2i=t2i, i2v=i2v, v2v=v2v, num_frames=num_frames, factor=factor
        )
        run = RunSettings(
            plan, t2i, i2v, v2v, negative_prompt, vfi_batch_size, mesh, progress, guidance_batching
        )
        if compile_workers and run.programs() not in self._compiled:
            self.compile_ahead(run, prompt, key_image, compile_workers)
        calls = self._counted(run, prompt, key_image)
        step = _announcer(self.report, self._stages_run(key_image), plan, calls)

        def stage(name: str, *inputs):
            step(name)
            pipe, args, kwargs = self._stage_call(name, run, prompt, inputs)
            return pipe(*args, **kwargs)

        if key_image is None:
            key_image = stage("t2i")[0]
        keyframes = stage("i2v", key_image)[0]
        upscaled = None
        if self.video_to_video is not None:
            upscaled = stage("v2v", keyframes, key_image)[0]
        frames = keyframes if upscaled is None else upscaled
        if plan.factor > 1:
            frames = stage("vfi", frames)
        return CascadeOutput(np.asarray(key_image), keyframes, upscaled, frames)

    def unet_calls(
        self,
        prompt: str = "",
        negative_prompt: str | None = None,
        *,
        key_image: np.ndarray | None = None,
        t2i: StageSettings = StageSettings(),
        i2v: StageSettings = StageSettings(),
        v2v: StageSettings = StageSettings(),
        num_frames: int | None = None,
        factor: int = 3,
    ) -> dict[str, int]:
        """`{stage: UNet evaluations}` of the diffusion stages that a call with these settings
        runs (steps after `strength`, twice each under classifier-free guidance), from the
        host-side preparation alone: nothing compiles or runs. VFI is no UNet (one interpolator
        pass per new frame) and is not counted."""
        plan = self.plan(
            key_image=key_image, t2i=t2i, i2v=i2v, v2v=v2v, num_frames=num_frames, factor=factor
        )
        run = RunSettings(plan, t2i, i2v, v2v, negative_prompt, 1, None, False)
        return self._unet_calls(run, prompt, key_image)

    def compile_ahead(
        self, run: RunSettings, prompt: str = "", key_image=None, workers: int = 2
    ) -> None:
        """Compile, without running, every stage a call with `run`'s settings runs, `workers`
        stages at a time in threads (XLA compiles without holding the GIL), the longest first:
        each pipeline's `precompile` at the plan's sizes, given zeros for what the stage before
        makes (and `key_image` where the call has one). Those calls then compile nothing. The
        first error is raised as its thread raised it, once the compiles under way have ended."""
        inputs = _placeholders(run.plan, key_image)
        stages = [s for s in ("i2v", "v2v", "t2i", "vfi") if s in inputs]
        calls = [self._stage_call(stage, run, prompt, inputs[stage]) for stage in stages]
        with ThreadPoolExecutor(workers, thread_name_prefix="compile") as pool:
            futures = [pool.submit(pipe.precompile, *args, **kw) for pipe, args, kw in calls]
            try:
                for future in as_completed(futures):
                    future.result()  # re-raises a worker's exception as it was
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        self._compiled.append(run.programs())

    # ------------------------------------------------------------------ helpers

    def _stage_call(self, stage: str, run: RunSettings, prompt: str, inputs: tuple):
        """`(pipeline, args, kwargs)` that run `stage` on its `inputs`: none for T2I, the key
        image for I2V, the keyframes and the key image for V2V, the frames for VFI."""
        plan, mesh = run.plan, run.mesh
        common = dict(
            negative_prompt=run.negative_prompt,
            progress=run.progress,
            guidance_batching=run.guidance_batching,
        )
        if stage == "t2i":
            return self.text_to_image, (prompt,), {**common, **run.t2i.kwargs(*plan.key_size, mesh)}
        if stage == "i2v":
            kwargs = dict(num_frames=plan.num_frames, **run.i2v.kwargs(*plan.keyframe_size, mesh))
            return self.image_to_video, (*inputs, prompt), {**common, **kwargs}
        if stage == "v2v":
            keyframes, key_image = inputs
            kwargs = dict(image=key_image, **run.v2v.kwargs(*plan.upscaled_size, mesh))
            return self.video_to_video, (keyframes, prompt), {**common, **kwargs}
        kwargs = dict(factor=plan.factor, batch_size=run.vfi_batch_size, progress=run.progress)
        return self.interpolator, inputs, kwargs

    def _counted(self, run: RunSettings, prompt: str, key_image) -> dict[str, int]:
        """`_unet_calls` once per set of settings (the count does not depend on the prompt or
        the seeds), so that a call does not prepare every stage twice."""
        programs = run.programs()
        for settings, calls in self._counts:
            if settings == programs:
                return calls
        calls = self._unet_calls(run, prompt, key_image)
        self._counts.append((programs, calls))
        return calls

    def _unet_calls(self, run: RunSettings, prompt: str, key_image) -> dict[str, int]:
        inputs = _placeholders(run.plan, key_image)
        calls = {}
        for stage in ("t2i", "i2v", "v2v"):
            if stage in inputs:
                pipe, args, kwargs = self._stage_call(stage, run, prompt, inputs[stage])
                calls[stage] = pipe.unet_calls(*args, **kwargs)
        return calls

    def _stages_run(self, key_image) -> list[str]:
        run = {
            "t2i": key_image is None,
            "i2v": True,
            "v2v": self.video_to_video is not None,
            "vfi": self.interpolator is not None,
        }
        return [stage for stage in STAGES if run[stage]]


def _size(pipe, settings: StageSettings, stage: str, problems: list[str]) -> tuple[int, int]:
    """`(height, width)` of a diffusion stage: the settings', else the model's default; sizes the
    VAE cannot take are added to `problems`."""
    default = pipe.default_size
    height, width = settings.height or default, settings.width or default
    problems += size_problems(height, width, pipe.vae_scale_factor, where=f"{stage}: ")
    return height, width


def _placeholders(plan: CascadePlan, key_image) -> dict[str, tuple]:
    """`{stage: inputs}` of every stage the plan runs, zeros of the planned shapes (the key
    image itself where one is given) standing in for what the stage before makes."""

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    if key_image is None:
        key_image = zeros(*plan.key_size, 3)
    keyframes = zeros(plan.num_frames, *plan.keyframe_size, 3)
    inputs = {"i2v": (key_image,)}
    if plan.key_size is not None:
        inputs["t2i"] = ()
    if plan.upscaled_size is not None:
        inputs["v2v"] = (keyframes, key_image)
    if plan.factor > 1:
        inputs["vfi"] = (zeros(plan.num_frames, *(plan.upscaled_size or plan.keyframe_size), 3),)
    return inputs


def _announcer(
    report: Callable[[str], None], stages: list[str], plan: CascadePlan, calls: dict[str, int]
):
    """`step(stage)` reports "[i/n] stage: what it makes[, N UNet calls]" as each stage
    starts."""

    def step(stage: str) -> None:
        index = stages.index(stage) + 1
        cost = f", {calls[stage]} UNet calls" if stage in calls else ""
        report(f"[{index}/{len(stages)}] {stage}: {TITLES[stage]}, {plan.describe(stage)}{cost}")

    return step
