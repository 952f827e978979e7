"""Scoring generated videos in the shapes world (`mv2_jax.data.shapes`) from their pixels alone:
the prompts an evaluation asks for, what each sample is scored on, and the summary split into
held-out and training combinations (issue 7).

Prompts are the canonical captions of (colour, shape, motion) combinations, "a red circle
moving right": 7 × 3 × 4 = 84, of which the 12 with a `HELDOUT` (colour, shape) pair were never
seen in training, so they measure composition. `select_prompts(n)` takes a fixed subset that
always holds held-out ones and spreads colours, shapes and motions evenly.

A sample — the T2I key image, the I2V keyframes and the final video — is read back with
`shapes_measure.measure` and scored on (`score_sample`):

- colour / shape of the key image, colour / shape / motion direction of the final video,
  each right or wrong against the prompt; whether the video keeps the key image's colour and
  shape (consistency);
- first-frame fidelity: PSNR of the I2V output's frame 0 against the key image (at the
  keyframes' size, as I2V saw it);
- temporal smoothness: the RMS distance of the measured centroid track from its best
  constant-velocity line (the world's objects move at constant speed), in pixels and as a
  fraction of the side, and the fraction of frames where the object is found.

Frame interpolation is scored separately against the world's true in-between frames: world
clips rendered at integer frame times go through the interpolator, and each new frame is
compared with `render` at its fractional time (`score_interpolation`), next to a linear blend
of the two neighbours as the baseline.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mv2_jax.data.shapes import (
    COLOURS,
    DIRECTIONS,
    HELDOUT,
    MOTIONS,
    SHAPES,
    ShapeClip,
    render,
    sample_clip,
)
from mv2_jax.data.shapes_measure import measure

PROMPT_SETS = ("heldout", "train", "all")
GROUPS = ("heldout", "train", "all")
PSNR_CAP = 100.0  # dB: identical images (an MSE floor of 1e-10 keeps JSON free of infinities)


@dataclass(frozen=True)
class Combination:
    """One (colour, shape, motion) the evaluation asks for."""

    colour: str
    shape: str
    motion: str

    @property
    def prompt(self) -> str:
        """The canonical caption, "a red circle moving right"."""
        return f"a {self.colour} {self.shape} moving {self.motion}"

    @property
    def heldout(self) -> bool:
        """Whether training never showed this (colour, shape) pair."""
        return (self.colour, self.shape) in HELDOUT


def all_combinations() -> list[Combination]:
    """Every (colour, shape, motion), in the world's order (colours, then shapes, motions)."""
    return [Combination(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]


def select_prompts(which: str | int) -> list[Combination]:
    """The combinations of `which`: "heldout", "train", "all", or a count N ≤ 84 — a fixed,
    balanced subset: ⌈N/4⌉ held-out combinations (at least one, at most all 12), the rest
    training ones, each part in an order that spreads colours, shapes, motions and pairs as
    evenly as a prefix can. Held-out ones come first."""
    combinations = all_combinations()
    heldout = _balanced_order([c for c in combinations if c.heldout])
    train = [c for c in combinations if not c.heldout]
    if isinstance(which, str):
        if which not in PROMPT_SETS:
            raise ValueError(f"prompts {which!r}: choose {', '.join(PROMPT_SETS)} or a count")
        parts = {"heldout": (heldout, []), "train": ([], train), "all": (heldout, train)}
        chosen, rest = parts[which]
        return chosen + _balanced_order(rest, after=chosen)
    total = len(combinations)
    if isinstance(which, bool) or not 1 <= which <= total:
        raise ValueError(f"prompts {which!r}: a count from 1 to {total}")
    count = max(min(len(heldout), math.ceil(which / 4)), which - len(train))
    chosen = heldout[:count]
    return chosen + _balanced_order(train, after=chosen)[: which - count]


def _balanced_order(
    combinations: list[Combination], after: list[Combination] = ()
) -> list[Combination]:
    """Greedy: next is the combination whose colour, shape, motion and (colour, shape) pair
    have been used least so far, counting those `after` follows (ties: the world's order)."""
    used = Counter(key for c in after for key in _keys(c))
    left, order = list(combinations), []
    while left:
        best = min(left, key=lambda c: sum(used[key] for key in _keys(c)))
        left.remove(best)
        order.append(best)
        used.update(_keys(best))
    return order


def _keys(c: Combination) -> tuple:
    return (
        ("colour", c.colour),
        ("shape", c.shape),
        ("motion", c.motion),
        ("pair", c.colour, c.shape),
    )


# --------------------------------------------------------------------------------- metrics


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio (dB) of two same-shaped arrays in [0, 1], at most
    `PSNR_CAP`."""
    image, reference = np.asarray(image, np.float64), np.asarray(reference, np.float64)
    if image.shape != reference.shape:
        raise ValueError(f"psnr: shapes differ, {image.shape} vs {reference.shape}")
    mse = float(np.mean((image - reference) ** 2))
    return float(min(PSNR_CAP, -10 * math.log10(max(mse, 1e-10))))


def first_frame_psnr(keyframes, key_image) -> float:
    """PSNR of keyframe 0 `[H,W,3]` (of `[F,H,W,3]`) against the key image, brought to the
    keyframes' size the way I2V brings it (scaled to cover, centre-cropped) when it differs."""
    frame = np.asarray(keyframes, np.float32)[0]
    key = np.asarray(key_image, np.float32)
    if key.shape != frame.shape:
        from mv2_jax.pipelines.i2v import fit_images

        key = fit_images(key, 1, frame.shape[0], frame.shape[1])[0]
    return psnr(frame, key)


def track_smoothness(centroids, height: int, width: int) -> dict:
    """How far a centroid track `[F, 2]` ((x, y) in [0, 1], NaN where not found) strays from
    its least-squares constant-velocity line: RMS distance in pixels and as a fraction of the
    side (None with fewer than 3 found frames), and the fraction of frames found."""
    centroids = np.asarray(centroids, np.float64)
    found = ~np.isnan(centroids[:, 0])
    result = {
        "track_rms_px": None,
        "track_rms_fraction": None,
        "found_fraction": float(found.mean()) if len(found) else 0.0,
    }
    if found.sum() < 3:
        return result
    times = np.arange(len(centroids), dtype=np.float64)[found]
    points = centroids[found]
    slope, offset = np.polyfit(times, points, 1)
    residual = points - (times[:, None] * slope + offset)
    result["track_rms_fraction"] = float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))
    pixels = residual * np.array([width, height], np.float64)
    result["track_rms_px"] = float(np.sqrt(np.mean(np.sum(pixels**2, axis=1))))
    return result


