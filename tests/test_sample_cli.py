"""sample.py: help text, every usage error (exit code 2, before anything is loaded), what a run
writes (PNGs + JSON sidecars), and an end-to-end run on a tiny random SD pipeline folder."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import mv2_jax
from mv2_jax.diffusion.schedulers import SCHEDULERS

SCRIPT = Path(__file__).resolve().parents[1] / "sample.py"
FLAGS = (
    "--model",
    "--prompt",
    "--negative-prompt",
    "--steps",
    "--guidance-scale",
    "--scheduler",
    "--seed",
    "--height",
    "--width",
    "--lora",
    "--num-images",
    "--dtype",
    "--mesh",
    "--out",
)


def load_sample():
    spec = importlib.util.spec_from_file_location("sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sample = load_sample()


def run_help(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--help"], capture_output=True, text=True, check=True
    )
    return done.stdout


# ---------------------------------------------------------------------------- help


def test_help_lists_subcommands_and_the_cascade():
    text = run_help()
    for command in ("cascade", "t2i", "t2v", "i2v", "v2v", "vfi"):
        assert f"    {command} " in text
    assert 'python sample.py "a prompt"' in text


def test_t2i_help_explains_every_flag():
    text = run_help("t2i")
    for flag in FLAGS:
        assert flag in text
    for name in SCHEDULERS:
        assert name in text
    assert "multiple of 8" in text and "data:2,fsdp:4" in text


# ---------------------------------------------------------------------------- usage errors


@pytest.fixture
def pipeline_folder(tmp_path) -> Path:
    """Just enough of a pipeline folder for validation (nothing is loaded in these tests)."""
    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Test"}))
    (folder / "unet" / "config.json").write_text("{}")
    return folder


@pytest.fixture
def no_loading(monkeypatch):
    """Usage errors must stop before the pipeline is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("load_pipeline called")

    monkeypatch.setitem(vars(mv2_jax), "load_pipeline", refuse)


def t2i(model, *extra, out=None):
    return ["t2i", "--model", str(model), "--prompt", "a fox", *extra] + (
        ["--out", str(out)] if out else []
    )


def error_of(capsys, argv) -> str:
    assert sample.main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing", r"--model .*missing: no such folder; pass a pipeline folder"),
        ("v1-5.safetensors", r"single-file checkpoint; convert it first with `python convert"),
        ("notes.txt", r"notes\.txt is a file, not a folder"),
        ("sd/unet", r"is a component folder .*pass the pipeline folder above it \(.*sd\)"),
        ("empty", r"empty has no model_index\.json; pass a pipeline folder"),
        (".", r"has no model_index\.json but .*sd has; pass that"),
    ],
)
def test_wrong_model_folder(capsys, no_loading, tmp_path, pipeline_folder, model, message):
    (tmp_path / "v1-5.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    err = error_of(capsys, t2i(tmp_path / model))
    assert err.startswith("sample.py t2i: error: --model")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--height", "100"], "--height 100 is not a positive multiple of 8; try 96 or 104"),
        (["--width", "0"], "--width 0 is not a positive multiple of 8; try 8"),
        (["--scheduler", "PLMS"], "--scheduler 'plms' is unknown; choose one of ddpm, ddim, "),
        (["--steps", "0"], "--steps 0: sampling needs at least 1 step"),
        (["--num-images", "0"], "--num-images 0: needs at least 1 image per prompt"),
        (
            ["--negative-prompt", "a", "--negative-prompt", "b"],
            "2 --negative-prompt for 1 --prompt; give one for all prompts or one per prompt",
        ),
        (["--mesh", "data:3"], "make the sizes multiply to 8"),
        (["--mesh", "data:2,pipeline:4"], "unknown axes ['pipeline']"),
        (["--mesh", "data"], "'data' is not `axis:size`"),
    ],
)
def test_usage_errors(capsys, no_loading, pipeline_folder, extra, message):
    err = error_of(capsys, t2i(pipeline_folder, *extra))
    assert message in err
    assert err.startswith("sample.py t2i: error: ")


def test_all_problems_reported_at_once(capsys, no_loading, tmp_path):
    (tmp_path / "file").write_text("x")
    argv = t2i(tmp_path / "nope", "--height", "9", "--steps", "-1", out=tmp_path / "file")
    lines = error_of(capsys, argv).splitlines()
    assert len(lines) == 4 and all(line.startswith("sample.py t2i: error: ") for line in lines)
    assert "--out" in lines[-1] and "is a file" in lines[-1]


