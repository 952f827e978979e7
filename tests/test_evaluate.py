"""The shapes-world evaluation: its scores are perfect on the world's own renders and catch a
wrong colour, a reversed motion, a shifted first frame and a jittery track; VFI PSNR is
highest for the true in-between frames and lower for a linear blend; prompt selection is
fixed, balanced and always holds held-out combinations; a rerun skips finished prompts and
refuses other settings; `evaluate.py` checks its flags, and runs end to end — on the world
standing in for the cascade (fast), and on tiny random models (slow)."""

import json

import numpy as np
import pytest

import evaluate
from mv2_jax.commands import stages as stage_flags
from mv2_jax.data.shapes import COLOURS, HELDOUT, MOTIONS, SHAPES, Background, ShapeClip, render
from mv2_jax.evaluation.results import ResultsLog, SettingsMismatch, markdown, write_reports
from mv2_jax.evaluation.run import Sample, ablate, evaluate_samples, evaluate_vfi
from mv2_jax.evaluation.shapes import (
    PSNR_CAP,
    Combination,
    first_frame_psnr,
    interpolation_clips,
    score_interpolation,
    score_sample,
    select_prompts,
    track_smoothness,
)
from mv2_jax.pipelines.cascade import CascadeOutput, CascadePlan, StageSettings

SIZE, KEYFRAMES, FACTOR = 48, 4, 3
_STARTS = {"right": (0.3, 0.5), "left": (0.7, 0.5), "down": (0.5, 0.3), "up": (0.5, 0.7)}


def world_clip(c: Combination, colour: str | None = None) -> ShapeClip:
    """The clip a perfect cascade would make for `c` (optionally in another colour)."""
    return ShapeClip(
        c.shape,
        colour or c.colour,
        c.motion,
        size=0.3,
        start=_STARTS[c.motion],
        speed=0.4 / (KEYFRAMES - 1),
        background=Background(0.05, (0.0, 0.01, 0.0)),
    )


def world_sample(c: Combination, seed_index: int = 0) -> Sample:
    clip = world_clip(c)
    return Sample(
        key_image=render(clip, SIZE, [0])[0],
        keyframes=render(clip, SIZE, np.arange(KEYFRAMES)),
        frames=render(clip, SIZE, np.arange((KEYFRAMES - 1) * FACTOR + 1) / FACTOR),
    )


PICKS = [
    Combination(*p)
    for p in (
        ("magenta", "triangle", "up"),
        ("red", "circle", "right"),
        ("cyan", "square", "left"),
        ("white", "triangle", "down"),
    )
]


# ----------------------------------------------------------------------------- the metrics


@pytest.mark.parametrize("c", PICKS, ids=lambda c: c.prompt)
def test_the_worlds_own_renders_score_perfectly(c):
    made = world_sample(c)
    scores = score_sample(c, made.key_image, made.keyframes, made.frames)
    for key in ("key_colour", "key_shape", "colour", "shape", "motion", "consistent"):
        assert scores[key] is True, (key, scores)
    assert scores["first_frame_psnr"] == PSNR_CAP
    assert scores["found_fraction"] == 1.0
    assert scores["track_rms_px"] < 0.25 and scores["track_rms_fraction"] < 0.25 / SIZE


def test_scores_catch_a_wrong_colour_a_reversed_motion_and_a_shifted_first_frame():
    c = Combination("red", "square", "right")
    made = world_sample(c)
    green = render(world_clip(c, colour="green"), SIZE, np.arange(KEYFRAMES))
    wrong = score_sample(c, green[0], green, green)
    assert not wrong["colour"] and not wrong["key_colour"] and wrong["shape"] and wrong["motion"]

    backwards = score_sample(c, made.key_image, made.keyframes, made.frames[::-1])
    assert not backwards["motion"] and backwards["video_read"]["motion"] == "left"
    assert backwards["colour"] and backwards["shape"]

    shifted = made.keyframes.copy()
    shifted[0] = np.roll(shifted[0], 3, axis=1)
    assert first_frame_psnr(shifted, made.key_image) < 25
    # a key image of another size is brought to the keyframes' size first
    bigger = render(world_clip(c), 2 * SIZE, [0])[0]
    assert 28 < first_frame_psnr(made.keyframes, bigger) < PSNR_CAP


