"""The shapes world (`mv2_jax.data.shapes`) written as tfds datasets the training pipeline reads
unchanged: the same `video_text` / `image_text` records as the folder builders, so
`make_train_iterator(video_dir=DIR, ...)` and `config.data.video_dir=DIR` take them as they are.

    python -m mv2_jax.data.build shapes --form video --num-examples 20000 --size 128 \\
        --num-frames 8 --seed 0 --data-dir data/shapes_video
    python -m mv2_jax.data.build shapes --form image ... --data-dir data/shapes_image

Video records hold the clip as lossless PNG frames in a QuickTime (.mov) container: the
pipeline's `decode_clip` (PyAV) gives back the rendered uint8 pixels exactly, where yuv420 H.264
would smear the saturated colours and the anti-aliased edges. Image records hold frame 0 as a
PNG with the clip's caption — which names the motion too, so the key image shows where the
object starts. Record `i` is `ShapesSource(seed=seed)[i]`; held-out pairs are never written.
The world's parameters go into the dataset's `metadata.json` under `"shapes"`.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

from mv2_jax.data.builders import ImageTextBuilder, VideoTextBuilder, _build
from mv2_jax.data.shapes import HELDOUT, NUM_FRAMES, ShapesSource
from mv2_jax.media import to_uint8

FPS = 8.0  # a clip of NUM_FRAMES frames lasts one second
_CHUNK = 64  # examples per task when encoding in worker processes
# zlib level of the PNG frames: 3 encodes in ~5 ms per 128²×8 clip (~36 kB); the default (9)
# saves a fifth of the size for twice the build time. Decoding costs the same (~3 ms).
_PNG_OPTIONS = {"compression_level": "3"}


def encode_video(frames: np.ndarray, fps: float = FPS) -> bytes:
    """Frames `[F, H, W, 3]` (float in [0, 1] or uint8) → .mov bytes of lossless PNG frames."""
    frames = to_uint8(frames, "shapes clip")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as container:
        stream = container.add_stream("png", rate=round(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb24"
        stream.options = _PNG_OPTIONS
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def encode_image(image: np.ndarray) -> bytes:
    """An image `[H, W, 3]` (float in [0, 1] or uint8) → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image, "shapes image")).save(buffer, format="png")
    return buffer.getvalue()


def shapes_record(source: ShapesSource, index: int) -> dict:
    """Example `index` of `source` as a `video_text` or `image_text` record."""
    example = source[index]
    path = f"shapes/seed{source.seed}/{index:07d}"
    text = example["caption"]
    if source.form == "image":
        return {"image": encode_image(example["pixels"][0]), "caption": text, "path": path + ".png"}
    video = encode_video(example["pixels"])
    return {"video": video, "caption": text, "fps": np.float32(FPS), "path": path + ".mov"}


def _record_chunk(source: ShapesSource, start: int, stop: int) -> list[dict]:
    return [shapes_record(source, i) for i in range(start, stop)]


def shapes_records(source: ShapesSource, workers: int = 1, progress: bool = True):
    """Records of `source` in order, made in `workers` processes when > 1, with a tqdm bar."""
    from tqdm.auto import tqdm

    desc = f"shapes {source.form}s"
    bar = tqdm(total=len(source), desc=desc, unit="example", disable=not progress)
    with bar:
        if workers <= 1:
            for i in range(len(source)):
                yield shapes_record(source, i)
                bar.update()
            return
        starts = range(0, len(source), _CHUNK)
        stops = [min(s + _CHUNK, len(source)) for s in starts]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for chunk in pool.map(_record_chunk, [source] * len(starts), starts, stops):
                yield from chunk
                bar.update(len(chunk))


class _ShapesMixin:
    """Rows are finished records made from a `ShapesSource`; nothing is read from disk."""

    def __init__(self, *, source: ShapesSource | None = None, workers: int = 1, **kwargs):
        super().__init__(**kwargs)
        self._source = source
        if source is not None:
            self._rows = lambda: shapes_records(source, workers)

    def _generate_examples(self):
        source = self._source
        self.info.metadata["shapes"] = {
            "form": source.form,
            "num_examples": len(source),
            "size": source.size,
            "num_frames": source.num_frames,
            "seed": source.seed,
            "fps": FPS,
            "heldout": sorted(list(pair) for pair in HELDOUT),
        }
        yield from super()._generate_examples()

    def _example(self, row: dict, skipped: Counter) -> dict:
        return row


class ShapesVideoBuilder(_ShapesMixin, VideoTextBuilder, skip_registration=True):
    """Shapes-world clips as `video_text` records (lossless PNG-in-mov video bytes)."""

    name = "video_text"


class ShapesImageBuilder(_ShapesMixin, ImageTextBuilder, skip_registration=True):
    """First frames of shapes-world clips as `image_text` records (PNG bytes)."""

    name = "image_text"


def build_shapes_dataset(
    data_dir: str | os.PathLike,
    *,
    form: str = "video",
    num_examples: int = 20000,
    size: int = 128,
    num_frames: int = NUM_FRAMES,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    travel_scale: float = 1.0,
) -> Path:
    """Write `num_examples` shapes-world examples to `data_dir/video_text/1.0.0` (form
    "video") or `data_dir/image_text/1.0.0` (form "image"), objects travelling `travel_scale`
    × the world's usual distance; returns the dataset folder."""
    if num_examples < 1 or size < 8 or num_frames < 2:
        raise ValueError(
            f"num_examples={num_examples}, size={size}, num_frames={num_frames}: need at least "
            "1 example, 8 pixels and 2 frames"
        )
    source = ShapesSource(
        num_examples,
        size=size,
        num_frames=num_frames,
        seed=seed,
        form=form,
        travel_scale=travel_scale,
    )
    builder = ShapesVideoBuilder if form == "video" else ShapesImageBuilder
    tfds_bar = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)  # ours has the total; tfds's would interleave
    try:
        return _build(builder, data_dir, overwrite, source=source, workers=workers)
    finally:
        tqdm_utils.display_progress_bar(tfds_bar)
