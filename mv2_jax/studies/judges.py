"""Automated raters: a judge looks at the two videos of a side-by-side pair and votes "left",
"same" or "right" on each study criterion, as a person on the rating page does
(`mv2_jax.studies.auto_rate` sends its votes through the same API).

The `shapes` judge reads shapes-world clips (`mv2_jax.data.shapes`) from their pixels alone,
building on `shapes_measure.measure` (per-frame colour and shape reads, the clip's centroids and
motion) and the evaluation's `track_smoothness`, and scores each video in [0, 1] per criterion:

- visual: the share of frames whose colour reads as the prompt's (¼), whose shape does (¼),
  and edge sharpness (½): min(1, 1.5 px / edge spread). The spread is the object outline's
  width Σ 4n(1−n) / Σ|∇n| (`_edge_spread`): under 1 px for the world's anti-aliased edges,
  up to 1.6 px once H.264's half-resolution chroma has smeared a saturated one (so ≤ 1.5 px
  counts as sharp), ≈ 1.4σ px after a Gaussian blur of σ px.
- consistency: ½ appearance — the mean of colour and shape constancy (share of all frames
  that read as the clip's majority colour / shape), size constancy (1 − the coefficient of
  variation of the object's area) and steadiness against flicker (the mean frame-to-frame
  change of the object's colour plus the background's away from the object, through
  `_tolerance` at 0.04) — and ½ motion: evenness (the RMS distance of the centroid track from
  its constant-velocity line, as a fraction of the side, through `_tolerance` at 0.02: the
  world's objects move at constant speed) and validity (1 when the measured direction is the
  prompt's), the paper's "temporal consistency, motion range and validity".
- structure: per frame, how much the object is one clean world shape: the best intersection
  over union of its mask with a circle, square or triangle template of the same area and
  centroid, times the share of the frame's foreground in that one object (fragments and extra
  blobs cost); 0 where no object is found; averaged over the frames.
- overall: the mean of the three — the paper's one vote that weighs the three aspects.

A prompt element the caption does not name ("a green triangle": no motion) is not scored; the
other terms of its half take its weight.

A criterion's vote is "same" unless the two scores differ by more than its `MARGINS` entry.
The margins were set between two measured spreads (128² × 22 frames, the cascade's output,
through H.264 and back; tests/studies/test_judges.py checks both sides): clean renders of one
prompt with different sizes, positions and backgrounds differ by at most 0.017 overall, 0.043
visual, 0.005 consistency, 0.013 structure (at 64² × 8: 0.015, 0, 0.029, 0.030); a heavy blur
(σ = 3 px) costs ≥ 0.10 overall and ≥ 0.28 visual, shuffled frames ≥ 0.075 overall and ≥ 0.23
consistency, σ = 1 against σ = 3 ≥ 0.22 visual. A shuffle leaves every frame as it was, so
visual and structure rightly say "same"; a blur leaves circles' and squares' structure
intact. Everything is deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from mv2_jax.data.shapes import (
    COLOURS,
    MOTIONS,
    SHAPES,
    Background,
    ShapeClip,
    parse_prompt,
    render,
)
from mv2_jax.data.shapes_measure import MIN_AREA, MIN_CONTRAST, measure
from mv2_jax.evaluation.shapes import track_smoothness

CRITERIA = ("overall", "visual", "consistency", "structure")
VOTES = ("left", "same", "right")
# Score differences at or below these are "same" (calibration: module docstring, tests).
MARGINS = {"visual": 0.06, "consistency": 0.04, "structure": 0.04, "overall": 0.03}
SHARP_EDGE_PX = 1.5  # edge spreads up to this count as sharp: H.264's 4:2:0 chroma alone
# spreads a clean saturated edge to ≈1.6 px (a 1-px Gaussian blur: ≈1.4 px, 3 px: ≈4 px)
FLICKER_SCALE = 0.04  # frame-to-frame change (colour units, 0–1) at which steadiness is 1/2
TRACK_SCALE = 0.02  # track RMS (fraction of the side) at which evenness is 1/2
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # share of the size² box
_APPEARANCE = ("colour_constancy", "shape_constancy", "size_constancy", "steadiness")
_MASK_BLUR = 1.0  # pixels, against noise, as measure's foreground
_EDGE_LOW = 0.15  # the edge is measured over its 15–85 % rise
_EDGE_REACH = 0.05  # the outline's band reaches this fraction of the side each way (≥ 3 px)


@dataclass(frozen=True)
class VideoScores:
    """One video's score per criterion (in [0, 1], higher is better) and the measures behind
    them (`details`: named numbers, for logs and the preference data)."""

    visual: float
    consistency: float
    structure: float
    overall: float
    details: dict[str, float] = field(default_factory=dict)

    def criterion(self, name: str) -> float:
        """The score of criterion `name` (one of `CRITERIA`)."""
        if name not in CRITERIA:
            raise ValueError(f"unknown criterion {name!r}; criteria: {', '.join(CRITERIA)}")
        return float(getattr(self, name))

    def as_dict(self) -> dict:
        return {**{c: self.criterion(c) for c in CRITERIA}, "details": dict(self.details)}


@dataclass(frozen=True)
class Judgement:
    """A pair's votes per criterion, with both videos' scores and the margins used."""

    votes: dict[str, str]
    left: VideoScores
    right: VideoScores
    margins: dict[str, float]

    def as_dict(self) -> dict:
        return {
            "votes": dict(self.votes),
            "left": self.left.as_dict(),
            "right": self.right.as_dict(),
            "margins": dict(self.margins),
        }


@dataclass(frozen=True)
class _Object:
    """One frame's object: area (fraction of the frame), edge spread (px), template fit."""

    area: float
    edge_spread: float
    template_iou: float
    share: float  # of the frame's foreground pixels, in the largest component
    mask: np.ndarray