def test_smoothness_grows_with_a_jittery_track_and_counts_missing_frames():
    line = np.stack([np.linspace(0.2, 0.8, 10), np.full(10, 0.5)], axis=1)
    assert track_smoothness(line, 64, 64)["track_rms_px"] < 1e-9
    jitter = line.copy()
    jitter[1::2, 1] += 2 / 64  # every other frame 2 px lower: RMS off the best line ≈ 1 px
    smooth = track_smoothness(jitter, 64, 64)
    assert smooth["track_rms_px"] == pytest.approx(1.0, abs=0.05)
    assert smooth["track_rms_fraction"] == pytest.approx(1 / 64, rel=0.05)
    jitter[:8] = np.nan
    sparse = track_smoothness(jitter, 64, 64)
    assert sparse["found_fraction"] == 0.2 and sparse["track_rms_px"] is None


def test_vfi_psnr_of_the_true_frames_is_capped_and_of_a_linear_blend_lower(tmp_path):
    clip = interpolation_clips(2, KEYFRAMES)[1]
    assert (clip.colour, clip.shape) in HELDOUT  # odd clips are held-out pairs
    times = np.arange((KEYFRAMES - 1) * FACTOR + 1) / FACTOR
    perfect = score_interpolation(clip, render(clip, SIZE, times), FACTOR)
    assert perfect["vfi_psnr"] == PSNR_CAP and perfect["heldout"]
    assert perfect["blend_psnr"] < 40

    def blend(videos):  # the baseline as an interpolator: its score equals the baseline's
        out = np.repeat(videos, FACTOR, axis=1)[:, : (KEYFRAMES - 1) * FACTOR + 1].copy()
        for j in range(1, FACTOR):
            t = j / FACTOR
            out[:, j::FACTOR] = (1 - t) * videos[:, :-1] + t * videos[:, 1:]
        return out

    log = ResultsLog(tmp_path, {"a": 1})
    sizes = {"num_frames": KEYFRAMES, "size": (SIZE, SIZE), "factor": FACTOR}
    records = evaluate_vfi(blend, log, clips=2, sizes=sizes)
    assert [r["heldout"] for r in records] == [False, True]
    for r in records:
        assert r["vfi_psnr"] == pytest.approx(r["blend_psnr"], abs=1e-3) and r["vfi_psnr"] < 40
    assert evaluate_vfi(None, log, clips=2, sizes=lambda: 1 / 0) == records  # nothing redone


# ------------------------------------------------------------------------- the prompts


