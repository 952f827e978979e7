"""sample.py takes the consistency schedulers by name: `--scheduler lcm` / `tcd` on every
sampling subcommand and `--STAGE-scheduler` on the cascade (and batch), any case, with no
usage problem; an unknown name's message lists them."""

import json

import pytest

from mv2_jax.cli import sample
from mv2_jax.commands.common import SamplingFlags, from_namespace, sampling_problems
from mv2_jax.commands.stages import sampler_problems, stage_run_flags

# each sampling subcommand's required flags besides --model
SUBCOMMANDS = {
    "t2i": ("--prompt", "a fox"),
    "t2v": ("--prompt", "a fox"),
    "i2v": ("--image", "key.png", "--prompt", "a fox"),
    "v2v": ("--input", "low.mp4", "--prompt", "a fox"),
}


@pytest.fixture
def model_folder(tmp_path) -> str:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Test"}))
    return str(tmp_path)


@pytest.mark.parametrize("given", ["lcm", "TCD"])
@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_scheduler_flag_takes_consistency_schedulers(command, given, model_folder):
    argv = [command, "--model", model_folder, *SUBCOMMANDS[command], "--scheduler", given]
    flags = from_namespace(SamplingFlags, sample.build_parser().parse_args(argv))
    assert flags.scheduler == given.lower()
    assert sampling_problems(flags) == []


@pytest.mark.parametrize("command", ["cascade", "batch"])
def test_stage_scheduler_flags_take_consistency_schedulers(command):
    extra = ("a fox",) if command == "cascade" else ("--prompts", "p.txt", "--out", "arm")
    argv = [command, *extra, "--t2i-scheduler", "tcd", "--i2v-scheduler", "LCM",
            "--v2v-scheduler", "lcm"]  # fmt: skip
    flags = stage_run_flags(sample.build_parser().parse_args(argv))
    assert {s: f.scheduler for s, f in flags.stages.items()} == {
        "t2i": "tcd", "i2v": "lcm", "v2v": "lcm"
    }  # fmt: skip
    for stage, stage_flags in flags.stages.items():
        assert sampler_problems(stage_flags, stage) == []


def test_unknown_scheduler_lists_them(model_folder):
    argv = ["t2i", "--model", model_folder, "--prompt", "a fox", "--scheduler", "lcm2"]
    (problem,) = sampling_problems(
        from_namespace(SamplingFlags, sample.build_parser().parse_args(argv))
    )
    assert "'lcm2' is unknown" in problem and "lcm, tcd" in problem
