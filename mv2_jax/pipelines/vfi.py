"""Frame interpolation ×k: k − 1 new frames between every pair of neighbours, each made in one
pass of a `FrameInterpolator` at t = j/k (no recursion), all (pair, t) jobs batched through one
compiled function (`precompile` compiles it ahead of a call). `load_vfi_pipeline` reads a model
folder, by default the shipped weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mv2_jax.pipelines.shipped import SHIPPED

SHIPPED_WEIGHTS = SHIPPED["vfi"]
COMPONENT = "interpolator"  # the model's subfolder in a FrameInterpolationPipeline folder


@dataclass
class FrameInterpolationPipeline:
    """`pipe(video, factor=3, batch_size=8)`: video `[F,H,W,3]` or `[B,F,H,W,3]`, uint8 or float
    in [0, 1] → float32 `[(F−1)·factor+1, H, W, 3]` (or with B first) in [0, 1]; the input
    frames sit unchanged at every `factor`-th position."""

    module: Any  # FrameInterpolator
    params: Any
    trace_count: int = 0  # how often the interpolation step was traced (same shapes ⇒ once)
    _step: Any = field(default=None, repr=False)

    @classmethod
    def from_pretrained(cls, path=None, *, dtype=None, param_dtype=None, **components):
        """A frame interpolator from a FrameInterpolator or FrameInterpolationPipeline folder
        (None: the shipped weights); `interpolator=(module, params)` replaces the model."""
        from mv2_jax.pipelines.loading import from_pretrained

        return from_pretrained(cls, path, dtype=dtype, param_dtype=param_dtype, **components)

    def _interpolate(self):
        """`step(params, frame0, frame1, t)` → frames at t; one jit, t traced."""
        if self._step is None:

            def step(params, frame0, frame1, t):
                self.trace_count += 1
                return self.module.apply({"params": params}, frame0, frame1, t)

            self._step = jax.jit(step)
        return self._step

    def __call__(
        self, video, factor: int = 3, batch_size: int = 8, progress: bool = False
    ) -> np.ndarray:
        frames, batched = _checked(video, factor, batch_size)
        b, f, h, w, _ = frames.shape
        out = np.empty((b, (f - 1) * factor + 1, h, w, 3), np.float32)
        out[:, ::factor] = frames
        if factor > 1:
            for (video_index, position), frame in self._new_frames(
                frames, factor, batch_size, progress
            ):
                out[video_index, position] = frame
        return out if batched else out[0]

    def precompile(
        self, video, factor: int = 3, batch_size: int = 8, progress: bool = False
    ) -> None:
        """Compile, without running, the step that `self(video, factor, batch_size)` would
        run, from its first batch; only the video's shape counts (zeros do). Safe to run in a
        thread."""
        del progress  # the bar is drawn on the host, outside the compiled step
        frames, _ = _checked(video, factor, batch_size)
        if factor > 1:
            _, *inputs = next(_batches(frames, factor, batch_size, self.module.size_multiple))
            self._interpolate().lower(self.params, *inputs).compile()

    def _new_frames(self, frames: np.ndarray, factor: int, batch_size: int, progress: bool):
        """Yields `((video, output position), frame [H,W,3])` for every new frame."""
        b, f, h, w, _ = frames.shape
        step = self._interpolate()
        bar = tqdm(
            total=b * (f - 1) * (factor - 1),
            desc="interpolating",
            unit="frame",
            disable=not progress or jax.process_index() != 0,
        )
        with bar:
            for chunk, *inputs in _batches(frames, factor, batch_size, self.module.size_multiple):
                made = np.asarray(step(self.params, *inputs))[:, :h, :w]
                for (v, pair, j), frame in zip(chunk, made):
                    yield (v, pair * factor + j), frame
                bar.update(len(chunk))


def _batches(frames: np.ndarray, factor: int, batch_size: int, multiple: int):
    """Yields `(jobs, frame0s, frame1s, t)` for every batch of (video, pair, j) jobs: the pairs'
    frames `[N,H',W',3]` edge-padded to multiples of `multiple`, and t = j / factor `[N]`."""
    b, f = frames.shape[:2]
    padded = _pad_to_multiple(frames, multiple)
    jobs = [(v, pair, j) for v in range(b) for pair in range(f - 1) for j in range(1, factor)]
    size = min(batch_size, len(jobs))
    for start in range(0, len(jobs), size):
        chunk = jobs[start : start + size]
        # The last batch repeats its last job so every call has the same shapes.
        full = chunk + [chunk[-1]] * (size - len(chunk))
        frame0 = padded[[v for v, pair, _ in full], [pair for _, pair, _ in full]]
        frame1 = padded[[v for v, pair, _ in full], [pair + 1 for _, pair, _ in full]]
        t = np.array([j / factor for _, _, j in full], np.float32)
        yield chunk, frame0, frame1, t


def _as_unit_float(video) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] → float32 [0, 1], with the shape checked."""
    video = np.asarray(video)
    if video.ndim not in (4, 5) or video.shape[-1] != 3:
        raise ValueError(
            f"video must be [F,H,W,3] or [B,F,H,W,3] (channels-last RGB); got shape {video.shape}"
        )
    if video.dtype == np.uint8:
        return video.astype(np.float32) / 255.0
    if not jnp.issubdtype(video.dtype, jnp.floating):  # bfloat16 too (a bf16 cascade)
        raise ValueError(f"video must be uint8 or float in [0, 1]; got dtype {video.dtype}")
    low, high = float(video.min()), float(video.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"a float video must lie in [0, 1]; got values in [{low:.3g}, {high:.3g}] "
            "(pass uint8 frames, or scale them to [0, 1])"
        )
    return video.astype(np.float32)


