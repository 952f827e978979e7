"""Reading the captions that go with a folder of videos or images: a CSV with a header or a JSONL
file (WebVid-style columns `path`, `caption`, optional `fps`), or a parquet file holding the
image bytes next to their captions. Rows come out as plain dicts; nothing is decoded here.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


class ManifestError(ValueError):
    """A manifest that cannot be used at all (missing, unknown format, missing columns)."""


def read_manifest(path: str | os.PathLike, required: tuple[str, ...]) -> Iterator[dict]:
    """Rows of a CSV (with header) or JSONL manifest as dicts, one per line.

    Every name in `required` must be a column (CSV header) or, for JSONL, a key of the first
    row; otherwise a ManifestError names the missing columns and those present. Values keep
    their types (strings from CSV; whatever JSON holds); later rows that lack a column yield
    None for it, so the caller can skip them and count.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_csv(path, required)
    elif suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path, required)
    else:
        raise ManifestError(
            f"{path}: unknown manifest format {suffix!r}; use .csv (with a header) or .jsonl"
        )


def _check_columns(path: Path, present: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing}; the manifest has {sorted(present)}"
        )


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_columns(path, list(reader.fieldnames or []), required)
        for row in reader:
            yield {k: row.get(k) for k in reader.fieldnames}


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a
    JSON object is a ManifestError naming it."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{number}: not a JSON object ({e})") from e
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{number}: expected a JSON object per line")
            yield number, row


def _read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[dict]:
    first = True
    for _, row in jsonl_objects(path):
        if first:
            _check_columns(path, list(row), required)
            first = False
        yield row


def read_parquet(
    path: str | os.PathLike, image_column: str = "image", caption_column: str = "caption"
) -> Iterator[dict]:
    """Rows `{"image": bytes | None, "caption": str | None, "path": str}` of a parquet file.

    The image column may hold raw bytes or a struct with a `bytes` field (the layout that
    Hugging Face `datasets` writes for its Image feature). Read in record batches, so large
    files are never held in memory at once. Needs pyarrow.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "reading parquet needs pyarrow: `pip install pyarrow` (or use a folder of images "
            "with a CSV / JSONL manifest)"
        ) from e
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such parquet file")
    parquet = pq.ParquetFile(path)
    _check_columns(path, parquet.schema_arrow.names, (image_column, caption_column))
    row_number = 0
    for batch in parquet.iter_batches(columns=[image_column, caption_column], batch_size=256):
        images = batch.column(image_column).to_pylist()
        captions = batch.column(caption_column).to_pylist()
        for image, caption in zip(images, captions):
            if isinstance(image, dict):
                image = image.get("bytes")
            yield {"image": image, "caption": caption, "path": f"{path.name}#{row_number}"}
            row_number += 1
