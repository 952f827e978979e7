"""tfds builders that turn a folder of videos (or images) and their captions into an ArrayRecord
dataset, and the reader that opens one again for the grain pipelines.

Records hold the *encoded* file bytes (mp4, webm, png, jpeg, …) with the caption, so a dataset
is about as large as its source files; decoding, frame sampling and cropping happen in the
pipeline (`mv2_jax.data.pipeline`). Rows that cannot become a record (missing file, empty
caption) are skipped and counted; the counts go to the dataset's `metadata.json` and the log.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mv2_jax.data.manifest import read_manifest, read_parquet

log = logging.getLogger(__name__)

_VERSION = "1.0.0"
_BYTES = tfds.features.Tensor(shape=(), dtype=np.object_)  # encoded file bytes, kept as they are


class _CaptionedFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared part: one `train` split; source paths come as constructor arguments (and are
    only needed to build; reading goes through `open_dataset`)."""

    VERSION = tfds.core.Version(_VERSION)
    # No checksums file to look up next to the code: saying so also keeps tfds from importing
    # the `importlib_resources` backport, which it needs only on Python < 3.9.
    code_path = None
    _MEDIA_KEY = ""

    def __init__(self, *, rows=None, **kwargs):
        self._rows = rows  # callable → iterator of row dicts, or None when only reading
        super().__init__(**kwargs)

    def _media_features(self) -> dict:
        return {self._MEDIA_KEY: _BYTES}

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            **self._media_features(),
            "caption": tfds.features.Text(),
            "path": tfds.features.Text(),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if self._rows is None:
            raise ValueError(f"{self.name}: no source given; use build_*_dataset to build one")
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        skipped: Counter[str] = Counter()
        written = 0
        for key, row in enumerate(self._rows()):
            example = self._example(row, skipped)
            if example is not None:
                written += 1
                yield key, example
        self.info.metadata["skipped"] = dict(skipped)
        self.info.metadata["written"] = written
        log.info("%s: wrote %d examples, skipped %s", self.name, written, dict(skipped) or 0)

    def _example(self, row: dict, skipped: Counter) -> dict | None:
        raise NotImplementedError


class VideoTextBuilder(_CaptionedFilesBuilder):
    """Videos with captions: records `{"video": bytes, "caption": str, "fps": float32 (0 when
    unknown), "path": str}`."""

    name = "video_text"
    _MEDIA_KEY = "video"

    def __init__(self, *, videos_dir=None, manifest=None, **kwargs):
        self._videos_dir = None if videos_dir is None else Path(videos_dir)
        rows = None if manifest is None else lambda: read_manifest(manifest, ("path", "caption"))
        super().__init__(rows=rows, **kwargs)

    def _media_features(self) -> dict:
        return {"video": _BYTES, "fps": tfds.features.Scalar(dtype=np.float32)}

    def _example(self, row: dict, skipped: Counter) -> dict | None:
        data = _read_file(self._videos_dir, row.get("path"), skipped)
        caption = str(row.get("caption") or "").strip()
        if data is None:
            return None
        if not caption:
            skipped["empty_caption"] += 1
            return None
        fps = _parse_fps(row.get("fps"))
        return {"video": data, "caption": caption, "fps": fps, "path": str(row["path"])}


class ImageTextBuilder(_CaptionedFilesBuilder):
    """Images with captions: records `{"image": bytes, "caption": str, "path": str}`, from a
    folder + manifest or from a parquet file of image bytes."""

    name = "image_text"
    _MEDIA_KEY = "image"

    def __init__(self, *, images_dir=None, manifest=None, parquet=None, **kwargs):
        self._images_dir = None if images_dir is None else Path(images_dir)
        rows = None
        if parquet is not None:
            rows = lambda: read_parquet(parquet)  # noqa: E731
        elif manifest is not None:
            rows = lambda: read_manifest(manifest, ("path", "caption"))  # noqa: E731
        super().__init__(rows=rows, **kwargs)

    def _example(self, row: dict, skipped: Counter) -> dict | None:
        if self._images_dir is None:  # parquet: the bytes are in the row
            data = row["image"]
            if not data:
                skipped["missing_image"] += 1
                data = None
        else:
            data = _read_file(self._images_dir, row.get("path"), skipped)
        caption = str(row.get("caption") or "").strip()
        if data is None:
            return None
        if not caption:
            skipped["empty_caption"] += 1
            return None
        return {"image": bytes(data), "caption": caption, "path": str(row["path"])}