def _checked(video, factor: int, batch_size: int) -> tuple[np.ndarray, bool]:
    """`(frames [B,F,H,W,3] float32 in [0, 1], whether the video had a batch axis)`, the
    video, factor and batch size checked."""
    frames = _as_unit_float(video)
    batched = frames.ndim == 5
    frames = frames if batched else frames[None]
    _check(frames, factor, batch_size)
    return frames, batched


def _check(frames: np.ndarray, factor: int, batch_size: int) -> None:
    if frames.shape[1] < 2:
        raise ValueError(
            f"frame interpolation needs at least 2 frames; got {frames.shape[1]} "
            f"(video shape {frames.shape})"
        )
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be an integer ≥ 1 (1 adds no frames); got {factor!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be an integer ≥ 1; got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1; got {batch_size!r}")


def _pad_to_multiple(frames: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate `[B,F,H,W,3]` on the bottom / right up to multiples of `multiple`."""
    h, w = frames.shape[2:4]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def vfi_model_folder(path: str | os.PathLike | None = None) -> Path:
    """The `FrameInterpolator` component folder named by `path`: the folder itself, the
    `interpolator/` of a FrameInterpolationPipeline folder, or (None) the shipped weights."""
    if path is None:
        if not (SHIPPED_WEIGHTS / "config.json").exists():
            raise FileNotFoundError(
                f"no interpolator weights are shipped at {SHIPPED_WEIGHTS}; pass a "
                "FrameInterpolator folder (config.json + safetensors), e.g. one exported by "
                "train.py --config configs/vfi.py"
            )
        return SHIPPED_WEIGHTS
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a FrameInterpolator folder)")
    index = folder / "model_index.json"
    if index.exists():
        name = json.loads(index.read_text()).get("_class_name")
        if name != "FrameInterpolationPipeline":
            raise ValueError(f"{folder}: a {name} pipeline folder, not a frame interpolator")
        folder = folder / COMPONENT
    config = folder / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{folder}: no config.json; expected a FrameInterpolator folder")
    name = json.loads(config.read_text()).get("_class_name")
    if name != "FrameInterpolator":
        raise ValueError(f"{folder}: a {name} component, not a FrameInterpolator")
    return folder


def load_vfi_pipeline(
    path: str | os.PathLike | None = None, dtype=jnp.float32
) -> FrameInterpolationPipeline:
    """A `FrameInterpolationPipeline` from a FrameInterpolator component folder or a
    FrameInterpolationPipeline folder; `path=None` loads the weights shipped in the package."""
    from mv2_jax.weights.load import load_component

    module, params = load_component(vfi_model_folder(path), dtype)
    return FrameInterpolationPipeline(module, params)


def is_vfi_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a FrameInterpolator component folder (what `load_pipeline` also takes)."""
    config = Path(path) / "config.json"
    if (Path(path) / "model_index.json").exists() or not config.exists():
        return False
    return json.loads(config.read_text()).get("_class_name") == "FrameInterpolator"