def score_key_image(image, combination: Combination) -> dict:
    """The key image's colour and shape, read and checked against the prompt."""
    seen = measure(image)
    return {
        "key_read": {"colour": seen.colour, "shape": seen.shape, "found": seen.found},
        "key_colour": seen.colour == combination.colour,
        "key_shape": seen.shape == combination.shape,
    }


def score_video(frames, combination: Combination) -> dict:
    """The video's colour, shape and motion, read and checked, and its track's smoothness."""
    frames = np.asarray(frames, np.float32)
    seen = measure(frames)
    agrees = seen.agrees(combination.colour, combination.shape, combination.motion)
    along = DIRECTIONS[combination.motion]  # unit vector of the prompted motion
    return {
        "video_read": {
            "colour": seen.colour,
            "shape": seen.shape,
            "motion": seen.motion,
            "travel": list(seen.travel),
            "frames": len(frames),
        },
        **agrees,
        "travel_fraction": seen.travel[0] * along[0] + seen.travel[1] * along[1],
        **track_smoothness(seen.centroids, frames.shape[1], frames.shape[2]),
    }


def score_sample(combination: Combination, key_image, keyframes=None, frames=None) -> dict:
    """Every score of one sample; without keyframes / frames (key images only) just the key
    image's."""
    scores = score_key_image(key_image, combination)
    if keyframes is not None:
        scores["first_frame_psnr"] = first_frame_psnr(keyframes, key_image)
    if frames is not None:
        scores.update(score_video(frames, combination))
        key, video = scores["key_read"], scores["video_read"]
        scores["consistent"] = bool(
            key["found"] and (key["colour"], key["shape"]) == (video["colour"], video["shape"])
        )
    return scores


# ------------------------------------------------------------------------- interpolation


def interpolation_clips(count: int, num_frames: int, seed: int = 0) -> list[ShapeClip]:
    """`count` world clips of `num_frames` keyframes, alternately training and held-out
    pairs; a pure function of the arguments."""
    rng = np.random.default_rng([seed, 7])
    return [sample_clip(rng, heldout=i % 2 == 1, num_frames=num_frames) for i in range(count)]


