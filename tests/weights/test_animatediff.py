"""Original AnimateDiff motion-module files (v1, v2, v3 layouts) → our motion UNet params, through
diffusers' converter: a random diffusers MotionAdapter is written in the original key layout
(the inversion is checked against diffusers' own converter), read back, and merged params must
equal those of the MotionAdapter folder diffusers saved; plus convert/to_flax.py --motion-adapter
for a UNet folder and a whole SD pipeline folder."""

import json
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.models.motion import sinusoidal_positions  # noqa: E402
from mv2_jax.weights.animatediff import read_motion_adapter  # noqa: E402
from mv2_jax.weights.load import read_config  # noqa: E402
from mv2_jax.weights.motion import load_motion_unet, merge_motion_unet  # noqa: E402
from mv2_jax.weights.safetensors_io import read_weights_folder  # noqa: E402
from tests.pipelines.tiny import tiny_motion_adapter  # noqa: E402
from tests.weights.tiny_models import load_cli, tiny_pipeline, tiny_unet  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# Three blocks, as diffusers' version detection reads `up_blocks.2` (SDXL beta test).
THREE_BLOCKS = dict(
    block_out_channels=(16, 16, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
VERSIONS = {  # the layouts of mm_sd_v15.ckpt, mm_sd_v15_v2.ckpt and v3_sd15_mm.ckpt
    "animatediff_v1": (dict(use_motion_mid_block=False, motion_max_seq_length=24), ".ckpt"),
    "animatediff_v2": (dict(use_motion_mid_block=True, motion_max_seq_length=32), ".safetensors"),
    "animatediff_v3": (dict(use_motion_mid_block=False, motion_max_seq_length=32), ".ckpt"),
}
# diffusers names → AnimateDiff's (convert_animatediff_checkpoint_to_diffusers, read backwards)
_RENAMES = (
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
)


def original_layout(adapter) -> dict:
    """The adapter's state dict under AnimateDiff's own key names, with the positional tables
    (`pos_encoder.pe`, `[1, max_seq_length, C]`) it stores in every attention block."""
    max_seq = adapter.config.motion_max_seq_length
    out = {}
    for key, value in adapter.state_dict().items():
        if key.endswith(".pos_embed.pe"):
            continue
        key = re.sub(r"(\.motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        for ours, theirs in _RENAMES:
            key = key.replace(ours, theirs)
        out[key] = value.clone()
        if m := re.fullmatch(r"(.*\.attention_blocks\.\d)\.to_q\.weight", key):
            table = sinusoidal_positions(max_seq, value.shape[1])[None]
            out[f"{m[1]}.pos_encoder.pe"] = torch.from_numpy(table)
    return out


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet") / "unet"
    tiny_unet(**THREE_BLOCKS).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("version", list(VERSIONS))
def test_original_checkpoint_gives_the_diffusers_adapter(unet_folder, tmp_path, version):
    layout, suffix = VERSIONS[version]
    adapter = tiny_motion_adapter(
        block_out_channels=THREE_BLOCKS["block_out_channels"], motion_num_attention_heads=8,
        **layout,
    )  # fmt: skip
    original = original_layout(adapter)
    # the inversion is exact: diffusers' converter gives back the adapter's tensors
    back = sfu.convert_animatediff_checkpoint_to_diffusers(dict(original))
    expected = {k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in expected)

    path = tmp_path / f"mm{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": original}, path)
    else:
        save_file(original, path)
    found, config, state = read_motion_adapter(path)
    assert found == version
    for key, value in config.items():
        if key not in ("_class_name", "motion_norm_num_groups"):  # the UNet's groups are used
            expected = adapter.config[key]
            assert (list(expected) if isinstance(expected, tuple) else expected) == value, key

    adapter.save_pretrained(tmp_path / "adapter")
    _, reference, _ = load_motion_unet(unet_folder, tmp_path / "adapter")
    if version != "animatediff_v2":  # the file read in memory; v2 through the converter CLI
        config = dict(config, motion_norm_num_groups=8)  # the UNet's, as diffusers takes
        unet_state = read_weights_folder(unet_folder, "diffusion_pytorch_model")
        module, params, _ = merge_motion_unet(read_config(unet_folder), unet_state, config, state)
    else:
        out = tmp_path / "motion_unet"
        argv = [str(unet_folder), "--motion-adapter", str(path), "--out", str(out)]
        assert load_cli().main(argv) == 0
        module, params = mv2_jax.load_component(out)
    assert module.use_motion_mid_block == layout["use_motion_mid_block"]
    assert module.motion_max_seq_length == layout["motion_max_seq_length"]
    jax.tree.map(np.testing.assert_array_equal, params, reference)


def test_sd_pipeline_plus_adapter_becomes_an_animatediff_pipeline(tmp_path):
    tiny_pipeline(tmp_path / "sd")
    tiny_motion_adapter().save_pretrained(tmp_path / "adapter")
    out = tmp_path / "animatediff"
    argv = [str(tmp_path / "sd"), "--motion-adapter", str(tmp_path / "adapter"), "--out", str(out)]
    assert load_cli().main(argv) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline" and "safety_checker" not in index
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "linear" and scheduler["timestep_spacing"] == "linspace"
    pipe = mv2_jax.load_pipeline(out)
    assert type(pipe).__name__ == "TextToVideoPipeline"
    _, reference, _ = load_motion_unet(tmp_path / "sd" / "unet", tmp_path / "adapter")
    jax.tree.map(np.testing.assert_array_equal, pipe.unet_params, reference)


def test_wrong_files_give_clear_errors(tmp_path, capsys):
    path = tmp_path / "not_motion.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not an AnimateDiff motion-module checkpoint"):
        read_motion_adapter(path)
    tiny_pipeline(tmp_path / "sd")
    argv = [str(path), "--motion-adapter", str(path), "--out", str(tmp_path / "o")]
    assert load_cli().main(argv) == 1
    assert (
        "adds motion modules to a diffusers SD pipeline or UNet folder" in capsys.readouterr().err
    )
