"""Issue 21 item 5: the human-feedback loop end to end at a tiny size — two arms of the shipped
I2V, a study rated by the automated rater through the HTTP API, export, preference pairs, two
Diffusion-DPO steps, the LoRA and the tuned pipeline exported, and the tuned I2V samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")
pytest.importorskip("tensorflow_datasets")

from safetensors.numpy import load_file

from mv2_jax.media import read_video
from mv2_jax.training.preference_loop import main
from tests.studies.load import free_port

pytestmark = pytest.mark.slow


def test_study_votes_tune_the_i2v_and_it_samples(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue square moving up\n")
    work = tmp_path / "loop"
    argv = ["--workdir", str(work), "--prompts", str(prompts), "--seeds", "2",
            "--arm-a", "--i2v-steps 4", "--arm-b", "--i2v-steps 1", "--criterion", "visual",
            "--dpo-steps", "2", "--dpo-batch", "2", "--sample-steps", "2",
            "--port", str(free_port())]  # fmt: skip
    assert main(argv) == 0
    votes = [json.loads(line) for line in (work / "votes.jsonl").read_text().splitlines()]
    assert len(votes) == 4 and {v["rater"] for v in votes} == {"judge"}
    decisive = sum(v["vote"] != "same" for v in votes)
    info = json.loads((work / "pairs/preference_pairs/1.0.0/dataset_info.json").read_text())
    assert sum(int(n) for n in info["splits"][0]["shardLengths"]) == decisive > 0
    metrics = [json.loads(line) for line in (work / "dpo/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "dpo_loss" in m][-1] == 2
    lora = load_file(str(work / "lora/pytorch_lora_weights.safetensors"))
    ups = [v for k, v in lora.items() if "lora_B" in k]
    assert ups and all("motion_modules" in k for k in lora)
    assert any(np.abs(u).max() > 0 for u in ups)  # two steps moved the adapter off zero
    frames, _ = read_video(work / "tuned.mp4")
    assert frames.shape[0] == 8 and frames.shape[1:3] == (64, 64)
    log = (work / "loop.log").read_text()
    assert "token=" not in log.replace("token=…", "")  # no rater token in the loop's log
