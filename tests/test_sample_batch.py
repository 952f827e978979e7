"""`sample.py batch` on the shipped shapes models (T2I and I2V at 2 steps, V2V and VFI left
out, so a video takes well under a second once compiled): one video + sidecar per (prompt,
seed) from .txt and .jsonl lists, each the video `sample.py "PROMPT" --seed S` makes; reruns
skip finished items, also after Ctrl-C; shards cover the list once; bad input is one line.

Pixels are compared as the commands hand them to the mp4 encoder (`encoded`): libx264 with its
default threads does not always encode the same frames to the same file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sample
from mv2_jax.commands import batch
from mv2_jax.commands.prompt_list import read_items, shard_items
from mv2_jax.media import read_video, to_uint8
from mv2_jax.studies.sidecar import read_arm, video_stem

ROOT = Path(__file__).resolve().parents[1]
RED, BLUE = "a red circle moving right", "The blue square moving up."
FAST = ["--t2i-steps", "2", "--i2v-steps", "2", "--skip", "v2v,vfi"]
KEYFRAMES = (8, 64, 64, 3)  # the shipped I2V's frames at its size, with V2V and VFI left out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> list[str]:
    """One compilation cache for the module: only the first run compiles."""
    return ["--compilation-cache", str(tmp_path_factory.mktemp("xla"))]


class Encoded(dict):
    """`{video file name: the uint8 frames [F,H,W,3] written to it}` of every video the
    commands wrote while recording."""

    def record(self, monkeypatch) -> Encoded:
        from mv2_jax.commands import video

        write = video.write_video

        def recording(frames, path, *args, **kwargs):
            staged = Path(path)  # `.STEM-partial-PID.mp4` until the commit renames it
            self[staged.name[1:].split("-partial-")[0] + staged.suffix] = to_uint8(frames, "")
            return write(frames, path, *args, **kwargs)

        monkeypatch.setattr(video, "write_video", recording)
        return self


@pytest.fixture
def encoded(monkeypatch) -> Encoded:
    return Encoded().record(monkeypatch)


@pytest.fixture
def no_loading(monkeypatch):
    """Input errors must stop before a model loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(batch, "build_cascade", refuse)


def write_prompts(path: Path, lines: list) -> Path:
    """A .txt of lines, or a .jsonl of objects (dicts) and raw lines (str)."""
    if path.suffix == ".jsonl":
        lines = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_batch(prompts: Path, out: Path, *extra: str) -> int:
    return sample.main(["batch", "--prompts", str(prompts), "--out", str(out), *FAST, *extra])


