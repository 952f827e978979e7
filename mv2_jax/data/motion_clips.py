"""Frame-interpolation training clips made on the fly: crops of the photographs bundled with
scikit-image and of generated scenes, moved by a camera (sub-pixel pan, zoom, small rotation)
and carrying a foreground object on its own path. Every frame — frame0, frame1 and the
target at t — is rendered at its exact transform (not blended), so the target is the truth.

Example `i` of a run is a pure function of `(seed, i)`; the grain dataset over positions is
therefore deterministic and checkpointable. The photographs in `HELDOUT_PHOTOS` never appear
in training: `benchmarks/vfi_quality.py` evaluates on them ("unseen real-texture pans").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Photographs shipped inside the scikit-image wheel (no pooch download needed).
TRAIN_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "text", "clock", "cell",
)  # fmt: skip
HELDOUT_PHOTOS = ("rocket", "brick", "motorcycle")
INTERPOLATION_TIMES = (1 / 3, 1 / 2, 2 / 3)
_CANVAS = 256  # side of a generated scene


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float32 `[H,W,3]` in [0, 1] (grey → 3 channels)."""
    from skimage import data

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = np.asarray(image, np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def generated_scene(rng: np.random.Generator, size: int = _CANVAS) -> np.ndarray:
    """A random scene `[size,size,3]` in [0, 1]: a colour gradient, band-passed noise texture
    and a few flat or textured rectangles and ellipses with hard edges."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    scene = a + (b - a) * ramp[..., None]
    for _ in range(rng.integers(1, 3)):
        noise = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), (rng.uniform(0.7, 6),) * 2
                                        + (0,))  # fmt: skip
        scene += rng.uniform(0.1, 0.6) * noise / (noise.std() + 1e-6) * 0.25
    for _ in range(rng.integers(3, 12)):
        cy, cx, ry, rx = rng.uniform(0, 1, 2).tolist() + rng.uniform(0.03, 0.2, 2).tolist()
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        color = rng.uniform(0, 1, 3).astype(np.float32)
        stripes = 0.15 * np.sin(rng.uniform(20, 120) * (xx if rng.random() < 0.5 else yy))
        shade = color + (stripes[..., None] if rng.random() < 0.4 else 0)
        scene = np.where(inside[..., None], shade, scene)
    return np.clip(scene, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class Path2D:
    """A similarity transform moving linearly from time 0 to 1: the source point under the
    output's centre, the zoom (> 1 magnifies) and the rotation (radians)."""

    center0: tuple[float, float]  # (y, x) in source pixels
    center1: tuple[float, float]
    zoom0: float = 1.0
    zoom1: float = 1.0
    angle0: float = 0.0
    angle1: float = 0.0

    def _at(self, s: float) -> tuple[float, float, float, float]:
        lerp = lambda a, b: a + (b - a) * s  # noqa: E731
        cy, cx = lerp(self.center0[0], self.center1[0]), lerp(self.center0[1], self.center1[1])
        return cy, cx, lerp(self.zoom0, self.zoom1), lerp(self.angle0, self.angle1)

    def coordinates(self, s: float, height: int, width: int) -> np.ndarray:
        """Source coordinates `[2, height, width]` (y, x) of the output pixels at time `s`."""
        cy, cx, zoom, angle = self._at(s)
        v, u = np.mgrid[0:height, 0:width].astype(np.float64)
        v, u = (v - (height - 1) / 2) / zoom, (u - (width - 1) / 2) / zoom
        cos, sin = np.cos(angle), np.sin(angle)
        return np.stack([cy + sin * u + cos * v, cx + cos * u - sin * v])

    def to_output(self, points: np.ndarray, s: float, height: int, width: int) -> np.ndarray:
        """The inverse: output pixels `[2, ...]` (y, x) where source `points` appear at `s`."""
        cy, cx, zoom, angle = self._at(s)
        dy, dx = points[0] - cy, points[1] - cx
        cos, sin = np.cos(angle), np.sin(angle)
        v, u = zoom * (cos * dy - sin * dx), zoom * (sin * dy + cos * dx)
        return np.stack([v + (height - 1) / 2, u + (width - 1) / 2])


def sample(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """`image [H,W,C]` bilinearly sampled at `coords [2,h,w]` (edges extended) → `[h,w,C]`."""
    # Only the window the coordinates reach is copied out (channel-first, contiguous).
    limit = np.array(image.shape[:2]) - 1
    lo = np.clip(np.floor(coords.reshape(2, -1).min(1)).astype(int) - 1, 0, limit)
    hi = np.maximum(np.ceil(coords.reshape(2, -1).max(1)).astype(int) + 2, lo + 1)
    window = np.moveaxis(image[lo[0] : hi[0], lo[1] : hi[1]], -1, 0).astype(np.float32)
    local = coords - lo[:, None, None]
    channels = [ndimage.map_coordinates(c, local, order=1, mode="nearest") for c in window]
    return np.stack(channels, axis=-1)


@dataclass(frozen=True)
class Clip:
    """A moving scene: a background under a camera path and, optionally, a sprite (RGB plus
    alpha) whose own path is in output pixels."""

    background: np.ndarray
    camera: Path2D
    sprite: np.ndarray | None = None  # [h, w, 4]
    sprite_path: Path2D | None = None

    def _sprite_layer(self, s: float, size: tuple[int, int]) -> np.ndarray:
        """The sprite's RGBA `[H,W,4]` over the output at `s` (its path maps the output frame
        into the sprite; outside it, alpha 0)."""
        coords = self.sprite_path.coordinates(s, *size)
        return sample(np.pad(self.sprite, ((1, 1), (1, 1), (0, 0))), coords + 1)

    def render(self, s: float, size: tuple[int, int]) -> np.ndarray:
        """The frame `[H,W,3]` at time `s` ∈ [0, 1]."""
        frame = sample(self.background, self.camera.coordinates(s, *size))
        if self.sprite is not None:
            layer = self._sprite_layer(s, size)
            alpha = layer[..., 3:]
            frame = alpha * layer[..., :3] + (1 - alpha) * frame
        return frame

    def flow(self, s: float, to: float, size: tuple[int, int]) -> np.ndarray:
        """The true flow `[H,W,2]` (x, y) from the frame at `s` to the frame at `to`: pixel p
        of frame `s` shows what frame `to` shows at p + flow (the backward-warp convention),
        following the sprite where it is (mostly) visible and the camera elsewhere."""
        grid = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
        points = self.camera.coordinates(s, *size)
        moved = self.camera.to_output(points, to, *size)
        if self.sprite is not None:
            on_sprite = self._sprite_layer(s, size)[..., 3] > 0.5
            sprite_points = self.sprite_path.coordinates(s, *size)
            on_moved = self.sprite_path.to_output(sprite_points, to, *size)
            moved = np.where(on_sprite, on_moved, moved)
        return (moved - grid)[::-1].transpose(1, 2, 0).astype(np.float32)


def _random_source(rng: np.random.Generator, photos: tuple[str, ...]) -> np.ndarray:
    if photos and rng.random() < 0.75:
        return load_photo(photos[rng.integers(len(photos))])
    return generated_scene(rng)


def _sprite(rng: np.random.Generator, photos: tuple[str, ...], side: int) -> np.ndarray:
    """An RGBA object `[side, side, 4]`: a texture cut by an ellipse or a rectangle."""
    source = _random_source(rng, photos)
    y = rng.integers(0, source.shape[0] - side + 1)
    x = rng.integers(0, source.shape[1] - side + 1)
    rgb = source[y : y + side, x : x + side]
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side - 0.5
    ry, rx = rng.uniform(0.25, 0.5, 2)
    if rng.random() < 0.5:
        alpha = ((yy / ry) ** 2 + (xx / rx) ** 2 < 1).astype(np.float32)
    else:
        alpha = ((np.abs(yy) < ry) & (np.abs(xx) < rx)).astype(np.float32)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def random_clip(
    rng: np.random.Generator,
    size: int,
    max_motion: float,
    photos: tuple[str, ...] = TRAIN_PHOTOS,
    object_probability: float = 0.5,
) -> Clip:
    """A random clip whose content moves up to `max_motion` pixels between frames 0 and 1."""
    background = _random_source(rng, photos)
    zoom1 = float(np.exp(rng.uniform(-0.12, 0.12))) if rng.random() < 0.3 else 1.0
    angle1 = float(np.deg2rad(rng.uniform(-4, 4))) if rng.random() < 0.2 else 0.0
    direction = rng.uniform(0, 2 * np.pi)
    pan = rng.uniform(0, max_motion) * np.array([np.sin(direction), np.cos(direction)])
    # Keep the whole path inside the source (with the zoom's and rotation's reach).
    reach = size * 0.8 + np.abs(pan)
    short = np.maximum(0, np.ceil(2 * reach + 2 - np.array(background.shape[:2]))).astype(int)
    if short.any():  # a small photograph (page, text): extend it by reflection
        background = np.pad(
            background, [(s // 2 + 1, s // 2 + 1) for s in short] + [(0, 0)], "reflect"
        )
    center0 = rng.uniform(reach, np.array(background.shape[:2]) - reach)
    center1 = center0 + pan
    camera = Path2D(tuple(center0), tuple(center1), 1.0, zoom1, 0.0, angle1)
    if rng.random() >= object_probability:
        return Clip(background, camera)
    side = int(rng.integers(size // 5, size // 2 + 1))
    sprite = _sprite(rng, photos, side)
    direction = rng.uniform(0, 2 * np.pi)
    motion = rng.uniform(0, max_motion) * np.array([np.sin(direction), np.cos(direction)])
    start = rng.uniform(0.2 * size, 0.8 * size, 2)
    # The sprite path maps output pixel (centred) → sprite pixel: centre at sprite centre
    # when the output point is `start + motion·s`, i.e. the sprite's centre moves that way.
    at = lambda p: tuple((side - 1) / 2 - (p - (size - 1) / 2))  # noqa: E731
    sprite_path = Path2D(at(start), at(start + motion))
    return Clip(background, camera, sprite, sprite_path)


def sample_time(rng: np.random.Generator) -> float:
    """Half the time one of the ×2 / ×3 times, else uniform in [0.1, 0.9]."""
    if rng.random() < 0.5:
        return float(INTERPOLATION_TIMES[rng.integers(len(INTERPOLATION_TIMES))])
    return float(rng.uniform(0.1, 0.9))


@dataclass(frozen=True)
class MotionClipSource:
    """Random-access training triplets: example `i` → frame0, frame1, frame_t `[S,S,3]`
    float32 in [0, 1], the true flow `[S,S,4]` from frame_t to frame0 and to frame1 (x, y
    pixels each) and `t` (float32), a pure function of `(seed, i)`."""

    size: int
    max_motion: float
    seed: int = 0
    photos: tuple[str, ...] = TRAIN_PHOTOS
    object_probability: float = 0.5
    num_clips: int = 0  # > 0: only this many distinct clips, repeated (for overfitting checks)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        clip_index = index % self.num_clips if self.num_clips else index
        rng = np.random.default_rng((self.seed, int(clip_index)))
        clip = random_clip(rng, self.size, self.max_motion, self.photos, self.object_probability)
        t = sample_time(rng)
        shape = (self.size, self.size)
        frames = np.stack([clip.render(s, shape) for s in (0.0, 1.0, t)])
        flow = np.concatenate([clip.flow(t, 0.0, shape), clip.flow(t, 1.0, shape)], axis=-1)
        if rng.random() < 0.3:  # colour jitter: per-channel gains
            frames = np.clip(frames * rng.uniform(0.6, 1.3, 3).astype(np.float32), 0, 1)
        if rng.random() < 0.5:  # mirror left-right: x flows change sign
            frames, flow = frames[:, :, ::-1], flow[:, ::-1] * np.float32([-1, 1, -1, 1])
        if rng.random() < 0.5:  # time reversal: (frame1, frame0) at 1 - t
            frames, flow, t = frames[[1, 0, 2]], flow[..., [2, 3, 0, 1]], 1.0 - t
        frame0, frame1, frame_t = np.ascontiguousarray(frames)
        return {
            "frame0": frame0,
            "frame1": frame1,
            "frame_t": frame_t,
            "flow": np.ascontiguousarray(flow),
            "t": np.float32(t),
            "position": np.int64(index),
        }


def motion_clip_iterator(
    source: MotionClipSource,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 2,
    prefetch: int = 4,
):
    """A checkpointable grain iterator of this process's batches: process `p` takes global
    positions `p, p + P, …`, so step `k`'s global batch is positions `[k·B, (k+1)·B)`."""
    import grain

    if global_batch_size % process_count:
        raise ValueError(f"batch {global_batch_size} not divisible by {process_count} processes")
    positions = grain.MapDataset.range(2**40)[process_index::process_count]
    examples = positions.map(source.__getitem__).batch(global_batch_size // process_count)
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
    return iter(examples.to_iter_dataset(options))
