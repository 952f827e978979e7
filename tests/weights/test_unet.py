"""The UNet families' strict conversion of LCM's guidance embedding (`time_embedding.cond_proj`):
it loads exactly when config.json's `time_cond_proj_dim` fits it, and a mismatch says so."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.weights.mapping import WeightMismatchError  # noqa: E402
from mv2_jax.weights.motion import load_motion_unet  # noqa: E402
from tests.reference import randomize_  # noqa: E402
from tests.weights.tiny_models import tiny_unet  # noqa: E402

pytestmark = pytest.mark.torch

HINT = r'needs "time_cond_proj_dim": D in config\.json'


def _set_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """`plain`: an SD UNet; `lcm`: the same with time_cond_proj_dim=16."""
    root = tmp_path_factory.mktemp("unets")
    tiny_unet().save_pretrained(root / "plain")
    lcm = tiny_unet(time_cond_proj_dim=16)
    lcm.save_pretrained(root / "lcm")
    return root, lcm.time_embedding.cond_proj.weight.detach().numpy()


def test_cond_proj_loads_into_a_config_with_the_dim(folders):
    root, cond_proj = folders
    module, params = mv2_jax.load_component(root / "lcm")
    assert module.time_cond_proj_dim == 16
    kernel = np.asarray(params["time_embedding"]["cond_proj"]["kernel"])
    np.testing.assert_array_equal(kernel, cond_proj.T)


@pytest.mark.parametrize(
    "weights, config_dim, listed",
    [
        ("lcm", None, r"1 unexpected.*\n    time_embedding\.cond_proj\.weight"),
        (
            "lcm",
            24,
            r"1 mis-shaped.*\n    time_embedding/cond_proj/kernel .*\(16, 16\) → \(24, 16\)",
        ),
        ("plain", 16, r"1 missing.*\n    time_embedding/cond_proj/kernel"),
    ],
)
def test_a_dim_mismatch_names_the_key_and_the_fix(tmp_path, folders, weights, config_dim, listed):
    root, _ = folders
    folder = tmp_path / weights
    folder.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (folder / name).write_bytes((root / weights / name).read_bytes())
    _set_config(folder, time_cond_proj_dim=config_dim)
    with pytest.raises(WeightMismatchError, match=listed) as info:
        mv2_jax.load_component(folder)
    assert info.match(HINT)
    # the advice replaces the generic one, and stays out of other mismatches
    _set_config(folder, time_cond_proj_dim=None if weights == "plain" else 16, out_channels=3)
    with pytest.raises(WeightMismatchError, match="conv_out") as info:
        mv2_jax.load_component(folder)
    assert "time_cond_proj_dim" not in str(info.value)


def test_motion_unet_from_an_lcm_unet_keeps_the_guidance_embedding(tmp_path, folders):
    """SD UNet + MotionAdapter (diffusers' `from_unet2d` copies `time_cond_proj_dim` and the
    time embedding), and the same advice when the UNet's config lacks the dim."""
    root, cond_proj = folders
    adapter = diffusers.MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=8,
    )
    randomize_(adapter).save_pretrained(tmp_path / "adapter")
    module, params, config = load_motion_unet(root / "lcm", tmp_path / "adapter")
    assert module.time_cond_proj_dim == config["time_cond_proj_dim"] == 16
    kernel = np.asarray(params["time_embedding"]["cond_proj"]["kernel"])
    np.testing.assert_array_equal(kernel, cond_proj.T)

    unet = tmp_path / "unet"
    unet.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (unet / name).write_bytes((root / "lcm" / name).read_bytes())
    _set_config(unet, time_cond_proj_dim=None)
    with pytest.raises(WeightMismatchError, match=HINT):
        load_motion_unet(unet, tmp_path / "adapter")
