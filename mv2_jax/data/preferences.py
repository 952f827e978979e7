"""Preference pairs as a tfds ArrayRecord dataset (`preference_pairs`), the data of Diffusion-DPO
(Wallace et al. 2023) and of the reward models, from three inputs:

- a side-by-side study's votes (`studies export`; rules in `mv2_jax.data.preference_votes`);
- a JSONL of `{"prompt", "chosen", "rejected"}` media paths (optional `"weight"`, default 1);
- Pick-a-Pic v2's parquet layout: `caption`, `jpg_0`, `jpg_1` (image bytes), `label_0` (1 → image
  0 preferred, 0 → image 1, 0.5 → a tie: dropped, or kept as two half-weight pairs).

Records `{"prompt", "chosen", "rejected" (encoded file bytes, as `image_text` / `video_text`
hold one image / one clip), "kind" ("image" | "video"), "source" ("study" | "jsonl" |
"pickapic"), "weight" (float32), "criterion" ("" outside studies), "origin" ("FILE:LINE")}`.
Every record's media is decoded once at build time; a missing or undecodable file is skipped
and counted (as the other builders skip), with a warning naming the file and its input line.
One dataset holds one kind: an image pair and a video pair cannot share a batch.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mv2_jax.data.builders import _BYTES, _VERSION, _build
from mv2_jax.data.decode import BadExample, decode_image
from mv2_jax.data.manifest import ManifestError, jsonl_objects

log = logging.getLogger(__name__)

NAME = "preference_pairs"
SOURCES = ("study", "jsonl", "pickapic")
# Media kind by file suffix; a path with another suffix (or bytes from parquet) is an image.
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
_SHOWN_SKIPS = 20  # skipped records listed by name in metadata.json


def media_kind(media: Path | bytes) -> str:
    """ "video" for a path with a video suffix, else "image"."""
    is_video = isinstance(media, Path) and media.suffix.lower() in VIDEO_SUFFIXES
    return "video" if is_video else "image"


def check_decodes(data: bytes, kind: str) -> None:
    """Raise `BadExample` unless `data` decodes as an image, or as a video (all its frames,
    at least one)."""
    if kind == "image":
        decode_image(data)
        return
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadExample("corrupt_video", "no video stream")
            # Every frame: a truncated file often decodes its first frames and then fails.
            if sum(1 for _ in container.decode(container.streams.video[0])) == 0:
                raise BadExample("corrupt_video", "no frame decodes")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise BadExample("corrupt_video", str(e)) from e


# ------------------------------------------------------------------------ the inputs


def jsonl_pairs(path: str | os.PathLike, media_dir=None):
    """Pairs of a JSONL of `{"prompt", "chosen", "rejected"[, "weight"]}`; relative paths are
    resolved against `media_dir` (default: the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such pairs file")
    media_dir = path.parent if media_dir is None else Path(media_dir)
    for number, row in jsonl_objects(path):
        where = f"{path}:{number}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise ManifestError(
                f"{where}: lacks {missing}; each line is "
                '{"prompt", "chosen", "rejected"[, "weight"]}'
            )
        weight = row.get("weight", 1.0)
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise ManifestError(f"{where}: weight {weight!r} must be a positive number")
        yield {
            "prompt": str(row["prompt"]),
            "chosen": resolve_media(row["chosen"], media_dir),
            "rejected": resolve_media(row["rejected"], media_dir),
            "weight": weight,
            "criterion": "",
            "origin": f"{path.name}:{number}",
        }


def resolve_media(path, media_dir: Path) -> Path:
    """A media path as given (`~` expanded); a relative one is taken inside `media_dir`."""
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else media_dir / path


def _image_bytes(value):
    return value.get("bytes") if isinstance(value, dict) else value  # HF datasets' Image struct