def test_prompt_sets_and_counts_are_fixed_balanced_and_hold_heldout_combinations():
    every = select_prompts("all")
    assert len(every) == len(set(every)) == len(COLOURS) * len(SHAPES) * len(MOTIONS) == 84
    assert len(select_prompts("heldout")) == 12 and all(c.heldout for c in every[:12])
    assert not any(c.heldout for c in select_prompts("train"))
    for n in (1, 2, 5, 12, 30, 84):
        chosen = select_prompts(n)
        assert len(set(chosen)) == n and chosen == select_prompts(n)
        assert sum(c.heldout for c in chosen) == min(12, -(-n // 4))
    twelve = select_prompts(12)
    assert {c.motion for c in twelve} == set(MOTIONS)
    assert [sum(c.motion == m for c in twelve) for m in MOTIONS] == [3, 3, 3, 3]
    assert [sum(c.shape == s for c in twelve) for s in SHAPES] == [4, 4, 4]
    assert every[0].prompt == "a yellow circle moving left"
    for bad in (0, 85, "some"):
        with pytest.raises(ValueError, match="prompts"):
            select_prompts(bad)


# ------------------------------------------------------------------ resume and reports


def test_a_rerun_skips_finished_prompts_and_refuses_other_settings(tmp_path):
    calls = []

    def make(c, seed_index):
        calls.append((c.prompt, seed_index))
        return world_sample(c)

    settings = {"models": {"t2i": "x"}, "stage_settings": {"t2i": {"steps": 2}}}
    first = evaluate_samples(make, PICKS[:2], 1, ResultsLog(tmp_path, settings), progress=False)
    assert len(calls) == 2 and [r["prompt"] for r in first] == [c.prompt for c in PICKS[:2]]
    (tmp_path / "results.jsonl").open("a").write('{"kind": "sample", "key": "cut off')
    again = evaluate_samples(
        make, PICKS[:3], 2, ResultsLog(tmp_path, settings), examples=2, progress=False
    )
    assert len(again) == 6 and len(calls) == 2 + 4  # only the new prompt and seed ran
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["key"] for line in lines)  # cut line gone
    assert again[::2][:2] == first and all(r["colour"] and r["motion"] for r in again)
    assert (tmp_path / again[-2]["file"]).is_file()  # the last prompt, seed 0, was an example
    with pytest.raises(SettingsMismatch, match=r"stage_settings\.t2i\.steps: 2 there, 3 now"):
        ResultsLog(tmp_path, {**settings, "stage_settings": {"t2i": {"steps": 3}}})
    ResultsLog(tmp_path / "new", {"a": 1})  # a run that stopped before its first record
    assert ResultsLog(tmp_path / "new", {"a": 2}).settings == {"a": 2}  # is not held to it

    results = write_reports(tmp_path, settings, again, [])
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == results["summary"]
    assert results["summary"]["heldout"]["count"] == 4 and results["summary"]["all"]["count"] == 6
    table = markdown(results)
    assert "| video: colour accuracy | 100.0% | 100.0% | 100.0% | ≥ 95% |" in table
    assert "VFI" not in table  # no clips measured, no table


def test_ablations_switch_off_i2v_conditionings_only():
    settings = {
        "i2v": StageSettings(extra={"reference_scale": 1.0, "noise_prior": "mean_shift"}),
        "v2v": StageSettings(extra={"reference_scale": 1.0}),
    }
    out = ablate(settings, ["appearance", "noise-prior"])
    assert out["i2v"].extra == {"reference_scale": None, "noise_prior": "none"}
    assert out["v2v"] is settings["v2v"] and settings["i2v"].extra["reference_scale"] == 1.0
    with pytest.raises(ValueError, match="controlnet"):
        ablate(settings, ["attention"])


# ------------------------------------------------------------------------ command line


def test_help_explains_every_flag():
    parser = evaluate.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {
        "--prompts",
        "--seeds",
        "--out",
        "--stages",
        "--ablate",
        "--t2i-model",
        "--i2v-steps",
        "--reference-scale",
        "--noise-prior",
        "--i2v-lora",
    } <= flags
    assert not {"--image", "--save-intermediates"} & flags


def test_loras_are_part_of_the_settings_a_rerun_must_match(tmp_path, shipped):
    from mv2_jax.cli.evaluate import settings, settings_of

    lora = tmp_path / "motion.safetensors"
    lora.write_bytes(b"")
    parser = evaluate.build_parser()

    def recorded(*extra):
        flags = settings(parser.parse_args(["--out", str(tmp_path), *extra]))
        return settings_of(flags, stage_flags.stage_settings(flags.cascade))

    assert "loras" not in recorded()  # folders made before LoRAs keep matching
    assert recorded("--i2v-lora", f"{lora}:0.5")["loras"] == {"i2v": [f"{lora}:0.5"]}


def test_flag_problems_are_reported_together(tmp_path, capsys, shipped):
    wrong = ["--prompts", "99", "--seeds", "0", "--skip", "t2i", "--t2i-steps", "0"]
    code = evaluate.main(["--out", str(tmp_path), *wrong])
    err = capsys.readouterr().err
    assert code == 2
    for part in (
        "--prompts 99",
        "--seeds: at least 1",
        "--skip t2i",
        "--i2v-model: needed",
        "--t2i-steps: at least 1",
    ):
        assert part in err, err
    assert evaluate.main(["--out", str(tmp_path), "--stages", "t2i", "--ablate", "appearance"]) == 2
    err = capsys.readouterr().err
    assert "--t2i-model: needed" in err and "--ablate: I2V ablations need --stages cascade" in err


class WorldCascade:
    """Stands in for a loaded cascade: what a perfect one makes is the world's own clip."""

    def __init__(self):
        self.interpolator = lambda videos, factor, batch_size: _world_interpolate(videos)
        self.report = print

    def plan(self, **kwargs):
        return CascadePlan((SIZE, SIZE), (SIZE, SIZE), KEYFRAMES, (SIZE, SIZE), FACTOR)

    def __call__(self, prompt, negative_prompt=None, **kwargs):
        from mv2_jax.data.shapes import parse_prompt

        made = world_sample(Combination(*parse_prompt(prompt)))
        return CascadeOutput(made.key_image, made.keyframes, made.keyframes, made.frames)


def _world_interpolate(videos):
    """A perfect interpolator for `interpolation_clips`' clips: renders them at the new times."""
    clips = interpolation_clips(len(videos), KEYFRAMES)
    times = np.arange((KEYFRAMES - 1) * FACTOR + 1) / FACTOR
    return np.stack([render(clip, SIZE, times) for clip in clips])


@pytest.fixture
def model_folders(tmp_path):
    folders = []
    for stage in ("t2i", "i2v"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "model_index.json").write_text("{}")
        folders += [f"--{stage}-model", str(tmp_path / stage)]
    return folders


def test_the_command_runs_end_to_end_and_resumes(monkeypatch, tmp_path, model_folders, capsys):
    built = []
    monkeypatch.setattr(
        stage_flags, "build_cascade", lambda *args: built.append(1) or WorldCascade()
    )
    out = tmp_path / "eval"
    run = "--prompts 2 --vfi-clips 2 --examples 1 --example-format gif --compilation-cache none"
    argv = [*model_folders, "--out", str(out), *run.split()]
    assert evaluate.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [s["heldout"] for s in results["samples"]] == [True, False]
    summary = results["summary"]["all"]
    assert summary["colour"] == summary["shape"] == summary["motion"] == 1.0
    assert results["vfi_summary"]["all"]["vfi_psnr"] == PSNR_CAP
    assert results["settings"]["models"]["vfi"] == "shipped"
    md = (out / "results.md").read_text()
    assert "| prompts × seeds | 1 | 1 | 2 |" in md and "VFI: new frames" in md
    assert len(list((out / "samples").glob("*.gif"))) == 1
    assert "results.md" in capsys.readouterr().out

    assert evaluate.main(argv) == 0 and len(built) == 1  # all finished: nothing loaded
    assert evaluate.main([*argv[:-2], "--seed", "5", "--compilation-cache", "none"]) == 2
    assert "holds results made with other settings" in capsys.readouterr().err


def test_key_images_alone(monkeypatch, tmp_path, model_folders):
    import mv2_jax

    class WorldImages:  # a perfect T2I pipeline
        default_size = SIZE

        def __call__(self, prompt, negative_prompt=None, progress=False, **kwargs):
            from mv2_jax.data.shapes import parse_prompt

            assert kwargs["height"] == kwargs["width"] == SIZE and kwargs["seed"] == 7
            return world_sample(Combination(*parse_prompt(prompt))).key_image[None]

    monkeypatch.setattr(mv2_jax, "load_pipeline", lambda path, dtype: WorldImages())
    out = tmp_path / "eval"
    run = ["--stages", "t2i", "--prompts", "heldout", "--seed", "7", "--examples", "2"]
    assert evaluate.main([*model_folders[:2], "--out", str(out), *run]) == 0
    results = json.loads((out / "results.json").read_text())
    heldout = results["summary"]["heldout"]
    assert (heldout["count"], heldout["key_colour"], heldout["key_shape"]) == (12, 1.0, 1.0)
    assert {k for k, v in heldout.items() if v is None} == {
        "colour", "shape", "motion", "consistent", "first_frame_psnr", "travel_fraction",
        "track_rms_px", "track_rms_fraction", "found_fraction",
    }  # fmt: skip
    assert results["vfi"] == [] and "video:" not in (out / "results.md").read_text()
    assert len(list((out / "samples").glob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.torch
def test_the_command_runs_on_tiny_random_models(tmp_path):
    pytest.importorskip("diffusers")
    from tests.pipelines.tiny import tiny_animatediff_pipeline
    from tests.weights.tiny_models import tiny_pipeline

    tiny_pipeline(tmp_path / "t2i")
    tiny_animatediff_pipeline(tmp_path / "i2v")
    out = tmp_path / "eval"
    models = ["--t2i-model", str(tmp_path / "t2i"), "--i2v-model", str(tmp_path / "i2v")]
    # V2V and I2V's reference attention left out: their compiles would double the test's time
    small = "--t2i-size 16 --i2v-size 16 --num-frames 3 --t2i-steps 1 --i2v-steps 1 --skip v2v"
    small += " --ablate appearance"
    run = "--prompts 1 --vfi-clips 1 --examples 1 --compilation-cache none"
    argv = [*models, "--out", str(out), *small.split(), *run.split()]
    assert evaluate.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    (sample,) = results["samples"]
    assert sample["heldout"] and sample["video_read"]["frames"] == 7
    assert results["settings"]["models"].keys() == {"t2i", "i2v", "vfi"}
    assert results["settings"]["stage_settings"]["i2v"]["extra"]["reference_scale"] is None
    assert 0 < sample["first_frame_psnr"] < PSNR_CAP
    (clip,) = results["vfi"]
    assert 10 < clip["blend_psnr"] < 60 and clip["vfi_psnr"] > 5
    assert "| metric | held-out | training | all | target |" in (out / "results.md").read_text()