def finished(folder: Path) -> dict[str, int]:
    """Every file of `folder` with its modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def txt_arm(tmp_path_factory, cache):
    """Two prompts (plus a comment and a blank line) × --seeds 2, made once for the module."""
    folder = tmp_path_factory.mktemp("txt")
    prompts = write_prompts(folder / "prompts.txt", [RED, "# a comment", "", f"  {BLUE}  "])
    with pytest.MonkeyPatch.context() as monkeypatch:
        encoded = Encoded().record(monkeypatch)
        assert run_batch(prompts, folder / "arm", "--seeds", "2", *cache) == 0
    return prompts, folder / "arm", encoded


# ------------------------------------------------------------------------ outputs


@pytest.mark.slow  # the shipped cascade
def test_a_txt_list_makes_one_video_and_sidecar_per_prompt_and_seed(txt_arm):
    prompts, arm, encoded = txt_arm
    items = {(p, s) for p in (RED, BLUE) for s in (0, 1)}
    names = {f"{video_stem(p, s)}.{suffix}" for p, s in items for suffix in ("mp4", "json")}
    assert {p.name for p in arm.iterdir()} == names  # no partial or other files
    videos = read_arm(arm)
    assert set(videos) == items
    for (prompt, seed), video in videos.items():
        sidecar = video.sidecar
        assert video.video == arm.resolve() / f"{video_stem(prompt, seed)}.mp4"
        assert (sidecar["prompt"], sidecar["seed"], sidecar["negative_prompt"]) == (
            prompt,
            seed,
            None,
        )
        assert sidecar["video"] == video.video.name and sidecar["frames"] == KEYFRAMES[0]
        assert sidecar["prompt_file"] == str(prompts.resolve())
        assert sidecar["prompt_line"] == (1 if prompt == RED else 4)
        assert sidecar["cascade"] == {"skip": ["v2v", "vfi"], "num_frames": None, "factor": 3}
        stages = sidecar["stages"]
        assert [stages[s]["steps"] for s in ("t2i", "i2v")] == [2, 2]
        assert [stages[s]["seed"] for s in ("t2i", "i2v", "v2v")] == [seed] * 3
        assert Path(sidecar["models"]["i2v"]).is_dir() and sidecar["fps"] == 24.0
        assert sidecar["command"].startswith("python sample.py batch --prompts ")
        assert read_video(video.video)[0].shape == KEYFRAMES
    assert set(encoded) == {video.video.name for video in videos.values()}
    # two seeds of one prompt are two different videos
    first, second = (encoded[videos[RED, s].video.name].astype(int) for s in (0, 1))
    assert np.abs(first - second).mean() > 1.0


@pytest.mark.slow  # the shipped cascade
@pytest.mark.parametrize("item", [(RED, 0), (BLUE, 1)])  # the first video of the run, a later one
def test_an_item_is_the_video_sample_py_makes_with_its_seed(
    txt_arm, cache, tmp_path, encoded, item
):
    _, arm, made = txt_arm
    prompt, seed = item
    single = tmp_path / "single.mp4"
    assert sample.main([prompt, "--seed", str(seed), *FAST, *cache, "--out", str(single)]) == 0
    ours = read_arm(arm)[item]
    np.testing.assert_array_equal(made[ours.video.name], encoded["single.mp4"])
    assert made[ours.video.name].shape == KEYFRAMES and made[ours.video.name].std() > 10
    theirs = json.loads(single.with_suffix(".json").read_text())
    for key in ("prompt", "negative_prompt", "stages", "plan", "fps", "dtype"):
        assert ours.sidecar[key] == theirs[key], key


def test_a_rerun_skips_finished_items_and_refuses_other_settings(
    txt_arm, cache, no_loading, capsys
):
    prompts, arm, _ = txt_arm
    before = finished(arm)
    assert run_batch(prompts, arm, "--seeds", "2", *cache) == 0
    assert finished(arm) == before
    captured = capsys.readouterr()
    assert "4 (prompt, seed) items; 4 already in" in captured.err
    assert f"no new videos: all 4 are in {arm}" in captured.out
    # other settings for the same items: refused, nothing touched
    assert run_batch(prompts, arm, "--seeds", "2", "--i2v-steps", "3", *cache) == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith(f"sample.py batch: error: --out {arm}: 4 video(s) there were made ")
    assert "stages.i2v.steps is 2 there, 3 here" in line and "pass another --out" in line
    assert finished(arm) == before


@pytest.mark.slow  # the shipped cascade
def test_jsonl_items_keep_their_seed_and_negative_prompt(tmp_path, cache):
    prompts = write_prompts(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": RED, "seed": 7},
            "",
            {"prompt": BLUE, "negative": "a green triangle"},
        ],
    )
    arm = tmp_path / "arm"
    assert run_batch(prompts, arm, "--seeds", "2", "--negative-prompt", "blur", *cache) == 0
    videos = read_arm(arm)
    assert set(videos) == {(RED, 7), (BLUE, 0), (BLUE, 1)}
    assert videos[RED, 7].sidecar["negative_prompt"] == "blur"  # --negative-prompt's
    assert videos[BLUE, 1].sidecar["negative_prompt"] == "a green triangle"
    assert videos[RED, 7].sidecar["stages"]["i2v"]["seed"] == 7
    assert videos[BLUE, 0].sidecar["prompt_line"] == 3


# ------------------------------------------------------------------------ shards


def test_shards_cover_the_list_exactly_once(tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", [f"prompt {i}" for i in range(7)])
    items = read_items(str(prompts), seeds=3, first_seed=10)
    assert len(items) == 21 and {item.seed for item in items} == {10, 11, 12}
    for count in (1, 2, 5, 21, 30):
        shards = [shard_items(items, index, count) for index in range(count)]
        together = [item for shard in shards for item in shard]
        assert sorted(together, key=items.index) == items, count
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.slow  # the shipped cascade
def test_two_shard_runs_make_the_arm_together(txt_arm, cache, tmp_path, encoded):
    prompts, whole, made = txt_arm
    arm = tmp_path / "arm"
    for index in (0, 1):
        assert run_batch(prompts, arm, "--seeds", "2", "--shard", f"{index}/2", *cache) == 0
        items = set(read_arm(arm))
        assert len(items) == 2 * (index + 1)
    assert items == set(read_arm(whole))
    assert set(encoded) == set(made)  # same items, same pixels, whichever run made them
    for name, frames in encoded.items():
        np.testing.assert_array_equal(frames, made[name])


def test_processes_of_a_distributed_run_split_their_shard(monkeypatch, tmp_path):
    import jax

    prompts = write_prompts(tmp_path / "p.txt", [f"prompt {i}" for i in range(5)])
    argv = ["batch", "--prompts", str(prompts), "--out", str(tmp_path), "--seeds", "2"]
    flags = batch.settings(sample.build_parser().parse_args([*argv, "--shard", "1/2"]))
    items = read_items(str(prompts), 2)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    for process in range(3):
        monkeypatch.setattr(jax, "process_index", lambda p=process: p)
        mine, writes = batch.this_process_items(flags, items)
        assert mine == items[1::2][process::3] and writes
        meshed = batch.settings(
            sample.build_parser().parse_args([*argv, "--mesh", "data:-1", "--shard", "1/2"])
        )
        mine, writes = batch.this_process_items(meshed, items)
        assert mine == items[1::2] and writes == (process == 0)  # one program: process 0 writes


# ------------------------------------------------------------------------ Ctrl-C


@pytest.mark.slow  # the shipped cascade
def test_ctrl_c_mid_way_leaves_whole_items_only_and_a_rerun_finishes(tmp_path, cache):
    prompts = write_prompts(tmp_path / "p.txt", [RED, BLUE])
    arm = tmp_path / "arm"
    stale = arm / f".{video_stem(RED, 2)}-partial-1.mp4"  # what a SIGKILLed run leaves
    stale.parent.mkdir()
    stale.write_bytes(b"half a video")
    argv = ["batch", "--prompts", str(prompts), "--out", str(arm), "--seeds", "3", *FAST, *cache]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "sample.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as test_sample_run
    )
    first = process.stdout.readline()  # the first "wrote …": the next item is under way
    assert first.startswith("wrote "), process.communicate()[1]
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.rstrip().endswith("interrupted") and "Traceback" not in stderr
    kept = [p for p in arm.iterdir() if p != stale]
    assert not [p for p in kept if p.name.startswith(".")]  # no partial file of this run
    made = read_arm(arm)
    assert 1 <= len(made) < 6 and {p.with_suffix("").name for p in kept} == {
        video_stem(*key) for key in made
    }  # every video has its sidecar and every sidecar its video
    before = finished(arm)

    assert run_batch(prompts, arm, "--seeds", "3", *cache) == 0
    after = finished(arm)
    assert {name: after[name] for name in before if name in after} == {
        name: mtime for name, mtime in before.items() if name != stale.name
    }  # the finished ones untouched, the stale partial file gone
    assert len(read_arm(arm)) == 6 and len(after) == 12


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("name", "lines", "extra", "message"),
    [
        ("missing.txt", None, [], "--prompts {path}: no such file"),
        ("p.txt", ["# only a comment", ""], [], "--prompts {path} holds no prompts"),
        ("p.json", ["{}"], [], "--prompts {path}: give a .txt file"),
        ("p.jsonl", [{"prompt": RED}, '{"prompt": "a", '], [], "{path} line 2: not JSON"),
        ("p.jsonl", [{"prompt": RED, "sed": 3}], [], "line 1: unknown key 'sed'"),
        ("p.jsonl", [{"seed": 3}], [], 'line 1: needs "prompt", a non-empty string'),
        ("p.jsonl", [{"prompt": RED, "seed": 1.5}], [], 'line 1: "seed" is 1.5'),
        ("p.jsonl", ["[1, 2]"], [], "line 1: a JSON object a line"),
        (
            "p.jsonl",
            [{"prompt": RED, "seed": 1}, {"prompt": RED}],
            ["--seeds", "2"],
            f"line 2: {RED!r} with seed 1 again (line 1 has it)",
        ),
        ("p.txt", [RED], ["--shard", "3/2"], "--shard 3/2: i counts from 0 to n−1"),
        ("p.txt", [RED], ["--shard", "0/0"], "--shard 0/0: n is the number of shards"),
        ("p.txt", [RED], ["--shard", "1"], "argument --shard: '1': give i/n"),
        ("p.txt", [RED], ["--seeds", "0"], "--seeds 0: at least 1 seed a prompt"),
        ("p.txt", [RED], ["--i2v-steps", "0"], "--i2v-steps: at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path, capsys, no_loading, name, lines, extra, message
):
    path = tmp_path / name
    if lines is not None:
        write_prompts(path, lines)
    try:
        code = run_batch(path, tmp_path / "arm", *extra)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("sample.py batch: error: ") and message.format(path=path) in line
    assert not (tmp_path / "arm").exists()