class ShapesJudge:
    """The shapes world's judge (module docstring); `margins` may be overridden per criterion."""

    name = "shapes"

    def __init__(self, margins: dict[str, float] | None = None):
        unknown = sorted(set(margins or {}) - set(CRITERIA))
        if unknown:
            raise ValueError(f"margins for unknown criteria {unknown}; criteria: {CRITERIA}")
        self.margins = {**MARGINS, **(margins or {})}

    def judge(self, left, right, prompt: str, criteria=CRITERIA) -> Judgement:
        """Votes on `criteria` for videos `left` and `right` (`[F, H, W, 3]`, uint8 or float in
        [0, 1]) of `prompt`. Videos of different sizes are compared at the smaller one's size
        (area-averaged), as they look side by side on one page."""
        unknown = [c for c in criteria if c not in CRITERIA]
        if unknown:
            raise ValueError(
                f"the {self.name} judge cannot vote on {unknown}; it knows {list(CRITERIA)}"
            )
        left, right = _same_size(_as_float(left, "left"), _as_float(right, "right"))
        scores = self.score(left, prompt), self.score(right, prompt)
        votes = {}
        for name in criteria:
            gap = scores[0].criterion(name) - scores[1].criterion(name)
            margin = self.margins[name]
            votes[name] = "left" if gap > margin else "right" if gap < -margin else "same"
        return Judgement(votes, scores[0], scores[1], {c: self.margins[c] for c in criteria})

    def score(self, video, prompt: str) -> VideoScores:
        """Every criterion's score of one video `[F, H, W, 3]` for `prompt` (module docstring).
        The prompt's colour, shape and motion are read as the world's captions say them; one
        it does not name (or names twice) is not scored, and a prompt that names none of them
        raises ValueError."""
        frames = _as_float(video, "video")
        wanted = prompt_elements(prompt)
        count = len(frames)
        clip = measure(frames)
        reads = [measure(frame) for frame in frames]
        objects = [_find_object(frame) for frame in frames]
        found = [o for o in objects if o is not None]

        colours = Counter(r.colour for r in reads if r.found)
        shapes = Counter(r.shape for r in reads if r.found)
        details = {
            "edge_spread_px": float(np.median([o.edge_spread for o in found])) if found else 0.0,
            "colour_constancy": max(colours.values(), default=0) / count,
            "shape_constancy": max(shapes.values(), default=0) / count,
            "size_constancy": _size_constancy([o.area for o in found]) * len(found) / count,
            "flicker": _flicker(frames, reads, objects),
            "track_rms": _track_rms(clip.centroids, frames.shape[1:3]),
            "shape_confidence": sum(o.template_iou * o.share for o in found) / count,
        }
        if "colour" in wanted:
            details["colour_match"] = sum(r.colour == wanted["colour"] for r in reads) / count
        if "shape" in wanted:
            details["shape_match"] = sum(r.shape == wanted["shape"] for r in reads) / count
        if "motion" in wanted:
            details["motion_match"] = float(clip.motion == wanted["motion"])
        spread = details["edge_spread_px"]
        details["sharpness"] = min(1.0, SHARP_EDGE_PX / max(spread, 1e-6)) if found else 0.0
        details["steadiness"] = _tolerance(details["flicker"], FLICKER_SCALE)
        details["evenness"] = _tolerance(details["track_rms"], TRACK_SCALE)

        def mean(*keys):
            return float(np.mean([details[k] for k in keys if k in details]))

        visual = (mean("colour_match", "shape_match") + details["sharpness"]) / 2
        consistency = (mean(*_APPEARANCE) + mean("evenness", "motion_match")) / 2
        structure = details["shape_confidence"]
        return VideoScores(
            visual=visual,
            consistency=consistency,
            structure=float(structure),
            overall=float((visual + consistency + structure) / 3),
            details={k: float(v) for k, v in details.items()},
        )