def render_clip(clip: ShapeClip, size: tuple[int, int], times) -> np.ndarray:
    """`render` at `(height, width)`: square renders are the world's; others are rendered at
    the larger side and centre-cropped."""
    height, width = size
    frames = render(clip, max(height, width), times)
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return frames[:, top : top + height, left : left + width]


def score_interpolation(clip: ShapeClip, frames, factor: int) -> dict:
    """Mean PSNR of the new frames of an interpolated video `[(F−1)·factor+1, H, W, 3]` of
    `clip`'s keyframes against `render` at their fractional times, and the same for a linear
    blend of the two neighbouring keyframes."""
    frames = np.asarray(frames, np.float32)
    size = frames.shape[1:3]
    times = np.arange(len(frames)) / factor
    truth = render_clip(clip, size, times)
    keyframes = truth[::factor]
    made, blend = [], []
    for i in range(len(frames)):
        if i % factor == 0:
            continue
        t = (i % factor) / factor
        mix = (1 - t) * keyframes[i // factor] + t * keyframes[i // factor + 1]
        made.append(psnr(frames[i], truth[i]))
        blend.append(psnr(mix, truth[i]))
    return {
        "heldout": (clip.colour, clip.shape) in HELDOUT,
        "colour": clip.colour,
        "shape": clip.shape,
        "motion": clip.motion,
        "vfi_psnr": float(np.mean(made)),
        "blend_psnr": float(np.mean(blend)),
    }


def evaluate_interpolator(
    interpolate: Callable[[np.ndarray], np.ndarray],
    clips: Iterable[ShapeClip],
    size: tuple[int, int],
    num_frames: int,
    factor: int,
) -> list[dict]:
    """`score_interpolation` of every clip; `interpolate(videos [B,F,H,W,3]) → [B,(F−1)·factor
    +1,H,W,3]` gets all clips' `num_frames` keyframes (rendered at integer times at `size`) in
    one call."""
    clips = list(clips)
    if not clips:
        return []
    keyframes = np.stack([render_clip(c, size, np.arange(num_frames)) for c in clips])
    made = np.asarray(interpolate(keyframes))
    expected = (len(clips), (num_frames - 1) * factor + 1, *size, 3)
    if made.shape != expected:
        raise ValueError(f"the interpolator made {made.shape}; expected {expected}")
    return [score_interpolation(clip, video, factor) for clip, video in zip(clips, made)]


# --------------------------------------------------------------------------------- summary

# (record key, what it is, how it reads) for the summary and the markdown table
METRICS = (
    ("key_colour", "key image (T2I): colour accuracy", "percent"),
    ("key_shape", "key image (T2I): shape accuracy", "percent"),
    ("colour", "video: colour accuracy", "percent"),
    ("shape", "video: shape accuracy", "percent"),
    ("motion", "video: motion-direction accuracy", "percent"),
    ("consistent", "video keeps the key image's colour and shape", "percent"),
    ("first_frame_psnr", "I2V frame 0 vs key image: PSNR (dB)", "db"),
    ("travel_fraction", "travel along the prompted motion, first → last frame (% of side)", "fine"),
    ("track_rms_px", "centroid track off a constant-velocity line: RMS (px)", "px"),
    ("track_rms_fraction", "centroid track off a constant-velocity line: RMS (% of side)", "fine"),
    ("found_fraction", "frames where the object is found", "percent"),
)
VFI_METRICS = (
    ("vfi_psnr", "VFI: new frames vs the world's true in-between frames, PSNR (dB)", "db"),
    ("blend_psnr", "linear blend of the two neighbours (baseline), PSNR (dB)", "db"),
)
TARGETS = {"colour": 0.95, "motion": 0.90, "shape": 0.80}  # issue 7's targets for the video


def summarise(records: Iterable[Mapping], metrics=METRICS) -> dict:
    """`{group: {"count": n, metric: mean}}` for held-out, training and all records (each
    with a boolean "heldout"); a metric's mean leaves out records without it (None when none
    has it)."""
    records = list(records)
    members = {
        "heldout": [r for r in records if r["heldout"]],
        "train": [r for r in records if not r["heldout"]],
        "all": records,
    }
    summary = {}
    for group, chosen in members.items():
        row = {"count": len(chosen)}
        for key, _, _ in metrics:
            values = [float(r[key]) for r in chosen if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        summary[group] = row
    return summary