def test_argparse_errors_also_exit_2(capsys, no_loading, pipeline_folder):
    with pytest.raises(SystemExit) as exit_:
        sample.main(["t2i", "--prompt", "a fox"])  # no --model
    assert exit_.value.code == 2
    assert "--model" in capsys.readouterr().err


@pytest.fixture
def shipped_present(shipped):
    """`shipped`, with a pipeline folder (its model_index.json) at each stage's place."""
    for folder in shipped.values():
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text("{}")
    return shipped


def cascade_flags(*argv: str):
    """`sample.py cascade ARGV`'s frozen settings, as the command builds them."""
    from mv2_jax.commands import cascade

    return cascade.settings(sample.build_parser().parse_args(["cascade", *argv]))


def test_no_model_flags_run_the_shipped_models(shipped_present):
    from mv2_jax.commands.stages import DIFFUSION_STAGES, SHIPPED_STAGES, stage_settings

    flags = cascade_flags("a red circle", "--teachers", "--v2v-steps", "4").stages
    expected = tuple(map(str, shipped_present.values()))
    assert tuple(flags.models[s] for s in ("t2i", "i2v", "v2v")) == expected
    # the teachers' sampling settings, where the command line leaves them open
    assert (flags.stages["i2v"].steps, flags.stages["v2v"].steps) == (SHIPPED_STAGES["i2v"][0], 4)
    assert flags.stages["v2v"].guidance_scale == SHIPPED_STAGES["v2v"][1]
    assert all(not flags.stages[s].lora and flags.stages[s].scheduler is None
               for s in ("t2i", "i2v", "v2v"))  # fmt: skip
    flags = cascade_flags("a fox", "--i2v-model", "mine").stages
    # a model of one's own: no shipped model or setting mixed in
    assert tuple(flags.models[s] for s in ("t2i", "i2v", "v2v")) == (None, "mine", None)
    assert (flags.stages["v2v"].steps, flags.stages["v2v"].guidance_scale) == (None, None)
    settings = stage_settings(flags)
    assert [settings[s].steps for s in ("t2i", "i2v", "v2v")] == list(DIFFUSION_STAGES.values())


def test_the_shipped_models_sample_in_few_steps_unless_told(shipped_present, monkeypatch, tmp_path):
    """By default the shipped set samples the few-step way (the T2I teacher by DPM-Solver++, the
    I2V and V2V students by LCM, unguided); a stage given any sampling flag samples as its
    teacher, and so does a stage whose student this install lacks."""
    from mv2_jax.commands.stages import SHIPPED_STAGES
    from mv2_jax.pipelines import shipped

    def sampling(stage):
        s = flags.stages[stage]
        return s.scheduler, s.steps, s.guidance_scale, tuple(str(lora) for lora in s.lora)

    flags = cascade_flags("a red circle").stages
    i2v_student, v2v_student = shipped.SHIPPED_LORAS["lcm_i2v"], shipped.SHIPPED_LORAS["lcm_v2v"]
    assert sampling("t2i") == ("dpmpp_2m", 8, 2.0, ())
    assert sampling("i2v") == ("lcm", 2, 1.0, (f"{i2v_student}:0.3",))
    assert sampling("v2v") == ("lcm", 4, 1.0, (f"{v2v_student}:1",))
    calls = {s: flags.stages[s].steps * (2 if flags.stages[s].guidance_scale > 1 else 1)
             for s in ("t2i", "i2v", "v2v")}  # fmt: skip
    assert sum(calls.values()) == 22  # against the teachers' 120

    flags = cascade_flags("a red circle", "--i2v-lora", "slow.safetensors").stages
    assert sampling("i2v") == (None, *SHIPPED_STAGES["i2v"], ("slow.safetensors:1",))
    assert sampling("v2v")[0] == "lcm"  # the other stages keep theirs
    flags = cascade_flags("a red circle", "--t2i-steps", "12").stages
    assert sampling("t2i") == (None, 12, SHIPPED_STAGES["t2i"][1], ())

    monkeypatch.setitem(shipped.SHIPPED_LORAS, "lcm_v2v", tmp_path / "no-student")
    flags = cascade_flags("a red circle").stages
    assert sampling("v2v") == (None, *SHIPPED_STAGES["v2v"], ())
    assert sampling("i2v")[0] == "lcm"