def prompt_elements(prompt: str) -> dict[str, str]:
    """The colour, shape and motion a shapes-world prompt names (`parse_prompt`'s words); an
    element it does not name, or names more than once, is left out. ValueError when none."""
    try:
        return dict(zip(("colour", "shape", "motion"), parse_prompt(prompt), strict=True))
    except ValueError:
        pass
    words = set(re.findall(r"[a-z]+", str(prompt).lower()))
    motions = {m for m in MOTIONS for w in words if w in (m, f"{m}ward", f"{m}wards")}
    named = {"colour": words & set(COLOURS), "shape": words & set(SHAPES), "motion": motions}
    elements = {key: found.pop() for key, found in named.items() if len(found) == 1}
    if not elements:
        raise ValueError(
            f"the shapes judge reads only shapes-world prompts ({prompt!r} names no colour, "
            f"shape or motion of the world: {', '.join(COLOURS)}; {', '.join(SHAPES)}; "
            f"moving {', '.join(MOTIONS)})"
        )
    return elements


JUDGES = {ShapesJudge.name: ShapesJudge}


def make_judge(name: str) -> ShapesJudge:
    """The judge called `name` (`JUDGES`)."""
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; judges: {', '.join(JUDGES)}")
    return JUDGES[name]()


# ------------------------------------------------------------------------------- measures


def _as_float(video, what: str) -> np.ndarray:
    """uint8 or float `[F, H, W, 3]` → float32 in [0, 1]."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise ValueError(f"{what}: expected a video [F, H, W, 3], got shape {video.shape}")
    if video.dtype == np.uint8:
        return video.astype(np.float32) / 255.0
    return np.clip(video.astype(np.float32), 0.0, 1.0)


def _same_size(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both videos at the smaller height and width (the larger one area-averaged)."""
    height = min(left.shape[1], right.shape[1])
    width = min(left.shape[2], right.shape[2])
    return _resize(left, height, width), _resize(right, height, width)


def _resize(video: np.ndarray, height: int, width: int) -> np.ndarray:
    if video.shape[1:3] == (height, width):
        return video
    out = np.empty((len(video), height, width, 3), np.float32)
    for f, frame in enumerate(video):
        for c in range(3):  # Pillow's float images have one channel
            image = Image.fromarray(np.ascontiguousarray(frame[..., c]))
            out[f, ..., c] = np.asarray(image.resize((width, height), Image.Resampling.BOX))
    return out


def _find_object(frame: np.ndarray) -> _Object | None:
    """The frame's object, found as `measure` finds it (the colour distance from the border's
    median colour above half the contrast, largest component), with its edge spread and
    template fit; None when there is no contrast or only a speck."""
    height, width, _ = frame.shape
    ring = max(1, round(0.03 * min(height, width)))
    edges = (frame[:ring], frame[-ring:], frame[:, :ring], frame[:, -ring:])
    border = np.concatenate([edge.reshape(-1, 3) for edge in edges])
    distance = np.linalg.norm(frame - np.median(border, axis=0), axis=-1)
    contrast = float(np.percentile(distance, 99))
    if contrast < MIN_CONTRAST:
        return None
    level = np.clip(distance / contrast, 0.0, 1.0)
    foreground = ndimage.gaussian_filter(level, _MASK_BLUR) > 0.5
    labels, _ = ndimage.label(foreground)
    counts = np.bincount(labels.ravel())[1:]
    if counts.size == 0 or counts.max() < MIN_AREA * height * width:
        return None
    mask = labels == int(np.argmax(counts)) + 1
    return _Object(
        area=float(mask.mean()),
        edge_spread=_edge_spread(level, mask),
        template_iou=_template_iou(mask),
        share=float(counts.max() / counts.sum()),
        mask=mask,
    )


