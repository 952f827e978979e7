"""Reading a shapes-world clip back from its pixels: which colour, which shape, which way it moves.
The evaluation scores generated videos with this against their prompts, so it has to cope
with what a small diffusion model makes — noise, blur, colour shifts of ~0.1, a slightly
deformed shape, a background that is not quite the world's.

Per frame (after a 1-px Gaussian blur against noise):

- background: the median colour of a thin ring along the frame's border (the object never
  covers much of it: it stays inside the frame);
- foreground: pixels whose colour distance to the background exceeds half the object's
  contrast (the 99th percentile of that distance) — the half-coverage level, where a blurred
  edge still sits — keeping the largest connected component; none when the contrast is below
  `MIN_CONTRAST` or the component is tiny;
- colour: the mean of the foreground's core (distance ≥ 3/4 of the contrast), named by
  saturation (below `WHITE_SATURATION`: white) and otherwise by the nearest palette hue;
- shape: from the row-width profile of the component in its bounding box, top to bottom
  (square: constant, circle: a half-ellipse, upright triangle: growing linearly): a triangle
  when the area is unbalanced between the box's top and bottom halves (1/4 : 3/4), else the
  nearer of the circle and square templates; its fill ratio (square 1, circle π/4, triangle
  1/2) is reported too;
- motion: a straight line fitted to the centroids over time; its travel from the first to
  the last frame names the direction, or "none" below `MIN_TRAVEL` of the frame side.

Colour and shape are voted over the frames where a foreground was found.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mv2_jax.data.shapes import COLOURS

MIN_CONTRAST = 0.2  # colour distance object ↔ background below which nothing is found
MIN_AREA = 0.004  # smallest foreground component, fraction of the frame
WHITE_SATURATION = 0.35  # (max − min) / max of the object's colour below this: white
TRIANGLE_IMBALANCE = 0.085  # |top-half share of the area − 1/2| above this: a triangle
MIN_TRAVEL = 0.05  # centroid travel (fraction of the side) below which the motion is "none"
_PROFILE_BINS = 16
_BLUR_SIGMA = 1.0  # pixels


@dataclass(frozen=True)
class Measurement:
    """What `measure` read from a clip. `centroids` `[F, 2]` are (x, y) in [0, 1] (NaN where
    no foreground was found); `travel` is (dx, dy) of the fitted line from the first frame to
    the last. colour / shape / motion are None when nothing was found in any frame."""

    found: bool
    colour: str | None
    shape: str | None
    motion: str | None
    centroids: np.ndarray
    travel: tuple[float, float]
    frames_found: int
    mean_colour: tuple[float, float, float] | None
    fill_ratio: float | None

    def agrees(self, colour: str, shape: str, motion: str) -> dict[str, bool]:
        """Which of the prompt's colour, shape and motion the clip shows."""
        return {"colour": self.colour == colour, "shape": self.shape == shape,
                "motion": self.motion == motion}  # fmt: skip


@dataclass(frozen=True)
class _Frame:
    """One frame's foreground: centroid (x, y), core colour, row-width profile, fill ratio."""

    centroid: tuple[float, float]
    colour: np.ndarray
    profile: np.ndarray
    fill_ratio: float


def measure(frames) -> Measurement:
    """Read colour, shape and motion from frames `[F, H, W, 3]` (or one image `[H, W, 3]`)
    in [0, 1]."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected [F, H, W, 3], got shape {frames.shape}")
    found = _foreground(frames)
    seen = [f for f in found if f is not None]
    side = frames.shape[1:3]
    centroids = np.array([f.centroid if f else (np.nan, np.nan) for f in found], np.float64)
    centroids /= np.array([side[1], side[0]], np.float64)
    if not seen:
        return Measurement(False, None, None, None, centroids, (0.0, 0.0), 0, None, None)
    colour = _vote(_colour_name(f.colour) for f in seen)
    shape = _vote(_shape_name(f.profile) for f in seen)
    travel = _travel(centroids)
    return Measurement(
        found=True,
        colour=colour,
        shape=shape,
        motion=_direction(travel),
        centroids=centroids,
        travel=travel,
        frames_found=len(seen),
        mean_colour=tuple(float(c) for c in np.mean([f.colour for f in seen], axis=0)),
        fill_ratio=float(np.median([f.fill_ratio for f in seen])),
    )


def _foreground(frames: np.ndarray) -> list[_Frame | None]:
    """Each frame's foreground (None where there is none), found on the blurred frames; the
    colour is read from the frames themselves."""
    smooth = ndimage.gaussian_filter(frames, (0, _BLUR_SIGMA, _BLUR_SIGMA, 0))
    distance = np.linalg.norm(smooth - _border_colours(smooth)[:, None, None], axis=-1)
    contrast = np.percentile(distance.reshape(len(frames), -1), 99, axis=1)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # components never span frames
    labels, _ = ndimage.label(distance > contrast[:, None, None] / 2, structure=in_plane)
    return [
        _component(*args) if args[3] >= MIN_CONTRAST else None
        for args in zip(frames, labels, distance, contrast)
    ]


def _component(frame, labels, distance, contrast) -> _Frame | None:
    """The largest connected component of one frame's `labels`, if it is not tiny."""
    height, width, _ = frame.shape
    ids = labels[labels > 0]
    if ids.size == 0:
        return None
    counts = np.bincount(ids)
    biggest = int(np.argmax(counts))
    if counts[biggest] < MIN_AREA * height * width:
        return None
    mask = labels == biggest
    ys, xs = np.nonzero(mask)
    core = mask & (distance >= 0.75 * contrast)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _Frame(
        centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
        colour=frame[core if core.any() else mask].mean(axis=0),
        profile=_row_profile(box),
        fill_ratio=float(box.mean()),
    )