def pickapic_pairs(path: str | os.PathLike, ties: str = "drop", counts: Counter | None = None):
    """Pairs of a parquet file in Pick-a-Pic v2's layout (other columns ignored), read in
    record batches. A label other than 0, ½, 1 is skipped and counted (`bad_label`)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such parquet file")
    counts = Counter() if counts is None else counts
    parquet = pq.ParquetFile(path)
    present = parquet.schema_arrow.names
    missing = [c for c in PICKAPIC_COLUMNS if c not in present]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing} of Pick-a-Pic's layout; the "
            f"file has {sorted(present)}"
        )
    number = 0
    for batch in parquet.iter_batches(columns=list(PICKAPIC_COLUMNS), batch_size=256):
        for row in batch.to_pylist():
            base = {
                "prompt": str(row["caption"] or ""),
                "criterion": "",
                "origin": f"{path.name}:{number}",
            }
            number += 1
            first, second = _image_bytes(row["jpg_0"]), _image_bytes(row["jpg_1"])
            label = row["label_0"]
            if label in (0.0, 1.0):
                chosen, rejected = (first, second) if label == 1.0 else (second, first)
                yield {**base, "chosen": chosen, "rejected": rejected, "weight": 1.0}
            elif label == 0.5 and ties == "keep":
                counts["ties_kept"] += 1
                yield {**base, "chosen": first, "rejected": second, "weight": 0.5}
                yield {**base, "chosen": second, "rejected": first, "weight": 0.5}
            elif label == 0.5:
                counts["ties_dropped"] += 1
            else:
                counts["bad_label"] += 1


# ------------------------------------------------------------------------ the builder


class PreferencePairsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Preference pairs (see the module docstring for the record)."""

    name = NAME
    VERSION = tfds.core.Version(_VERSION)
    code_path = None  # see builders._CaptionedFilesBuilder

    def __init__(
        self,
        *,
        pairs: Callable[[], Iterator[dict]] | None = None,
        source="",
        counts: Counter | None = None,
        **kwargs,
    ):
        self._pairs, self._source = pairs, source
        self._counts = Counter() if counts is None else counts
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        features = {
            "prompt": text,
            "chosen": _BYTES,
            "rejected": _BYTES,
            "kind": text,
            "source": text,
            "weight": tfds.features.Scalar(dtype=np.float32),
            "criterion": text,
            "origin": text,
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if self._pairs is None:
            raise ValueError(f"{NAME}: no source given; use build_preference_dataset")
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        skipped: Counter[str] = Counter()
        shown: list[str] = []
        kind, written = None, 0
        for key, pair in enumerate(self._pairs()):
            try:
                example = self._example(pair)
            except BadExample as e:
                skipped[e.reason] += 1
                message = f"{pair['origin']}: skipped ({e})"
                log.warning("%s", message)
                if len(shown) < _SHOWN_SKIPS:
                    shown.append(message)
                continue
            if kind is None:
                kind = example["kind"]
            elif example["kind"] != kind:
                raise ValueError(
                    f"{pair['origin']}: a {example['kind']} pair among {kind} pairs; "
                    "build image and video pairs into separate data dirs"
                )
            written += 1
            yield key, example
        self.info.metadata.update(
            kind=kind,
            source=self._source,
            written=written,
            skipped=dict(skipped),
            skipped_examples=shown,
            counts=dict(sorted(self._counts.items())),
        )
        log.info("%s: wrote %d pairs, skipped %s", NAME, written, dict(skipped) or 0)

    def _example(self, pair: dict) -> dict:
        media, kinds = {}, set()
        for side in ("chosen", "rejected"):
            value = pair[side]
            kinds.add(kind := media_kind(value))
            if isinstance(value, Path):
                if not value.is_file():
                    raise BadExample("missing_file", f"{side} {value}: no such file")
                value = value.read_bytes()
            if not value:
                raise BadExample("missing_media", f"{side}: empty")
            try:
                check_decodes(value, kind)
            except BadExample as e:
                raise BadExample(e.reason, f"{side} {pair[side]!s:.200}: {e}") from e
            media[side] = bytes(value)
        if len(kinds) > 1:
            raise ValueError(f"{pair['origin']}: chosen and rejected are an image and a video")
        if not pair["prompt"].strip():
            raise BadExample("empty_caption", "no prompt")
        return {
            **media,
            "prompt": pair["prompt"],
            "kind": kinds.pop(),
            "source": self._source,
            "weight": np.float32(pair["weight"]),
            "criterion": pair["criterion"],
            "origin": pair["origin"],
        }


def build_preference_dataset(
    data_dir: str | os.PathLike,
    *,
    votes: str | os.PathLike | None = None,
    pairs: str | os.PathLike | None = None,
    pickapic: str | os.PathLike | None = None,
    media_dir: str | os.PathLike | None = None,
    criteria: tuple[str, ...] = ("overall",),
    ties: str = "drop",
    min_gold_accuracy: float = 0.8,
    raters: tuple[str, ...] | None = None,
    aggregate: str = "majority",
    overwrite: bool = False,
) -> Path:
    """Build `data_dir/preference_pairs/1.0.0` from exactly one input: a study's `votes`
    export, a JSONL of `pairs`, or a `pickapic` parquet file. Returns the dataset folder; its
    `metadata.json` holds `kind`, `written`, `skipped` and the input's `counts`."""
    given = {k: v for k, v in (("votes", votes), ("pairs", pairs), ("pickapic", pickapic)) if v}
    if len(given) != 1:
        raise ValueError("give exactly one input: --votes, --pairs or --pickapic")
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties={ties!r}: choose drop or keep")
    counts: Counter = Counter()
    if votes is not None:
        from mv2_jax.data.preference_votes import study_pairs

        found = study_pairs(
            votes,
            criteria=criteria,
            ties=ties,
            raters=raters,
            counts=counts,
            min_gold_accuracy=min_gold_accuracy,
            aggregate=aggregate,
            media_dir=media_dir,
        )
        source, make = "study", lambda: iter(found)
    elif pairs is not None:
        next(jsonl_pairs(pairs, media_dir), None)  # fail early on a bad file
        source, make = "jsonl", lambda: jsonl_pairs(pairs, media_dir)
    else:
        _check_pickapic(pickapic)
        source, make = "pickapic", lambda: pickapic_pairs(pickapic, ties, counts)
    return _build(
        PreferencePairsBuilder, data_dir, overwrite, pairs=make, source=source, counts=counts
    )


def _check_pickapic(path) -> None:
    """Missing file or columns fail before anything is written."""
    it = pickapic_pairs(path, "keep")
    try:
        next(it, None)
    finally:
        it.close()


def preference_iterator(config, tokenizer=None):
    """The pair batches of a run's `config.data` (`preference_pipeline.preference_iterator`;
    here too, where the stages that train on pairs look for it)."""
    from mv2_jax.data.preference_pipeline import preference_iterator

    return preference_iterator(config, tokenizer)