def test_settings_are_frozen_and_checks_leave_them_as_they_were(shipped_present):
    import dataclasses

    from mv2_jax.commands import cascade

    flags = cascade_flags("a red circle moving right", "--out", "v.gif")
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.stages.seed = 1
    before = repr(flags)
    cascade.check(flags)
    assert repr(flags) == before


def test_a_prompt_outside_the_shipped_world_gets_a_note(shipped_present):
    from mv2_jax.commands.cascade import outside_the_shipped_world

    def note(*argv):
        return outside_the_shipped_world(cascade_flags(*argv))

    fox = note("a red fox running through snow")
    assert fox.startswith("note: no shape in 'a red fox running through snow'")
    assert "circle, square, triangle" in fox and "--t2i-model" in fox
    assert "more than one colour (blue, red)" in note("a red and blue circle moving up")
    assert note("The cyan square moving towards the left.") is None
    assert note("a red fox", "--t2i-model", "a", "--i2v-model", "b") is None  # own models


def test_a_prompt_alone_runs_the_cascade_which_names_what_it_needs(capsys, no_loading, shipped):
    assert sample.main(["a red fox running through snow", "--out", "fox.avi"]) == 2
    err = capsys.readouterr().err
    assert "sample.py cascade: error: --i2v-model: needed" in err
    assert "--t2i-model: needed" in err and "--out fox.avi: end it in .mp4 or .gif" in err
    assert sample.main(["a fox", "--image", "key.png", "--skip", "t2i,v2v,vfx"]) == 2
    err = capsys.readouterr().err
    assert "--t2i-model" not in err and "--image key.png: no such file" in err
    assert "--skip vfx: choose from t2i, v2v, vfi" in err


# ---------------------------------------------------------------------------- what a run writes


