"""Running a shapes-world evaluation: every (prompt, seed) through a generator — the cascade, or
T2I alone — scored as it finishes and logged at once (`ResultsLog`), finished ones skipped;
then the frame interpolator on world clips. `evaluate.py` is the command line around this.

A generator is any `make(combination, seed_index) → Sample`; `CascadeSampler` is the one of a
loaded cascade, and tests pass the world itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mv2_jax.evaluation.results import ResultsLog
from mv2_jax.evaluation.shapes import (
    Combination,
    evaluate_interpolator,
    interpolation_clips,
    score_sample,
)

# I2V conditionings an ablation turns off, and the I2V arguments that do it
ABLATIONS = {
    "appearance": {"reference_scale": None},  # reference attention (appearance encoder)
    "controlnet": {"controlnet_scale": None},
    "noise-prior": {"noise_prior": "none"},
}


@dataclass
class Sample:
    """What one prompt and seed made: the key image `[H,W,3]`, and with the cascade the I2V
    keyframes `[F,h,w,3]` and the final video `[N,H',W',3]`, all in [0, 1]."""

    key_image: np.ndarray
    keyframes: np.ndarray | None = None
    frames: np.ndarray | None = None


def ablate(settings: Mapping[str, Any], parts: Iterable[str]) -> dict:
    """The stage settings with the I2V stage's `parts` (keys of `ABLATIONS`) switched off;
    the other stages keep theirs."""
    extra = dict(settings["i2v"].extra)
    for part in parts:
        if part not in ABLATIONS:
            raise ValueError(f"ablation {part!r}: choose from {', '.join(ABLATIONS)}")
        extra.update(ABLATIONS[part])
    return {**settings, "i2v": replace(settings["i2v"], extra=extra)}


@dataclass
class CascadeSampler:
    """`make(combination, seed_index) → Sample`: the cascade (`stages="cascade"`) or its T2I
    pipeline alone (`text_to_image`, with `cascade` None), every stage's seed raised by the
    seed index."""

    settings: Mapping[str, Any]  # {"t2i" | "i2v" | "v2v": StageSettings}
    cascade: Any = None  # TextToVideoCascade
    text_to_image: Any = None  # used when there is no cascade
    negative_prompt: str | None = None
    num_frames: int | None = None
    factor: int = 3
    vfi_batch_size: int = 8
    mesh: Any = None
    guidance_batching: str = "auto"

    def __call__(self, combination: Combination, seed_index: int) -> Sample:
        settings = {s: replace(v, seed=v.seed + seed_index) for s, v in self.settings.items()}
        if self.cascade is None:
            t2i, pipe = settings["t2i"], self.text_to_image
            size = (t2i.height or pipe.default_size, t2i.width or pipe.default_size)
            image = pipe(
                combination.prompt,
                negative_prompt=self.negative_prompt,
                progress=False,
                guidance_batching=self.guidance_batching,
                **t2i.kwargs(*size, self.mesh),
            )[0]
            return Sample(np.asarray(image))
        out = self.cascade(
            combination.prompt,
            self.negative_prompt,
            **settings,
            num_frames=self.num_frames,
            factor=self.factor,
            vfi_batch_size=self.vfi_batch_size,
            mesh=self.mesh,
            progress=False,
            guidance_batching=self.guidance_batching,
        )
        return Sample(out.key_image, out.keyframes, out.frames)


def sample_key(combination: Combination, seed_index: int) -> str:
    return f"{combination.prompt} | seed {seed_index}"


def evaluate_samples(
    make: Callable[[Combination, int], Sample],
    combinations: list[Combination],
    seeds: int,
    log: ResultsLog,
    *,
    examples: int = 0,
    example_format: str = "mp4",
    fps: float = 24.0,
    progress: bool = True,
) -> list[dict]:
    """Score every (combination, seed index < `seeds`) that `log` lacks, logging each as it
    finishes; the videos (key images without a cascade) of `examples` prompts spread over the
    list (seed 0) go to `log.folder / "samples"`. Returns the records of all of them, old and
    new, in order."""
    items = [(c, k) for c in combinations for k in range(seeds)]
    keys = [sample_key(c, k) for c, k in items]
    shown = {sample_key(combinations[i], 0) for i in _spread(len(combinations), examples)}
    pending = [(item, key) for item, key in zip(items, keys) if key not in log]
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(pending),
        desc="prompts",
        unit="prompt",
        disable=not progress,
    )
    with bar:
        for (combination, seed_index), key in pending:
            start = time.perf_counter()
            made = make(combination, seed_index)
            record = {
                "kind": "sample",
                "key": key,
                "prompt": combination.prompt,
                "asked": {
                    "colour": combination.colour,
                    "shape": combination.shape,
                    "motion": combination.motion,
                },
                "heldout": combination.heldout,
                "seed_index": seed_index,
                **score_sample(combination, made.key_image, made.keyframes, made.frames),
                "seconds": round(time.perf_counter() - start, 3),
            }
            if key in shown:
                record["file"] = _write_example(
                    made, log.folder / "samples", key, example_format, fps
                )
            log.add(record)
            bar.set_postfix_str(_running_accuracy(log.records("sample", keys)), refresh=False)
            bar.update(1)
    return log.records("sample", keys)


def _spread(count: int, chosen: int) -> list[int]:
    """`chosen` indices spread evenly over `range(count)`, first and last included."""
    chosen = min(chosen, count)
    if chosen <= 0:
        return []
    return sorted({round(i) for i in np.linspace(0, count - 1, chosen)})


def _write_example(made: Sample, folder: Path, key: str, suffix: str, fps: float) -> str:
    from PIL import Image

    from mv2_jax.media import to_uint8, write_video

    name = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")
    if made.frames is None:
        path = folder / f"{name}.png"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(made.key_image, "key image")).save(path)
    else:
        path = write_video(made.frames, folder / f"{name}.{suffix}", fps=fps)
    return str(path.relative_to(folder.parent))


def _running_accuracy(records: list[dict]) -> str:
    """ "colour 92% shape 81% motion 88%" over the records so far (those measured; the key
    image's for `--stages t2i`)."""
    parts = []
    video = any("colour" in r for r in records)
    for key in ("colour", "shape", "motion") if video else ("key_colour", "key_shape"):
        values = [r[key] for r in records if key in r]
        if values:
            parts.append(f"{key} {np.mean(values):.0%}")
    return " ".join(parts)


def evaluate_vfi(
    interpolate: Callable[[np.ndarray], np.ndarray],
    log: ResultsLog,
    *,
    clips: int,
    sizes: Mapping | Callable[[], Mapping],
    seed: int = 0,
) -> list[dict]:
    """Frame-interpolation PSNR on `clips` world clips (alternately training and held-out
    pairs) whose records `log` lacks, all in one `interpolate` call; `sizes` is
    `{"num_frames", "size": (h, w), "factor"}`, or a function returning it (called only when
    a clip is missing). Returns every clip's record."""
    keys = [f"vfi clip {i}" for i in range(clips)]
    if any(key not in log for key in keys):
        sizes = sizes() if callable(sizes) else sizes
        world = interpolation_clips(clips, sizes["num_frames"], seed)
        pending = [(key, clip) for key, clip in zip(keys, world) if key not in log]
        scores = evaluate_interpolator(
            interpolate,
            [clip for _, clip in pending],
            tuple(sizes["size"]),
            sizes["num_frames"],
            sizes["factor"],
        )
        for (key, _), score in zip(pending, scores):
            log.add({"kind": "vfi", "key": key, **score})
    return log.records("vfi", keys)