def _edge_spread(level: np.ndarray, mask: np.ndarray) -> float:
    """Width (px) of the object's edge: with n the level's 15–85 % part stretched to [0, 1]
    (what lies below, a textured background or codec ringing, is 0), Σ 4n(1−n) / Σ|∇n| over a
    band along the outline. By the coarea formula Σ|∇n| is the outline's length (n rises 0 → 1
    across it) and Σ 4n(1−n) that length times ∫ 4n(1−n) across the edge: 2/3 of the 15–85 %
    rise of a linear ramp, ≈ 1.4σ for a Gaussian blur of σ px, under 1 for an anti-aliased
    edge."""
    level = np.clip((level - _EDGE_LOW) / (1 - 2 * _EDGE_LOW), 0.0, 1.0)
    reach = _edge_reach(mask.shape)
    outside = ndimage.distance_transform_edt(~mask) <= reach
    inside = ndimage.distance_transform_edt(mask) <= reach
    band = outside & inside
    gy, gx = np.gradient(level)
    length = float(np.hypot(gx, gy)[band].sum())
    return float((4 * level * (1 - level))[band].sum() / length) if length > 0 else 0.0


def _edge_reach(size: tuple[int, int]) -> int:
    """How far (px) an edge's blur is looked for on either side of the object's outline."""
    return max(3, round(_EDGE_REACH * min(size)))


def _template_iou(mask: np.ndarray) -> float:
    """The best IoU of `mask` with a circle, square or upright triangle rendered by the world
    (`render`) with the mask's area and centroid (integrals, sub-pixel exact, unlike a bounding
    box), blurred and cut at half as the mask was (so a clean shape of any size fits its own
    template)."""
    height, width = mask.shape
    side = max(height, width)
    ys, xs = np.nonzero(mask)
    area = xs.size / side**2
    centroid_x, centroid_y = (xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side
    plain = Background(level=0.0, tint=(0.0, 0.0, 0.0))
    best = 0.0
    for shape in SHAPES:
        size = float(np.sqrt(area / _FILL[shape]))
        # a triangle's centroid lies a third of its half-height below its box's centre
        centre = (centroid_x, centroid_y - (size / 6 if shape == "triangle" else 0.0))
        clip = ShapeClip(shape, "white", "right", size, centre, 0.0, plain)
        coverage = render(clip, side, [0])[0, :height, :width, 0] / 0.95
        template = ndimage.gaussian_filter(coverage, _MASK_BLUR) > 0.5
        union = np.count_nonzero(template | mask)
        best = max(best, np.count_nonzero(template & mask) / union if union else 0.0)
    return float(best)


def _tolerance(value: float, scale: float) -> float:
    """1 / (1 + (value / scale)²): 1 at 0, flat for what is much smaller than `scale` (codec
    noise, sub-pixel jitter), 1/2 at `scale`, falling as 1/value² beyond."""
    return float(1.0 / (1.0 + (value / scale) ** 2))


def _size_constancy(areas: list[float]) -> float:
    """1 − the coefficient of variation of the object's area over the frames it is found in."""
    if len(areas) < 2:
        return float(len(areas))
    return float(max(0.0, 1.0 - np.std(areas) / np.mean(areas)))


def _flicker(frames: np.ndarray, reads, objects) -> float:
    """Mean frame-to-frame change: the object's colour (Euclidean, where both frames have one)
    plus the background's mean absolute change away from both frames' objects."""
    changes, reach = [], _edge_reach(frames.shape[1:3])
    for t in range(1, len(frames)):
        change = 0.0
        if reads[t].found and reads[t - 1].found:
            step = np.subtract(reads[t].mean_colour, reads[t - 1].mean_colour)
            change += float(np.linalg.norm(step))
        away = np.ones(frames.shape[1:3], bool)
        for o in (objects[t], objects[t - 1]):
            if o is not None:
                away &= ~ndimage.binary_dilation(o.mask, iterations=reach)
        if away.any():
            change += float(np.abs(frames[t] - frames[t - 1])[away].mean())
        changes.append(change)
    return float(np.mean(changes)) if changes else 0.0


def _track_rms(centroids: np.ndarray, size: tuple[int, int]) -> float:
    """RMS distance of the centroid track from its constant-velocity line (fraction of the
    side); with fewer than 3 found frames, as bad as a track can be (1)."""
    rms = track_smoothness(centroids, *size)["track_rms_fraction"]
    return 1.0 if rms is None else float(rms)
