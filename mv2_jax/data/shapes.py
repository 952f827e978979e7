"""The shapes world: a procedural generator of captioned clips small models can learn on a CPU,
and whose outputs can be scored from their pixels (`mv2_jax.data.shapes_measure`).

One object per clip — a circle, square or upright triangle (apex up) in one of seven palette
colours — moves in a straight line at constant speed (left, right, up or down) over a static
dark background (plain with a slight tint, or a low-contrast smooth texture). Its caption says
what it is: "a red circle moving right".

Geometry is resolution independent: positions and sizes are fractions of the frame side, x to
the right and y downwards, both in [0, 1]; every shape fills a `size × size` box centred on its
centre (circle: diameter `size`; square: side `size`; triangle: base and height `size`, so it
fills half its box). The object starts so that it stays fully inside the frame for the whole
clip, and travels `speed` per frame.

`render(clip, size, times)` takes continuous frame indices: the centre moves linearly, so
`t = 2.5` is exactly halfway between frames 2 and 3 — the true in-between frame that frame
interpolation is scored against. Edges are anti-aliased from the signed distance to the shape
(coverage = distance ramp one pixel wide).

`HELDOUT` (colour, shape) pairs are never rendered by the training sources — in none of the
four motions — so composition can be measured on them; every colour and every shape still
appears in training with other partners. `ShapesSource` is a grain-style random-access source
whose example `i` is a pure function of `(seed, i)`; `python -m mv2_jax.data.build shapes`
writes it as a tfds dataset (docs/data.md).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # saturated, hues well apart (≈0°, 58°, 120°, 183°, 231°, 300°); white unsaturated
    "red": (0.95, 0.12, 0.10),
    "green": (0.15, 0.82, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.12),
    "magenta": (0.90, 0.15, 0.90),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.95, 0.95, 0.95),
}
MOTIONS = ("left", "right", "up", "down")
HELDOUT = frozenset({("magenta", "triangle"), ("cyan", "square"), ("yellow", "circle")})

NUM_FRAMES = 8  # the clip length the travel range below is meant for
SIZE_RANGE = (0.22, 0.38)  # object extent, fraction of the frame side
TRAVEL_RANGE = (0.25, 0.45)  # distance covered from the first to the last frame
_MARGIN = 0.02  # keeps anti-aliased edges off the border pixels (from 32² up)
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_TEXTURE_WAVES = 4


@dataclass(frozen=True)
class Background:
    """A static background: `level` (dark grey, 0–0.15) plus a slight per-channel `tint`, plus
    a smooth texture of `amplitude` ≤ 0.06 (0: plain) made of a few sinusoids from `seed`."""

    level: float
    tint: tuple[float, float, float]
    amplitude: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class ShapeClip:
    """Everything that determines a clip. `start` is the object's centre (x, y) at frame 0 and
    `speed` its travel per frame, both as fractions of the frame side."""

    shape: str
    colour: str
    motion: str
    size: float
    start: tuple[float, float]
    speed: float
    background: Background

    def centre(self, times) -> np.ndarray:
        """Object centres `[F, 2]` (x, y) at continuous frame indices `times`."""
        times = np.asarray(times, np.float64).reshape(-1, 1)
        return np.asarray(self.start) + times * self.speed * np.asarray(DIRECTIONS[self.motion])


def training_pairs(heldout: bool = False) -> list[tuple[str, str]]:
    """The (colour, shape) pairs the training sources draw from, or the held-out ones."""
    pairs = itertools.product(COLOURS, SHAPES)
    return [pair for pair in pairs if (pair in HELDOUT) == heldout]


def sample_clip(
    rng: np.random.Generator,
    *,
    heldout: bool = False,
    num_frames: int = NUM_FRAMES,
    travel_scale: float = 1.0,
) -> ShapeClip:
    """A random clip: (colour, shape) uniform over the training pairs (`heldout=False`) or over
    `HELDOUT` (`heldout=True`), motion uniform; total travel over `num_frames` frames in
    `TRAVEL_RANGE` × `travel_scale` (e.g. 0.5: slow motion, the data of a speed LoRA); start
    drawn so the object stays inside the frame throughout."""
    if num_frames < 2:
        raise ValueError(f"num_frames={num_frames}: a moving clip needs at least 2 frames")
    check_travel_scale(travel_scale)
    pairs = training_pairs(heldout)
    colour, shape = pairs[rng.integers(len(pairs))]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    size = float(rng.uniform(*SIZE_RANGE))
    travel = float(rng.uniform(*TRAVEL_RANGE)) * travel_scale
    low, high = size / 2 + _MARGIN, 1 - size / 2 - _MARGIN
    along = float(rng.uniform(low, high - travel))  # start on the motion axis, going forward
    across = float(rng.uniform(low, high))
    if motion in ("left", "up"):
        along = 1 - along
    start = (along, across) if motion in ("left", "right") else (across, along)
    return ShapeClip(
        shape=shape,
        colour=colour,
        motion=motion,
        size=size,
        start=start,
        speed=travel / (num_frames - 1),
        background=_sample_background(rng),
    )


def check_travel_scale(travel_scale: float) -> None:
    """A ValueError unless clips `travel_scale` × `TRAVEL_RANGE` long fit in the frame with the
    largest object."""
    largest = (1 - SIZE_RANGE[1] - 2 * _MARGIN) / TRAVEL_RANGE[1]
    if not 0 < travel_scale <= largest:
        raise ValueError(
            f"travel_scale={travel_scale}: use a number in (0, {int(largest * 100) / 100}]; "
            "longer travels leave the frame"
        )


def _sample_background(rng: np.random.Generator) -> Background:
    tint = tuple(float(v) for v in rng.uniform(-0.025, 0.025, 3))
    if rng.random() < 0.5:
        return Background(level=float(rng.uniform(0.0, 0.15)), tint=tint)
    return Background(
        level=float(rng.uniform(0.06, 0.15)),
        tint=tint,
        amplitude=float(rng.uniform(0.02, 0.06)),
        seed=int(rng.integers(2**31)),
    )


# ------------------------------------------------------------------------------ rendering


def render(clip: ShapeClip, size: int, times) -> np.ndarray:
    """Frames float32 `[F, size, size, 3]` in [0, 1] at continuous frame indices `times`."""
    times = np.atleast_1d(np.asarray(times, np.float32))
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres
    centres = clip.centre(times).astype(np.float32)
    dx = grid[None, None, :] - centres[:, 0, None, None]  # [F, 1, W]
    dy = grid[None, :, None] - centres[:, 1, None, None]  # [F, H, 1]
    distance = _signed_distance(clip.shape, dx, dy, clip.size / 2)  # [F, H, W]
    coverage = np.clip(0.5 - distance * size, 0.0, 1.0)[..., None]
    colour = np.asarray(COLOURS[clip.colour], np.float32)
    background = render_background(clip.background, size)
    frames = background + coverage * (colour - background)
    return np.clip(frames, 0.0, 1.0, out=frames)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Distance to the shape's edge (negative inside), in frame-side units."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    if shape == "triangle":  # apex (0, -half), base corners (±half, half): inside |dx| ≤ v/2
        v = dy + half  # depth below the apex
        slanted = (2 * np.abs(dx) - v) / np.sqrt(5.0)
        return np.maximum(slanted, dy - half)
    raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")


def render_background(background: Background, size: int) -> np.ndarray:
    """The background float32 `[size, size, 3]`, the same pattern at every resolution."""
    base = np.float32(background.level) + np.asarray(background.tint, np.float32)
    image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if background.amplitude > 0:
        image = image + _texture(background, size)[..., None]
    return np.clip(image, 0.0, 1.0)


def _texture(background: Background, size: int) -> np.ndarray:
    """A sum of `_TEXTURE_WAVES` plane waves (1–4 cycles per frame, random directions and
    phases), bounded by the amplitude."""
    rng = np.random.default_rng(background.seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    angles = rng.uniform(0, 2 * np.pi, _TEXTURE_WAVES)
    cycles = rng.uniform(1.0, 4.0, _TEXTURE_WAVES)
    phases = rng.uniform(0, 2 * np.pi, _TEXTURE_WAVES)
    texture = np.zeros((size, size), np.float32)
    for angle, cycle, phase in zip(angles, cycles, phases):
        fx, fy = 2 * np.pi * cycle * np.cos(angle), 2 * np.pi * cycle * np.sin(angle)
        texture += np.cos(fx * grid[None, :] + fy * grid[:, None] + phase).astype(np.float32)
    return texture * np.float32(background.amplitude / _TEXTURE_WAVES)


# ------------------------------------------------------------------------------- captions

# How the motion is said, `{}` being the direction; the first is the canonical caption.
_MOTION_PHRASES = ("moving {}", "moving to the {}", "moving towards the {}", "moves {}",
                   "going {}", "moves to the {}")  # fmt: skip
_VERTICAL_PHRASES = ("moving {}", "moves {}", "going {}", "moving {}wards", "heading {}")
_ARTICLES = ("a", "the", "")


def caption_variations(clip: ShapeClip) -> list[str]:
    """Every caption `caption(clip, rng)` can return; the first is the canonical one."""
    phrases = _MOTION_PHRASES if clip.motion in ("left", "right") else _VERTICAL_PHRASES
    return [
        " ".join(w for w in (article, clip.colour, clip.shape, phrase.format(clip.motion)) if w)
        for phrase in phrases
        for article in _ARTICLES
    ]


def caption(clip: ShapeClip, rng: np.random.Generator | None = None) -> str:
    """ "a red circle moving right"; with an `rng`, one of the small variations used in
    training ("the …", "… moving to the right", "… moves up", "red circle going down", …),
    the canonical form half of the time."""
    variations = caption_variations(clip)
    if rng is None or rng.random() < 0.5:
        return variations[0]
    return variations[int(rng.integers(len(variations)))]


_MOTION_WORDS = {
    **{m: m for m in MOTIONS},
    **{f"{m}wards": m for m in MOTIONS},
    **{f"{m}ward": m for m in MOTIONS},
}


def parse_prompt(text: str) -> tuple[str, str, str]:
    """A prompt → (colour, shape, motion). Accepts every caption variation (any case,
    punctuation and spacing); a missing or repeated element raises ValueError naming it."""
    words = re.findall(r"[a-z]+", str(text).lower())
    colour = _one_of(words, {c: c for c in COLOURS}, "colour", "colours", text)
    shape = _one_of(words, {s: s for s in SHAPES}, "shape", "shapes", text)
    motion = _one_of(words, _MOTION_WORDS, "motion", "motions", text)
    return colour, shape, motion


def _one_of(words: list[str], vocabulary: dict, what: str, plural: str, text: str) -> str:
    found = sorted({vocabulary[w] for w in words if w in vocabulary})
    choices = sorted(set(vocabulary.values()), key=list(vocabulary.values()).index)
    if len(found) != 1:
        problem = f"no {what}" if not found else f"more than one {what} ({', '.join(found)})"
        raise ValueError(f"{problem} in {text!r}; {plural}: {', '.join(choices)}")
    return found[0]


# ---------------------------------------------------------------------------------- source


class ShapesSource:
    """A random-access source of `num_examples` clips (`len`, `source[i]`); example `i` is a
    pure function of `(seed, i)`: `{"pixels": float32 [F, size, size, 3] in [0, 1] (F = 1 for
    form="image": the clip's first frame), "caption": str (with variations), "clip":
    ShapeClip}`. `heldout=True` draws only `HELDOUT` pairs (for evaluation)."""

    def __init__(
        self,
        num_examples: int,
        *,
        size: int = 128,
        num_frames: int = NUM_FRAMES,
        seed: int = 0,
        form: str = "video",
        heldout: bool = False,
        travel_scale: float = 1.0,
    ):
        if form not in ("video", "image"):
            raise ValueError(f"form={form!r}; use 'video' or 'image'")
        check_travel_scale(travel_scale)
        self.num_examples, self.size, self.num_frames = num_examples, size, num_frames
        self.seed, self.form, self.heldout = seed, form, heldout
        self.travel_scale = travel_scale

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, index])
        clip = sample_clip(
            rng, heldout=self.heldout, num_frames=self.num_frames, travel_scale=self.travel_scale
        )
        times = [0] if self.form == "image" else np.arange(self.num_frames)
        pixels = render(clip, self.size, times)
        return {"pixels": pixels, "caption": caption(clip, rng), "clip": clip}

    def __repr__(self) -> str:
        return (
            f"ShapesSource({self.num_examples}, size={self.size}, num_frames={self.num_frames}, "
            f"seed={self.seed}, form={self.form!r}, heldout={self.heldout}, "
            f"travel_scale={self.travel_scale})"
        )
