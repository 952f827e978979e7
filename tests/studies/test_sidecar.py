"""`read_arm`: an arm folder's videos by (prompt, seed), every malformed folder refused with
the file and the fix; `write_sidecar` for videos another system made; stable file stems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mv2_jax.studies.sidecar import ArmVideo, read_arm, video_stem, write_sidecar


def video(folder: Path, name: str) -> Path:
    """A stand-in video file (read_arm only checks that it exists)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return path


def sidecar(folder: Path, name: str, record) -> Path:
    path = folder / name
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def test_an_arm_reads_back_by_prompt_and_seed(tmp_path):
    write_sidecar(video(tmp_path, "a.mp4"), "a red circle", 0, steps=30)
    write_sidecar(video(tmp_path, "b.mp4"), "a red circle", 1, negative_prompt="blur")
    sidecar(tmp_path, "study.json", {"name": "not an item"})  # no prompt + seed: passed over
    sidecar(tmp_path, ".c-partial-12.json", {"prompt": "x", "seed": 0, "video": "gone.mp4"})
    arm = read_arm(tmp_path)
    assert list(arm) == [("a red circle", 0), ("a red circle", 1)]
    first = arm["a red circle", 0]
    assert first == ArmVideo(
        prompt="a red circle",
        seed=0,
        video=(tmp_path / "a.mp4").resolve(),
        sidecar={
            "prompt": "a red circle",
            "seed": 0,
            "negative_prompt": None,
            "video": "a.mp4",
            "steps": 30,
        },
    )
    assert first.video.is_absolute() and arm["a red circle", 1].sidecar["negative_prompt"] == "blur"
    assert not (tmp_path / f".a-partial-{os.getpid()}.json").exists()  # renamed into place


def test_an_empty_folder_is_an_empty_arm_and_a_missing_one_an_error(tmp_path):
    assert read_arm(tmp_path) == {}
    with pytest.raises(ValueError, match=r"arm folder .*nope: no such folder; pass the --out"):
        read_arm(tmp_path / "nope")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("{not json", r"s\.json: not a readable JSON sidecar .*; fix it or remove it"),
        ({"prompt": "p", "seed": 0}, r's\.json: no "video" entry; add "video": "s\.mp4"'),
        ({"prompt": "p", "seed": 0, "video": "x.mp4"}, r"its video x\.mp4 is missing .*resumes"),
        ({"prompt": "p", "seed": "0", "video": "v.mp4"}, r"\"seed\" is '0'; write the seed as"),
        ({"prompt": "p", "seed": True, "video": "v.mp4"}, r'"seed" is True'),
        ({"prompt": ["p"], "seed": 0, "video": "v.mp4"}, r'"prompt" is \[\'p\'\]; write the'),
        ("[1, 2]", r"s\.json: a sidecar holds one JSON object"),
    ],
)
def test_a_malformed_sidecar_is_refused_naming_the_file(tmp_path, record, message):
    video(tmp_path, "v.mp4")
    path = sidecar(tmp_path, "s.json", record)
    with pytest.raises(ValueError, match=message) as error:
        read_arm(tmp_path)
    assert str(error.value).startswith(str(path.resolve()))


def test_two_sidecars_of_one_item_are_refused_naming_both(tmp_path):
    write_sidecar(video(tmp_path, "a.mp4"), "a red circle", 3)
    write_sidecar(video(tmp_path, "b.mp4"), "a red circle", 3)
    with pytest.raises(ValueError) as error:
        read_arm(tmp_path)
    text = str(error.value)
    assert text.startswith(f"{(tmp_path / 'a.json').resolve()} and {(tmp_path / 'b.json')}")
    assert "both hold prompt 'a red circle' seed 3; one video per (prompt, seed)" in text


def test_a_video_elsewhere_is_found_relative_to_its_sidecar(tmp_path):
    elsewhere = video(tmp_path / "videos", "clip.mp4")
    arm = tmp_path / "arm"
    arm.mkdir()
    sidecar(arm, "clip.json", {"prompt": "p", "seed": 5, "video": "../videos/clip.mp4"})
    assert read_arm(arm)["p", 5].video == elsewhere.resolve()


def test_write_sidecar_refuses_a_seed_that_is_not_an_integer(tmp_path):
    with pytest.raises(ValueError, match=r"seed 1\.0: give an integer"):
        write_sidecar(video(tmp_path, "a.mp4"), "p", 1.0)


def test_stems_are_stable_distinct_and_safe_file_names():
    stem = video_stem("A red circle, moving right!", 0)
    assert stem.startswith("a-red-circle-moving-right-s0-") and len(stem.rsplit("-", 1)[1]) == 10
    assert video_stem("A red circle, moving right!", 0) == stem
    others = {
        video_stem(p, s) for p in ("a red circle moving right", "a red circle") for s in (0, 1)
    }
    assert len(others | {stem}) == 5
    assert video_stem("日本語 ../..", 2).startswith("prompt-s2-")
    assert len(video_stem("word " * 100, 0)) < 70


def test_the_module_needs_no_jax():
    code = "import sys, mv2_jax.studies.sidecar; print('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