def _read_file(folder: Path, relative, skipped: Counter) -> bytes | None:
    if not relative:
        skipped["missing_path"] += 1
        return None
    file = folder / str(relative)
    if not file.is_file():
        skipped["missing_file"] += 1
        return None
    return file.read_bytes()


def _parse_fps(value) -> float:
    """Manifest fps → float; empty, unparseable or non-positive means unknown (0)."""
    try:
        fps = float(value)
    except (TypeError, ValueError):
        return 0.0
    return fps if math.isfinite(fps) and fps > 0 else 0.0


# ------------------------------------------------------------------------ build and open

BUILDERS = {"video": VideoTextBuilder, "image": ImageTextBuilder}


def _build(builder_cls, data_dir, overwrite: bool, **sources) -> Path:
    target = Path(data_dir) / builder_cls.name / _VERSION
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"{target}: a dataset is already there; pass overwrite=True (--overwrite) to "
                "rebuild it"
            )
        shutil.rmtree(target)
    builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record", **sources)
    builder.download_and_prepare()
    return target


def _require_dir(path, what: str) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such {what} folder")


def build_video_dataset(
    videos_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Build `data_dir/video_text/1.0.0` from `videos_dir` and a CSV/JSONL `manifest` with
    columns `path` (relative to `videos_dir`), `caption` and optionally `fps`. Returns the
    dataset folder; the skip counts are in its `metadata.json`."""
    _require_dir(videos_dir, "videos")
    next(read_manifest(manifest, ("path", "caption")), None)  # fail early on a bad manifest
    return _build(VideoTextBuilder, data_dir, overwrite, videos_dir=videos_dir, manifest=manifest)


def build_image_dataset(
    data_dir: str | os.PathLike,
    *,
    images_dir: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    parquet: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Build `data_dir/image_text/1.0.0` from `images_dir` + a CSV/JSONL `manifest` (`path`,
    `caption`), or from a `parquet` file with columns `image` (bytes) and `caption`."""
    if (parquet is None) == (manifest is None):
        raise ValueError("give either images_dir and manifest, or parquet")
    if parquet is not None:
        next(read_parquet(parquet), None)
        return _build(ImageTextBuilder, data_dir, overwrite, parquet=parquet)
    if images_dir is None:
        raise ValueError("a manifest needs images_dir, the folder its paths are relative to")
    _require_dir(images_dir, "images")
    next(read_manifest(manifest, ("path", "caption")), None)
    return _build(ImageTextBuilder, data_dir, overwrite, images_dir=images_dir, manifest=manifest)


def open_dataset(data_dir: str | os.PathLike, name: str, how_to_build: str):
    """The `train` split of dataset `name` under `data_dir` as a random-access source
    (`len`, `source[i]` → dict of numpy values / bytes), plus its metadata dict.
    `data_dir` may also be the dataset's own folder (`…/name/1.0.0`)."""
    data_dir = Path(data_dir)
    candidates = [data_dir, data_dir / _VERSION, data_dir / name / _VERSION]
    folder = next((c for c in candidates if (c / "dataset_info.json").is_file()), None)
    if folder is None:
        raise FileNotFoundError(
            f"{data_dir}: no {name} dataset here (looked for {data_dir / name / _VERSION}); "
            f"build one with `{how_to_build}`"
        )
    builder = tfds.builder_from_directory(os.fspath(folder))
    return builder.as_data_source(split="train"), dict(builder.info.metadata or {})
