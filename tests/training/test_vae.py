"""The autoencoder stage through `train()` on configs/vae.py:tiny, on a dataset of exactly one
batch of coloured-square images (so every step sees the same batch): the reconstruction error
falls, and the export is an `AutoencoderKL` folder that `load_component` reads, reconstructs as
the trained EMA params do, and whose `scaling_factor` is 1/std of the latents on the run's
data. One compile per program: these tests share the run, the export and one jitted
encode–decode."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs.vae import get_config
from mv2_jax.data import build_image_dataset
from mv2_jax.training import restore_params
from mv2_jax.training.export import export_pipeline, module_config
from mv2_jax.training.trainer import train
from mv2_jax.training.vae import build_vae, data_batches, export_vae

COLOURS = ((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40))


@pytest.fixture(scope="module")
def one_batch_data(tmp_path_factory):
    """Four 16² images (the tiny config's batch): a coloured square each, on dark grey."""
    root = tmp_path_factory.mktemp("vae_images")
    rows = []
    for i, colour in enumerate(COLOURS):
        pixels = np.full((16, 16, 3), 20, np.uint8)
        pixels[2 + 2 * i : 9 + 2 * i, 7 - i : 14 - i] = colour
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append(json.dumps({"path": f"{i}.png", "caption": "a square"}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    manifest = root / "captions.jsonl"
    return build_image_dataset(root / "data", images_dir=root, manifest=manifest).parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_batch_data):
    workdir = tmp_path_factory.mktemp("vae_run")
    config = get_config("tiny")
    config.data.image_dir = str(one_batch_data)
    config.lock()
    train(config, workdir)
    return workdir, config


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The folder and `(module, params)` that `mv2_jax.load_component` reads from it."""
    import mv2_jax

    workdir, _ = run
    folder = export_pipeline(workdir, tmp_path_factory.mktemp("export") / "vae")
    return folder, mv2_jax.load_component(folder)


@pytest.fixture(scope="module")
def reconstruct(exported):
    """Jitted `(params, pixels [B,1,H,W,3]) → (decode(posterior mean), posterior mean)` of the
    exported architecture."""
    _, (vae, _) = exported

    @jax.jit
    def run(params, pixels):
        mean = vae.apply({"params": params}, pixels[:, 0], method="encode").mean
        return vae.apply({"params": params}, mean, method="decode"), mean

    return run


def test_training_lowers_the_error_on_the_batch(run):
    workdir, _ = run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert last["l1"] < 0.7 * first["l1"], (first, last)
    assert last["psnr"] > first["psnr"] + 2.0, (first, last)
    for key in ("loss", "l1", "kl", "psnr", "adv", "d_loss"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert last["kl"] > 0


def test_export_reconstructs_as_the_trained_params(run, exported, reconstruct):
    workdir, config = run
    _, (vae, params) = exported
    trained = build_vae(config.vae.model.to_dict())
    assert module_config(vae) == {**module_config(trained), "scaling_factor": vae.scaling_factor}
    ema = restore_params(workdir, ema=True)["vae"]
    pixels = data_batches(config, 1)[0]["pixels"]
    got, _ = reconstruct(params, pixels)
    want, _ = reconstruct(ema, pixels)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.abs(np.asarray(got)[:, None] - pixels).mean() < 0.5  # a reconstruction


def test_scaling_factor_is_one_over_the_latent_std(run, exported, reconstruct):
    _, config = run
    folder, (vae, params) = exported
    batches = data_batches(config, config.vae.scale_batches)
    means = [np.asarray(reconstruct(params, b["pixels"])[1]) for b in batches]
    std = np.concatenate([m.ravel() for m in means]).std()
    written = json.loads((folder / "config.json").read_text())
    assert written["_class_name"] == "AutoencoderKL"
    np.testing.assert_allclose(written["scaling_factor"], 1.0 / std, rtol=1e-4)
    assert vae.scaling_factor == written["scaling_factor"]


def test_export_without_a_checkpoint_says_so(run, tmp_path):
    workdir, _ = run
    fresh = tmp_path / "fresh_run"
    fresh.mkdir()
    (fresh / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"no checkpoint yet.*train it first"):
        export_vae(fresh, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_written_folder_holds_every_param_in_diffusers_layout(tmp_path):
    """Random params of an autoencoder with mid-block attention (dense kernels) and a 1×1
    shortcut: written in diffusers' layout, read back by `load_component`'s strict mapping
    (every tensor used, every param filled) to the same arrays. Nothing is compiled."""
    import mv2_jax
    from configs.vae import autoencoder
    from mv2_jax.training.stage import module_param_shapes
    from mv2_jax.training.vae import WEIGHTS_FILE, write_vae_folder
    from mv2_jax.weights.torch_layout import torch_state_dict

    vae = build_vae(autoencoder((8, 16), groups=4, sample_size=16).to_dict())
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.standard_normal(s.shape).astype(np.float32), module_param_shapes(vae)
    )
    state = torch_state_dict(params)
    assert state["encoder.mid_block.attentions.0.to_out.0.weight"].shape == (16, 16)
    np.testing.assert_array_equal(
        state["decoder.up_blocks.0.upsamplers.0.conv.weight"],
        params["decoder"]["up_blocks_0"]["upsamplers_0"]["conv"]["kernel"].transpose(3, 2, 0, 1),
    )
    folder = write_vae_folder(tmp_path / "vae", vae, params, scaling_factor=0.5)
    assert (folder / WEIGHTS_FILE).is_file()
    loaded, loaded_params = mv2_jax.load_component(folder)
    assert loaded.scaling_factor == 0.5 and loaded.mid_block_add_attention
    jax.tree.map(np.testing.assert_array_equal, loaded_params, params)


def test_the_posterior_starts_at_the_configured_log_variance():
    from mv2_jax.training.vae import with_initial_logvar

    params = {"quant_conv": {"bias": np.zeros(8, np.float32), "kernel": np.ones((1, 1, 8, 8))}}
    bias = with_initial_logvar(params, -6.0)["quant_conv"]["bias"]
    np.testing.assert_array_equal(bias, [0, 0, 0, 0, -6, -6, -6, -6])  # mean half, logvar half
    no_quant = {"encoder": {"conv_out": {"bias": np.ones(4, np.float32)}}}
    bias = with_initial_logvar(no_quant, -3.0)["encoder"]["conv_out"]["bias"]
    np.testing.assert_array_equal(bias, [1, 1, -3, -3])


def test_an_unknown_reconstruction_loss_is_named():
    from configs.vae import get_config
    from mv2_jax.parallel.mesh import make_mesh
    from mv2_jax.training.vae import AutoencoderStage

    config = get_config("tiny")
    config.vae.reconstruction_loss = "l3"
    with pytest.raises(ValueError, match=r"vae.reconstruction_loss='l3': l1 or mse"):
        AutoencoderStage.from_config(config, None, make_mesh("data:-1"))
