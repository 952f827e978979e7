"""`python -m mv2_jax.data.build`: help, a successful build with its summary line, and one-line
usage errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mv2_jax.data.build import main


def test_help_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "mv2_jax.data.build", "video", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--videos-dir", "--manifest", "--data-dir", "--overwrite", "fps"):
        assert flag in result.stdout


def test_build_video_and_image(video_folder, image_folder, tmp_path, capsys):
    argv = ["--videos-dir", str(video_folder), "--manifest", str(video_folder / "manifest.csv")]
    assert main(["video", *argv, "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wrote 8 examples" in out and "'missing_file': 1" in out
    assert (tmp_path / "video_text" / "1.0.0" / "dataset_info.json").is_file()
    assert main(["video", *argv, "--data-dir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    images = ["--images-dir", str(image_folder), "--manifest", str(image_folder / "captions.jsonl")]
    assert main(["image", *images, "--data-dir", str(tmp_path)]) == 0
    assert "wrote 6 examples" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["video", "--videos-dir", "{tmp}/nowhere", "--manifest", "{videos}/manifest.csv"],
         "nowhere: no such videos folder"),
        (["video", "--videos-dir", "{videos}", "--manifest", "{tmp}/missing.csv"],
         "missing.csv: no such manifest file"),
        (["video", "--videos-dir", "{videos}", "--manifest", "{tmp}/cols.csv"],
         "missing column(s) ['caption']"),
        (["image", "--manifest", "{videos}/manifest.csv"], "needs --images-dir"),
        (["image", "--images-dir", "{videos}"], "either --images-dir and --manifest, or --parquet"),
        (["image", "--parquet", "{tmp}/none.parquet"], "none.parquet: no such parquet file"),
    ],
)  # fmt: skip
def test_usage_errors(args, message, video_folder, tmp_path, capsys):
    (tmp_path / "cols.csv").write_text("path,text\nv0.mp4,hi\n")
    argv = [a.format(tmp=tmp_path, videos=video_folder) for a in args]
    assert main([*argv, "--data-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_required_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["video", "--data-dir", "x"])
    assert e.value.code == 2
    assert "--videos-dir" in capsys.readouterr().err
