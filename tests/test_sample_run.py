"""sample.py as a newcomer meets it (issue 18): every flag checked before anything loads, each
problem one line (exit 2); progress lines that never leave the screen silent for long;
Ctrl-C at any moment ends with one line, exit 130 and no output file; the one-line config and
flag errors of train.py and evaluate.py."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mv2_jax.commands.interrupt import InterruptGuard
from mv2_jax.commands.progress import TIMING_PREFIX, Progress
from tests.test_sample_cli import no_loading, pipeline_folder, sample  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right"  # the README's first command


def usage_error(capsys, argv) -> list[str]:
    """The error lines of `sample.py ARGV`, which must stop with exit code 2."""
    try:
        code = sample.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    return capsys.readouterr().err.splitlines()


# ------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--t2i-guidance-scale", "nan"], "--t2i-guidance-scale: 'nan' is not a finite number"),
        (["--i2v-guidance-scale", "inf"], "--i2v-guidance-scale: 'inf' is not a finite number"),
        (["--strength=-inf"], "--strength: '-inf' is not a finite number"),
        (["--fps", "nan"], "--fps: 'nan' is not a finite number"),
        (["--noise-prior-strength", "nan"], "'nan' is not a finite number"),
        (["--reference-scale", "nan"], "'nan' is not a finite number"),
        (["--fps", "0"], "--fps 0.0: must be positive"),
        (["--factor", "0"], "--factor 0: must be an integer ≥ 1"),
        (["--vfi-batch-size", "0"], "--vfi-batch-size 0: needs at least 1"),
        (["--num-frames", "0"], "--num-frames 0: needs at least 1 frame"),
        (["--t2i-size", "100x64"], "--t2i-size height 100 is not a positive multiple of 8"),
        (["--seeds", "2"], "unrecognized arguments: --seeds 2; did you mean --seed?"),
    ],
)
def test_cascade_flags_are_checked_before_anything_loads(capsys, no_loading, extra, message):  # noqa: F811
    (line,) = usage_error(capsys, [PROMPT, *extra])
    assert line.startswith("sample.py cascade: error: ") and message in line, line


def test_output_paths_are_checked_before_anything_loads(capsys, no_loading, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "00000.png").write_bytes(b"x")
    cases = [
        ([PROMPT, "--out", f"{tmp_path}/file/video.mp4"], "file is a file, not a folder"),
        ([PROMPT, "--out", f"{tmp_path}/file/deeper/v.mp4"], "file is a file, not a folder"),
        ([PROMPT, "--out", f"{tmp_path}/folder.mp4"], "folder.mp4 is a folder; pass a file"),
        ([PROMPT, "--compilation-cache", f"{tmp_path}/file/xla"], "is a file, not a folder"),
        (
            ["vfi", "--input", str(tmp_path / "frames"), "--out", str(tmp_path / "frames")],
            "exists; frames go to a new or empty folder",
        ),
        (["vfi", "--input", str(tmp_path / "frames"), "--fps", "0"], "--fps 0.0: must be"),
    ]
    for argv, message in cases:
        (line,) = usage_error(capsys, argv)
        assert message in line, (argv, line)


def test_t2i_float_and_output_flags(capsys, no_loading, pipeline_folder, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("x")
    base = ["t2i", "--model", str(pipeline_folder), "--prompt", "a fox"]
    (line,) = usage_error(capsys, [*base, "--guidance-scale", "nan"])
    assert "--guidance-scale: 'nan' is not a finite number" in line
    (line,) = usage_error(capsys, [*base, "--out", f"{tmp_path}/file/out"])
    assert "is a file, not a folder" in line
    (line,) = usage_error(capsys, [*base, "--dtype", "fp64"])
    assert "--dtype: invalid choice: 'fp64'" in line


def run_script(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def error_lines(stderr: str) -> list[str]:
    """stderr without the line sample.py prints while slow imports run."""
    return [line for line in stderr.splitlines() if not line.startswith("starting: ")]


def test_a_flag_error_is_one_line_from_the_script(tmp_path):
    done = run_script("sample.py", PROMPT, "--t2i-guidance-scale", "nan")
    assert done.returncode == 2 and done.stdout == ""
    (line,) = error_lines(done.stderr)
    assert line.startswith("sample.py cascade: error: argument --t2i-guidance-scale")


def test_evaluate_flag_errors_are_one_line(tmp_path):
    done = run_script("evaluate.py", "--out", str(tmp_path / "eval"), "--exampels", "2")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "--exampels 2" in line and "did you mean --examples?" in line and "--help" in line
    done = run_script("evaluate.py", "--out", str(tmp_path / "eval"), "--i2v-steps", "x")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.no_such_key=1", "--config.no_such_key: no such key"),
        ("--config.batch_sise=4", "the nearest is --config.batch_size"),
        ("--config.data.heigth=4", "the nearest is --config.data.height"),
        ("--config.batch_size=abc", "--config.batch_size=abc"),
        ("--workdri=x", "Did you mean: workdir"),
    ],
)
def test_train_config_errors_are_one_line(tmp_path, override, expected):
    pytest.importorskip("grain")  # train.py needs the [train] extra
    argv = ["--config", "configs/t2i.py:tiny", "--workdir", str(tmp_path / "run"), override]
    done = run_script("train.py", *argv)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("train.py: error: ") and expected in line, line
    if "no such key" in line:
        assert "configs/common.py" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- progress


def test_progress_reminds_while_a_phase_runs_and_times_every_phase():
    stream = io.StringIO()
    progress = Progress(time.perf_counter(), timings=True, remind_every=0.2, stream=stream)
    progress("loading the T2I model m")
    time.sleep(0.5)
    progress("[1/2] t2i: text → key image, 64×64")
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "loading the T2I model m"
    assert lines[1].startswith("  … still loading the T2I model m (")
    timings = [line for line in lines if line.startswith(TIMING_PREFIX)]
    names = [line.split(" s  ", 1)[1] for line in timings]
    assert names == ["imports", "loading the T2I model m", "[1/2] t2i: text → key image, 64×64",
                     "total"]  # fmt: skip
    seconds = float(timings[1].split()[1])
    assert 0.45 < seconds < 2.0


def test_a_phase_with_its_own_bar_gets_no_reminders():
    stream = io.StringIO()
    progress = Progress(time.perf_counter(), remind_every=0.1, stream=stream)
    progress("evaluating", reminders=False)
    time.sleep(0.35)
    progress("writing")
    time.sleep(0.25)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["evaluating", "writing"] and lines[2].startswith("  … still writing")


# ------------------------------------------------------------------------- Ctrl-C


def test_the_guard_commits_staged_outputs_together_and_removes_the_rest(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the runner started us in background
    with InterruptGuard() as guard:
        video = guard.stage(tmp_path / "new" / "video.mp4")
        assert video.parent == tmp_path / "new" and video.suffix == ".mp4"
        video.write_text("v")
        guard.stage(tmp_path / "new" / "video.json").write_text("{}")
        assert not (tmp_path / "new" / "video.mp4").exists()
        guard.commit()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["video.json", "video.mp4"]
    with InterruptGuard() as guard:
        guard.stage(tmp_path / "other" / "x.gif").write_text("x")
    assert not (tmp_path / "other").exists()  # not committed: gone, and its folder too
    assert signal.getsignal(signal.SIGINT) is before


def interrupt_at(argv: list[str], marker: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `sample.py ARGV`, send SIGINT once a stderr line starts with `marker` (or, for a
    number, that many seconds after the start) and wait for it to end."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "sample.py"), *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a shell's background job (e.g. `ci/run &`) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    if isinstance(marker, float):
        time.sleep(marker)
    else:
        for line in process.stderr:
            seen.append(line)
            if line.startswith(marker):
                break
        else:
            pytest.fail(f"no line starting {marker!r}: {''.join(seen)}")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, "".join(seen) + stderr)


@pytest.mark.parametrize(
    "marker",
    [
        0.3,  # importing jax
        "loading the I2V model",
        "compiling or restoring the compiled programs",
    ],
)
def test_ctrl_c_during_the_cascade_ends_with_one_line_and_no_video(tmp_path, marker):
    argv = [PROMPT, "--out", "out/video.mp4", "--compilation-cache", str(tmp_path / "xla")]
    done = interrupt_at(argv, marker, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines()[-1] == "interrupted"
    assert "Traceback" not in done.stderr and done.stderr.count("interrupted") == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    import numpy as np

    from mv2_jax.media import write_video

    frames = np.random.default_rng(0).random((48, 64, 64, 3), dtype=np.float32)
    return write_video(frames, tmp_path_factory.mktemp("vfi") / "in.mp4", fps=8)


def test_ctrl_c_while_a_program_runs_ends_with_one_line_and_no_video(tmp_path, long_input):
    argv = ["vfi", "--input", str(long_input), "--factor", "4", "--batch-size", "1"]
    argv += ["--out", "frames.mp4", "--compilation-cache", "none"]
    done = interrupt_at(argv, "interpolating", cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    # (tqdm's bar has no newline of its own: the line ends with the word)
    assert done.stderr.splitlines()[-1].endswith("interrupted") and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # neither frames.mp4 nor a staged partial file