def _border_colours(frames: np.ndarray) -> np.ndarray:
    """Per frame `[F, 3]`: the median colour of a ring 3% of the side wide along the border."""
    ring = max(1, round(0.03 * min(frames.shape[1:3])))
    count = len(frames)
    border = np.concatenate(
        [
            frames[:, :ring].reshape(count, -1, 3),
            frames[:, -ring:].reshape(count, -1, 3),
            frames[:, :, :ring].reshape(count, -1, 3),
            frames[:, :, -ring:].reshape(count, -1, 3),
        ],
        axis=1,
    )
    return np.median(border, axis=1)


def _row_profile(box: np.ndarray) -> np.ndarray:
    """Filled fraction of each row of the bounding box, resampled to `_PROFILE_BINS` rows."""
    widths = box.mean(axis=1)
    rows = (np.arange(_PROFILE_BINS) + 0.5) / _PROFILE_BINS * len(widths) - 0.5
    return np.interp(rows, np.arange(len(widths)), widths)


def _templates() -> dict[str, np.ndarray]:
    y = (np.arange(_PROFILE_BINS) + 0.5) / _PROFILE_BINS  # row centres, 0 = top
    return {"circle": np.sqrt(np.clip(1 - (2 * y - 1) ** 2, 0, 1)), "square": np.ones_like(y)}


_TEMPLATES = _templates()


def _shape_name(profile: np.ndarray) -> str:
    """A triangle puts a quarter of its area in the top half of its box (three quarters when
    upside down), circle and square a half; that survives blur, which rounds a triangle's
    corners towards a circle. Otherwise the nearer of the circle and square templates, leaving
    out the top and bottom bins: whether the first and last pixel rows reach the
    half-contrast level depends on sub-pixel position."""
    top = profile[: _PROFILE_BINS // 2].sum() / max(profile.sum(), 1e-9)
    if abs(top - 0.5) > TRIANGLE_IMBALANCE:
        return "triangle"
    inner = slice(1, -1)
    errors = {
        name: float(np.mean((profile[inner] - t[inner]) ** 2)) for name, t in _TEMPLATES.items()
    }
    return min(errors, key=errors.get)


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(float(c) for c in rgb))[0]


_HUES = {name: _hue(rgb) for name, rgb in COLOURS.items() if name != "white"}


def _colour_name(rgb: np.ndarray) -> str:
    rgb = np.clip(rgb, 0.0, 1.0)
    top = float(rgb.max())
    if top <= 0 or (top - float(rgb.min())) / top < WHITE_SATURATION:
        return "white"
    hue = _hue(rgb)
    gap = {name: min(abs(hue - h), 1 - abs(hue - h)) for name, h in _HUES.items()}
    return min(gap, key=gap.get)


def _vote(names) -> str:
    return Counter(names).most_common(1)[0][0]


def _travel(centroids: np.ndarray) -> tuple[float, float]:
    """(dx, dy) from the first to the last frame along lines fitted to the found centroids."""
    times = np.arange(len(centroids), dtype=np.float64)
    ok = ~np.isnan(centroids[:, 0])
    if ok.sum() < 2:
        return (0.0, 0.0)
    slopes = np.polyfit(times[ok], centroids[ok], 1)[0]
    return tuple(float(s * (len(centroids) - 1)) for s in slopes)


def _direction(travel: tuple[float, float]) -> str:
    dx, dy = travel
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return "none"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
