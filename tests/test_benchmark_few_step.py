"""benchmarks/few_step.py's pieces that decide its table: the student arm's flags, and the UNet
calls read back from the cascade's own progress lines (made here by the cascade's announcer, so
a change of their wording breaks this test and not, silently, the benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from few_step import student_flags, unet_calls

from mv2_jax.pipelines.cascade import CascadePlan, _announcer


def test_unet_calls_are_read_from_the_cascade_progress_lines():
    plan = CascadePlan((64, 64), (64, 64), 8, (128, 128), 3)
    lines = []
    step = _announcer(
        lines.append, ["t2i", "i2v", "v2v", "vfi"], plan, {"t2i": 4, "i2v": 50, "v2v": 10}
    )
    for stage in ("t2i", "i2v", "v2v", "vfi"):
        step(stage)
    assert unet_calls([(line, 1.0) for line in lines]) == {"t2i": 4, "i2v": 50, "v2v": 10}
    assert lines[3].startswith("[4/4] vfi") and "UNet" not in lines[3]  # no UNet in VFI


def test_student_flags_switch_only_the_stages_with_a_lora():
    flags = student_flags({"t2i": "a/t2i", "i2v": None, "v2v": None}, 4)
    assert flags == ["--t2i-lora", "a/t2i", "--t2i-scheduler", "lcm", "--t2i-steps", "4",
                     "--t2i-guidance-scale", "1"]  # fmt: skip