def test_t2i_passes_settings_and_writes_pngs_with_sidecars(
    capsys, monkeypatch, tmp_path, pipeline_folder
):
    (pipeline_folder / "scheduler").mkdir()
    (pipeline_folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "PNDMScheduler"})
    )
    calls = []
    images = np.random.default_rng(0).random((4, 16, 24, 3), dtype=np.float32)

    def fake_pipeline(path, dtype):
        calls.append(("load", str(path), dtype))

        def pipe(prompt, **kwargs):
            calls.append(("call", prompt, kwargs))
            return images

        pipe.default_guidance_scale = 7.5
        return pipe

    monkeypatch.setitem(vars(mv2_jax), "load_pipeline", fake_pipeline)
    out = tmp_path / "out"
    argv = [
        *t2i(pipeline_folder, "--prompt", "a cat", out=out),
        *("--negative-prompt", "blurry", "--negative-prompt", "dark"),
        *("--num-images", "2", "--steps", "7", "--scheduler", "Euler_A", "--seed", "5"),
        *("--height", "16", "--width", "24", "--dtype", "bf16", "--mesh", "fsdp:-1"),
        "--step-progress",
        *("--guidance-batching", "sequential"),
    ]
    assert sample.main(argv) == 0

    (_, path, dtype), (_, prompt, kwargs) = calls
    assert path == str(pipeline_folder) and dtype == jnp.bfloat16
    assert prompt == ["a fox", "a cat"]
    mesh = kwargs.pop("mesh")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1, "frames": 1}
    assert kwargs == dict(
        negative_prompt=["blurry", "dark"],
        num_inference_steps=7,
        guidance_scale=None,
        scheduler="euler_a",
        height=16,
        width=24,
        seed=5,
        num_images_per_prompt=2,
        progress=True,
        guidance_batching="sequential",
    )

    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"0000{i}.png" for i in range(4)]
    for i, png in enumerate(pngs):
        np.testing.assert_array_equal(
            np.asarray(Image.open(png)), np.round(images[i] * 255).astype(np.uint8)
        )
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["image"] == png.name and meta["index_in_batch"] == i
        # Images come prompt by prompt: two of "a fox", then two of "a cat".
        assert meta["prompt"] == ["a fox", "a cat"][i // 2]
        assert meta["negative_prompt"] == ["blurry", "dark"][i // 2]
        assert meta["prompts"] == ["a fox", "a cat"] and meta["num_images_per_prompt"] == 2
        assert (meta["seed"], meta["steps"], meta["scheduler"]) == (5, 7, "euler_a")
        assert meta["model_scheduler"] == "PNDMScheduler" and meta["guidance_scale"] == 7.5
        assert (meta["height"], meta["width"], meta["dtype"]) == (16, 24, "bf16")
        assert meta["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1, "frames": 1}
        assert meta["model"] == str(pipeline_folder.resolve())
        assert meta["command"].startswith("python sample.py t2i --model ")
        versions = meta["versions"]
        assert set(versions) >= {"mv2_jax", "jax", "jaxlib", "flax", "python", "backend"}
        assert versions["devices"] == 8 and versions["backend"] == "cpu"
    printed = capsys.readouterr().out
    assert (
        str(pngs[0]) in printed and f"wrote 4 image(s) and their .json settings to {out}" in printed
    )

    # A second run appends to the folder.
    assert sample.main(argv) == 0
    assert len(list(out.glob("*.png"))) == 8


def test_t2i_load_failure_exits_1(capsys, monkeypatch, pipeline_folder):
    def broken(path, dtype):
        raise NotImplementedError(f"{path}: pipeline class 'Test' is not supported")

    monkeypatch.setitem(vars(mv2_jax), "load_pipeline", broken)
    assert sample.main(t2i(pipeline_folder)) == 1
    assert "error: " in capsys.readouterr().err


# ---------------------------------------------------------------------------- end to end


@pytest.mark.torch
@pytest.mark.slow
def test_t2i_end_to_end_on_a_tiny_pipeline(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    from tests.weights.tiny_models import tiny_pipeline

    folder = tmp_path / "tiny-sd"
    tiny_pipeline(folder)
    # The real loader, keeping the pipeline so that the comparison below reuses its compilation.
    loaded = []

    def load_and_keep(path, dtype, load=mv2_jax.load_pipeline):
        loaded.append(load(path, dtype=dtype))
        return loaded[-1]

    monkeypatch.setitem(vars(mv2_jax), "load_pipeline", load_and_keep)
    out = tmp_path / "out"
    settings = ("--steps", "3", "--scheduler", "ddim", "--seed", "11", "--height", "16")
    argv = ["t2i", "--model", str(folder), "--prompt", "a photo", *settings, "--width", "24"]
    assert sample.main([*argv, "--out", str(out)]) == 0

    png, sidecar = out / "00000.png", out / "00000.json"
    assert sorted(p.name for p in out.iterdir()) == ["00000.json", "00000.png"]
    written = np.asarray(Image.open(png))
    assert written.shape == (16, 24, 3)
    meta = json.loads(sidecar.read_text())
    assert (meta["prompt"], meta["steps"], meta["seed"]) == ("a photo", 3, 11)
    assert (meta["height"], meta["width"], meta["scheduler"]) == (16, 24, "ddim")
    assert meta["model_scheduler"] == "PNDMScheduler" and meta["guidance_scale"] == 7.5

    # The PNG is what the pipeline gives for these settings (to 8 bits), and another seed
    # gives another image: the command line passed its flags through.
    (pipe,) = loaded
    call = dict(num_inference_steps=3, scheduler="ddim", height=16, width=24)
    direct = np.asarray(pipe("a photo", seed=11, **call)[0])
    np.testing.assert_array_equal(written, np.round(direct * 255).astype(np.uint8))
    other = np.asarray(pipe("a photo", seed=12, **call)[0])
    assert np.abs(other - direct).mean() > 0.01


def test_compiled_programs_persist_in_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    args = sample.build_parser().parse_args(["t2i", "--model", "m", "--prompt", "p"])
    assert args.compilation_cache == str(tmp_path / "xdg" / "mv2_jax" / "xla")
    # in a fresh process: jax reads the setting at its first compile
    program = (
        "import jax, jax.numpy as jnp; from mv2_jax.commands.common import use_compilation_cache;"
        f"use_compilation_cache({str(tmp_path / 'xla')!r}, min_compile_seconds=0);"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((4, 4))).block_until_ready()"
    )
    subprocess.run([sys.executable, "-c", program], check=True, cwd=SCRIPT.parent)
    assert any((tmp_path / "xla").iterdir())
