"""Writing what the pipelines produce in formats people open (PNG, MP4, GIF, a folder of frames)
and reading videos back for the later stages. Images are `[B, H, W, 3]`, videos `[F, H, W, 3]`,
float in [0, 1] (uint8 is taken as it is); MP4 goes through PyAV, PNG and GIF through Pillow.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".gif")  # anything else with a suffix is refused; none → PNG folder
_NUMBERED = re.compile(r"^\d+$")


def to_uint8(pixels, what: str = "pixels") -> np.ndarray:
    """Float in [0, 1] (numpy or jax) → uint8 in [0, 255], rounded; uint8 passes unchanged."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float32)
    if not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise ValueError(f"{what}: {bad} values are NaN or infinite; nothing written")
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_shape(pixels: np.ndarray, ndim: int, layout: str, what: str) -> None:
    if pixels.ndim != ndim or pixels.shape[-1] != 3:
        raise ValueError(f"{what}: expected {layout} with 3 channels, got shape {pixels.shape}")
    if 0 in pixels.shape:
        raise ValueError(f"{what}: empty array of shape {pixels.shape}")


def next_index(folder: str | os.PathLike) -> int:
    """One past the highest number naming a file in `folder` (`00007.png` → 8), so that a new
    run appends instead of overwriting; 0 for a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    numbers = [int(p.stem) for p in folder.iterdir() if _NUMBERED.match(p.stem)]
    return max(numbers, default=-1) + 1


def save_images(images, out: str | os.PathLike, first_index: int | None = None) -> list[Path]:
    """Write `images [B, H, W, 3]` as `out/00000.png`, `out/00001.png`, … and return the paths.
    Numbering starts at `first_index`, by default after the files already in `out`."""
    pixels = to_uint8(images, "images")
    _check_shape(pixels, 4, "[B, H, W, 3]", "images")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: is a file; images are written into a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = next_index(out) if first_index is None else first_index
    paths = []
    for i, image in enumerate(pixels):
        path = out / f"{start + i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file → float32 `[H, W, 3]` in [0, 1] (alpha dropped, greyscale expanded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    return pixels.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------- writing


def write_video(frames, path: str | os.PathLike, fps: float = 8.0, *, crf: int = 18) -> Path:
    """Write `frames [F, H, W, 3]` to `path`, the format chosen by its suffix:

    - `.mp4`: H.264 (libx264, yuv420p, BT.709, `crf` quality: 0 lossless luma … 51 worst),
      playable in browsers and QuickTime. 4:2:0 needs even sizes, so an odd height or width is
      padded by repeating the last row / column (the file is one pixel larger there).
    - `.gif`: Pillow, looping, a 256-colour palette per frame; GIF stores delays in 1/100 s, so
      the rate is approximate, and Pillow merges identical consecutive frames.
    - no suffix: a folder of numbered PNG frames (`00000.png`, …), lossless; it must not hold
      frames already.
    """
    pixels = to_uint8(frames, "frames")
    _check_shape(pixels, 4, "[F, H, W, 3]", "frames")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported suffix {suffix!r}; use .mp4, .gif, or no suffix for a folder "
            "of PNG frames"
        )
    if suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(pixels, path, fps, crf)
    elif suffix == ".gif":
        _write_gif(pixels, path, fps)
    else:
        if next_index(path) > 0:
            raise FileExistsError(f"{path}: already holds numbered frames; choose a new folder")
        save_images(pixels, path, first_index=0)
    return path


def _pad_even(pixels: np.ndarray) -> np.ndarray:
    _, h, w, _ = pixels.shape
    return np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_mp4(pixels: np.ndarray, path: Path, fps: float, crf: int) -> None:
    pixels = _pad_even(pixels)
    _, h, w, _ = pixels.shape
    # faststart puts the index first: browsers start playing before the download ends, and a
    # truncated file still says how many frames it should have (read_video checks).
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Convert with BT.709 and say so in the stream: players assume 709 for HD, and
        # swscale's default (601) would shift the colours.
        stream.options = {
            "crf": str(crf),
            "x264-params": "colorprim=bt709:transfer=bt709:colormatrix=bt709",
        }
        for frame in pixels:
            rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
            yuv = rgb.reformat(format="yuv420p", dst_colorspace="itu709")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def _write_gif(pixels: np.ndarray, path: Path, fps: float) -> None:
    images = [Image.fromarray(frame) for frame in pixels]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
    )


# ---------------------------------------------------------------------------------- reading


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """A video file (anything FFmpeg decodes: .mp4, .gif, .webm, …) or a folder of numbered
    frames → (float32 `[F, H, W, 3]` in [0, 1], frames per second; None for a folder).
    Missing, unreadable and truncated files stop with a ValueError / FileNotFoundError that
    names the file and the problem."""
    path = Path(path)
    if path.is_dir():
        return _read_frame_folder(path), None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(
                    f"{path}: holds no video stream; it may be truncated or not a video"
                )
            stream = container.streams.video[0]
            expected = stream.frames  # from the container's index; 0 when it does not say
            rate = stream.average_rate or stream.guessed_rate
            frames = [_frame_rgb(frame) for frame in container.decode(stream)]
    except av.error.FFmpegError as e:
        raise ValueError(
            f"{path}: not a readable video ({e}); the file may be truncated or not a video"
        ) from e
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded; the file may be truncated")
    if expected and len(frames) < expected:
        raise ValueError(
            f"{path}: truncated: its index lists {expected} frames, only {len(frames)} decode"
        )
    fps = float(rate) if rate else None
    return np.stack(frames).astype(np.float32) / 255.0, fps


def _frame_rgb(frame: av.VideoFrame) -> np.ndarray:
    # Convert with the matrix the stream declares (BT.709 for ours); older PyAV ignores it.
    colorspace = getattr(frame, "colorspace", None)
    if colorspace in (1, 4, 5, 6, 7, 9):  # AVColorSpace values that swscale knows
        return frame.to_ndarray(format="rgb24", src_colorspace=colorspace)
    return frame.to_ndarray(format="rgb24")


def _read_frame_folder(folder: Path) -> np.ndarray:
    files = sorted(
        (p for p in folder.iterdir() if _NUMBERED.match(p.stem) and p.suffix.lower() == ".png"),
        key=lambda p: int(p.stem),
    )
    if not files:
        raise FileNotFoundError(f"{folder}: no numbered PNG frames (00000.png, …) in the folder")
    frames = [load_image(p) for p in files]
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: frames differ in size ({sorted(sizes)})")
    return np.stack(frames)
