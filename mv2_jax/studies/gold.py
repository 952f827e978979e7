"""Attention checks ("gold" pairs) mixed into a study: the same video on both sides (an attentive
rater votes Same), or a video against a degraded copy of itself — its frames shuffled (motion
broken) or heavily blurred (frames ruined) — where the original is the better one."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mv2_jax.media import read_video, to_uint8, write_video

KINDS = ("same", "shuffled", "blurred")
# The criteria each check has a right answer for (None: all). Shuffled frames break the
# motion, not the frames; a blur ruins the frames, not the motion; neither reliably changes
# the shapes' structure — on the other criteria "same" is as right as the original.
CHECKED = {"same": None, "shuffled": {"overall", "consistency"}, "blurred": {"overall", "visual"}}


@dataclass(frozen=True)
class GoldCheck:
    """Video `a` against `b`; `expected` is the right vote relative to (a, b)."""

    prompt: str
    seed: int
    arm: str
    a: Path
    b: Path
    b_arm: str
    expected: str  # "a" | "same"
    kind: str


def gold_count(rate: float, pairs: int) -> int:
    """How many checks a study of `pairs` real pairs gets at `rate` (at least one if rate > 0)."""
    if not 0 <= rate < 1:
        raise ValueError(f"--gold is a rate in [0, 1), got {rate}")
    return 0 if rate == 0 else max(1, round(rate * pairs))


def shuffle_frames(frames: np.ndarray, rng: random.Random) -> np.ndarray:
    """The frames in a random order that moves most of them (a derangement-like shuffle)."""
    order = list(range(len(frames)))
    if len(order) < 2:
        raise ValueError("a one-frame video cannot be shuffled; use more frames or --gold 0")
    while sum(i == j for i, j in enumerate(order)) > len(order) // 4:
        rng.shuffle(order)
    return frames[order]


def blur_frames(frames: np.ndarray) -> np.ndarray:
    """A Gaussian blur of radius 1/25 of the larger side: shapes and edges are gone."""
    radius = max(frames.shape[1:3]) / 25
    blurred = [Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius)) for f in frames]
    return np.stack([np.asarray(b) for b in blurred])


def make_gold_checks(
    videos: list[tuple[str, int, str, Path]], count: int, media_dir: Path, seed: int = 0
) -> list[GoldCheck]:
    """`count` checks from `videos` [(prompt, seed, arm, path)], kinds in turn; degraded
    copies are written to `media_dir` (mp4, at the source's frame rate)."""
    rng = random.Random(seed)
    chosen = rng.sample(videos, k=min(count, len(videos)))
    chosen += rng.choices(videos, k=count - len(chosen))
    checks = []
    for index, (prompt, item_seed, arm, path) in enumerate(chosen):
        kind = KINDS[index % len(KINDS)]
        if kind == "same":
            checks.append(GoldCheck(prompt, item_seed, arm, path, path, arm, "same", kind))
            continue
        frames, fps = read_video(path)
        pixels = to_uint8(frames)
        if kind == "shuffled" and len(pixels) < 2:
            kind = "blurred"
        degraded = shuffle_frames(pixels, rng) if kind == "shuffled" else blur_frames(pixels)
        media_dir.mkdir(parents=True, exist_ok=True)
        out = media_dir / f"gold{index:04d}-{kind}.mp4"
        write_video(degraded, out, fps=fps or 8.0)
        checks.append(GoldCheck(prompt, item_seed, arm, path, out, f"{arm}~degraded", "a", kind))
    return checks
