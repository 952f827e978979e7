"""mv2_jax.data.builders: what a record holds after a build (bytes unchanged, captions, fps),
build-time skip counts, image datasets from a folder or parquet, and clear errors."""

from __future__ import annotations

import json

import pytest

from mv2_jax.data.builders import build_image_dataset, build_video_dataset, open_dataset
from mv2_jax.data.manifest import ManifestError
from tests.data.conftest import image_bytes


def test_video_round_trip(video_folder, video_data):
    source, metadata = open_dataset(video_data, "video_text", "build it")
    assert len(source) == 8
    assert metadata == {"skipped": {"missing_file": 1, "empty_caption": 1}, "written": 8}
    records = {r["path"].decode(): r for r in (source[i] for i in range(len(source)))}
    assert sorted(records) == [f"v{i}.mp4" for i in range(8)]
    for i in range(8):
        record = records[f"v{i}.mp4"]
        assert record["video"] == (video_folder / f"v{i}.mp4").read_bytes()
        assert record["caption"].decode() == f"video {i}, flat"
        assert record["fps"] == (0.0 if i == 0 else 8.0)  # empty fps cell: unknown
    on_disk = json.loads((video_data / "video_text" / "1.0.0" / "metadata.json").read_text())
    assert on_disk["skipped"] == {"missing_file": 1, "empty_caption": 1}


def test_image_round_trip_from_folder(image_folder, image_data):
    source, metadata = open_dataset(image_data / "image_text" / "1.0.0", "image_text", "x")
    assert metadata == {"skipped": {}, "written": 6}
    by_caption = {source[i]["caption"].decode(): source[i]["image"] for i in range(6)}
    assert by_caption == {f"image {i}": image_bytes(i) for i in range(6)}


def test_image_dataset_from_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    images = [{"bytes": image_bytes(i), "path": None} for i in range(3)] + [None]
    table = pa.table({"image": images, "caption": ["red", "", "blue", "lost"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    folder = build_image_dataset(tmp_path / "data", parquet=tmp_path / "pairs.parquet")
    source, metadata = open_dataset(folder, "image_text", "x")
    assert metadata["skipped"] == {"empty_caption": 1, "missing_image": 1}
    by_caption = {source[i]["caption"].decode(): source[i]["image"] for i in range(len(source))}
    assert by_caption == {"red": image_bytes(0), "blue": image_bytes(2)}


def test_build_errors(tmp_path, video_folder):
    manifest = video_folder / "manifest.csv"
    with pytest.raises(FileNotFoundError, match="no such videos folder"):
        build_video_dataset(tmp_path / "nowhere", manifest, tmp_path / "d")
    with pytest.raises(ManifestError, match="no such manifest"):
        build_video_dataset(video_folder, tmp_path / "none.csv", tmp_path / "d")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\nv0.mp4,hello\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['path', 'caption'\]"):
        build_video_dataset(video_folder, bad, tmp_path / "d")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"path": "v0.mp4"}\n')
    with pytest.raises(ManifestError, match=r"\['caption'\]"):
        build_video_dataset(video_folder, jsonl, tmp_path / "d")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        build_video_dataset(video_folder, video_folder / "v0.mp4", tmp_path / "d")
    with pytest.raises(ValueError, match="either"):
        build_image_dataset(tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing written by a failed call


def test_rebuild_needs_overwrite(tmp_path, image_folder):
    manifest = image_folder / "captions.jsonl"
    build_image_dataset(tmp_path, images_dir=image_folder, manifest=manifest)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_image_dataset(tmp_path, images_dir=image_folder, manifest=manifest)
    lines = manifest.read_text().splitlines()[:2]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(lines) + "\n")
    build_image_dataset(tmp_path, images_dir=image_folder, manifest=small, overwrite=True)
    assert len(open_dataset(tmp_path, "image_text", "x")[0]) == 2


def test_open_dataset_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"build one with `python -m mv2_jax\.data\.build"):
        open_dataset(tmp_path, "video_text", "python -m mv2_jax.data.build video ...")
