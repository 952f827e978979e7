"""From encoded bytes to training pixels: decode a clip of `num_frames` frames out of a video
(PyAV, decoding only up to the last frame needed) or an image (Pillow), resize the shorter side
and crop to `(height, width)`, and map to float32 in [-1, 1].

Anything wrong with a record raises `BadExample(reason)`; the pipeline skips the record and
counts the reason. Reasons: `corrupt_video`, `too_short`, `unreadable_image`, `empty_caption`.
"""

from __future__ import annotations

import io
import math

import av
import numpy as np
from PIL import Image

from mv2_jax.media import _frame_rgb  # the colour conversion media.read_video uses

SKIP_REASONS = ("corrupt_video", "too_short", "unreadable_image", "empty_caption")


class BadExample(Exception):
    """A record that cannot become a training example; `reason` is the skip counter's key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def clip_step(fps: float | None, target_fps: float | None, frame_stride: int) -> float:
    """Source frames between two sampled frames: `fps / target_fps` when both rates are known
    (may be fractional, or < 1 to repeat frames of a slow video), else `frame_stride`."""
    if target_fps is not None and fps:
        return fps / target_fps
    return float(frame_stride)


def clip_indices(
    num_available: int, num_frames: int, step: float, rng: np.random.Generator
) -> np.ndarray:
    """Indices `[num_frames]` of a clip: `start + floor(i * step)`, `start` uniform over all
    positions where the clip fits. A video too short for the clip raises `too_short` (we skip
    rather than loop or pad, so every example shows real motion at the intended rate)."""
    offsets = np.floor(np.arange(num_frames) * step + 1e-6).astype(np.int64)
    span = int(offsets[-1]) + 1
    if num_available < span:
        raise BadExample("too_short", f"{num_available} frames, the clip needs {span}")
    start = int(rng.integers(0, num_available - span + 1))
    return start + offsets


def decode_clip(
    data: bytes,
    *,
    num_frames: int,
    frame_stride: int = 1,
    target_fps: float | None = None,
    fps: float | None = None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Encoded video bytes → uint8 `[num_frames, H, W, 3]`.

    `fps` is the record's rate if known (manifest), else the container's is used. When the
    container states its frame count, decoding stops at the clip's last frame; otherwise the
    whole video is decoded first."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadExample("corrupt_video", "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            step = clip_step(fps or (float(rate) if rate else None), target_fps, frame_stride)
            if stream.frames > 0:
                wanted = clip_indices(stream.frames, num_frames, step, rng)
                frames = _decode_until(container, stream, int(wanted[-1]))
                if len(frames) <= wanted[-1]:  # the index promised more than the file holds
                    raise BadExample("corrupt_video", f"only {len(frames)} frames decode")
            else:
                frames = _decode_until(container, stream, None)
                wanted = clip_indices(len(frames), num_frames, step, rng)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise BadExample("corrupt_video", str(e)) from e
    return np.stack([frames[i] for i in wanted])


def _decode_until(container, stream, last: int | None) -> list[np.ndarray]:
    frames = []
    for frame in container.decode(stream):
        frames.append(_frame_rgb(frame))
        if last is not None and len(frames) > last:
            break
    if not frames:
        raise BadExample("corrupt_video", "no frames decode")
    return frames


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes → uint8 `[1, H, W, 3]` (a one-frame video; alpha dropped)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))[None]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadExample("unreadable_image", str(e)) from e


def resize_and_crop(
    frames: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator | None,
    scale_to: int = 0,
) -> np.ndarray:
    """uint8 `[F, H, W, 3]` → uint8 `[F, height, width, 3]`: scale (bicubic, antialiased when
    shrinking) so the frames just cover `height × width` — or, with `scale_to`, so their
    shorter side is `scale_to` pixels (at least covering the crop; e.g. the frames' own size,
    to crop patches at full resolution) — then crop: centred when `rng` is None, at a
    uniformly random offset (the same for all frames) otherwise."""
    _, h, w, _ = frames.shape
    scale = max(height / h, width / w, scale_to / min(h, w))
    new_h, new_w = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
    if (new_h, new_w) != (h, w):
        frames = np.stack(
            [
                np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.Resampling.BICUBIC))
                for f in frames
            ]
        )
    if rng is None:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        top = int(rng.integers(0, new_h - height + 1))
        left = int(rng.integers(0, new_w - width + 1))
    return frames[:, top : top + height, left : left + width]


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [-1, 1] (0 → -1, 255 → 1)."""
    return frames.astype(np.float32) * (2.0 / 255.0) - 1.0
