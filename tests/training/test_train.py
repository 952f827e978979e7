"""`train(config, workdir)` end to end on configs/t2i.py:tiny: the loss falls, checkpoints,
metrics and TensorBoard files appear, a finished run resumes to a no-op, and bad setups stop
with errors that say what to do."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs.t2i import tiny_model
from mv2_jax.training import restore_params
from mv2_jax.training.random_pipeline import write_random_pipeline
from mv2_jax.training.trainer import train
from mv2_jax.weights.load import load_component
from tests.training.conftest import tiny_config

STEPS = 30


@pytest.fixture(scope="module")
def trained(init_pipeline, image_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(init_pipeline, image_data, total_steps=STEPS, checkpoint_every=10)
    state = train(config, workdir)
    return workdir, config, state


def test_loss_falls(trained):
    workdir, _, _ = trained
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-2:]])
    assert last < 0.6 * first, (first, last)
    for key in ("grad_norm", "lr", "samples_per_second", "seconds_per_step"):
        assert all(np.isfinite(r[key]) for r in rows[1:]), key
    assert rows[-1]["lr"] < rows[1]["lr"]  # cosine decay after warmup


def test_checkpoints_and_tensorboard(trained):
    workdir, _, state = trained
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20", "30"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    params = restore_params(workdir)
    final = jax.tree.map(np.asarray, state.params)
    jax.tree.map(np.testing.assert_array_equal, params, final)
    ema = restore_params(workdir, ema=True)
    earlier = restore_params(workdir, step=10)
    differs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ema, params)
    assert max(jax.tree.leaves(differs)) > 0
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), earlier, params)))
    with pytest.raises(ValueError, match=r"no checkpoint at step 7"):
        restore_params(workdir, step=7)


def test_export_writes_a_pipeline_folder(trained, tmp_path):
    from mv2_jax import load_pipeline
    from mv2_jax.training.export import export_pipeline

    workdir, _, _ = trained
    pipe = load_pipeline(export_pipeline(workdir, tmp_path / "sd", step=10, ema=False))
    assert type(pipe).__name__ == "TextToImagePipeline"
    expected = restore_params(workdir, step=10)
    jax.tree.map(np.testing.assert_array_equal, pipe.unet_params, expected)


def test_a_finished_run_resumes_to_its_last_step(trained):
    workdir, config, state = trained
    again = train(config, workdir)
    assert int(again.step) == STEPS
    jax.tree.map(np.testing.assert_array_equal, again.params, state.params)


def test_checkpoint_of_another_model_is_refused(trained, image_data, tmp_path):
    workdir, _, _ = trained
    other = tmp_path / "other"
    from configs.t2i import tiny_model
    from mv2_jax.training.random_pipeline import write_random_pipeline

    model = tiny_model()
    model["unet"]["block_out_channels"] = [32, 32]
    write_random_pipeline(model, other, seed=0)
    config = tiny_config(other, image_data, total_steps=STEPS + 5)
    with pytest.raises(ValueError, match=r"(?s)different model.*shape"):
        train(config, workdir)


def test_missing_dataset_names_the_build_command(init_pipeline, tmp_path):
    config = tiny_config(init_pipeline, tmp_path / "nowhere", total_steps=2)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*mv2_jax.data.build image"):
        train(config, tmp_path / "run")


def test_no_data_and_no_model_are_errors(init_pipeline, tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        train(tiny_config(init_pipeline), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=r"model\.pipeline"):
        train(tiny_config(tmp_path / "missing", tmp_path), tmp_path / "b")


def test_joint_image_and_video_steps(init_pipeline, image_data, video_data, tmp_path):
    """Half the steps on images, half on (one-frame clips of) videos; with a profile."""
    config = tiny_config(
        init_pipeline, image_data, total_steps=4, checkpoint_every=4, log_every=2,
        **{"data.video_dir": str(video_data), "data.image_ratio": 0.5, "batch_size": 4},
    )  # fmt: skip
    state = train(config, tmp_path, profile=True)
    assert int(state.step) == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))  # the --profile trace


def pixels_as_latents(batch):
    """A stand-in encoder: the iterator's wiring does not need a model's latents."""
    return {"latents": batch["pixels"], "text_embeds": batch["pixels"][:, 0]}


def test_precomputed_latents_train(init_pipeline, image_data, video_data, tmp_path):
    """Training on precomputed latents; with precomputed_image_dir the trainer's iterator mixes
    them by image_ratio (the mixing itself: tests/data/test_precompute.py)."""
    from mv2_jax.data import make_train_iterator
    from mv2_jax.data.precompute import precompute_dataset
    from mv2_jax.training.config_data import data_iterator
    from mv2_jax.training.precompute import precompute

    config = tiny_config(init_pipeline, image_data, total_steps=3, checkpoint_every=3)
    out = precompute(config, tmp_path / "w", tmp_path / "pre", num_examples=16)
    assert (out / "dataset_info.json").exists()
    config = tiny_config(
        init_pipeline, None, total_steps=3, checkpoint_every=3,
        **{"data.precomputed_dir": str(tmp_path / "pre")},
    )  # fmt: skip
    state = train(config, tmp_path / "run")
    assert int(state.step) == 3

    clips = make_train_iterator(
        video_dir=video_data, image_dir=None, image_ratio=0.0, global_batch_size=2,
        num_frames=2, height=8, width=8,
    )  # fmt: skip
    precompute_dataset(clips, pixels_as_latents, tmp_path / "pre_video", num_examples=2)
    joint = {
        "data.precomputed_dir": str(tmp_path / "pre_video"),
        "data.precomputed_image_dir": str(tmp_path / "pre"),
        "data.image_ratio": 0.5,
    }
    batches = data_iterator(tiny_config(init_pipeline, None, **joint))
    assert [bool(next(batches)["is_image"][0]) for _ in range(4)] == [False, True, False, True]
    with pytest.raises(ValueError, match="precomputed_image_dir mixes images"):
        del joint["data.precomputed_dir"]
        train(tiny_config(init_pipeline, None, **joint), tmp_path / "bad")


def test_starts_from_a_diffusers_pipeline_folder(image_data, tmp_path):
    """Fine-tuning starts from PyTorch weights: with lr = 0 the trained UNet is the folder's."""
    pytest.importorskip("diffusers")
    from mv2_jax import load_component
    from tests.pipelines.tiny import tiny_pipeline

    folder = tmp_path / "sd"
    tiny_pipeline(folder)  # diffusers save_pretrained: safetensors, CLIP tokenizer, PNDM config
    config = tiny_config(folder, image_data, total_steps=1, checkpoint_every=1, lr=0.0)
    train(config, tmp_path / "run")
    _, expected = load_component(folder / "unet")
    jax.tree.map(np.testing.assert_array_equal, restore_params(tmp_path / "run"), expected)


# ---- a from-scratch pipeline folder can take trained components next to random ones


def test_trained_components_are_copied_and_the_rest_initialised(init_pipeline, tmp_path):
    model = tiny_model() | {
        name: str(init_pipeline / name) for name in ("unet", "vae", "tokenizer")
    }
    folder = write_random_pipeline(model, tmp_path / "pipeline", seed=5)

    index = json.loads((folder / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    for name in ("unet", "vae"):
        trained, copied = (load_component(f / name)[1] for f in (init_pipeline, folder))
        jax.tree.map(np.testing.assert_array_equal, trained, copied)
    vocab = (init_pipeline / "tokenizer" / "vocab.json").read_bytes()
    assert (folder / "tokenizer" / "vocab.json").read_bytes() == vocab
    # the text encoder is new: random weights from seed 5 (the fixture's are from seed 0)
    new, old = (load_component(f / "text_encoder")[1] for f in (folder, init_pipeline))
    assert jax.tree.structure(new) == jax.tree.structure(old)
    assert not np.array_equal(jax.tree.leaves(new)[0], jax.tree.leaves(old)[0])


def test_a_missing_component_folder_is_named_before_any_init(tmp_path):
    model = tiny_model() | {"tokenizer": str(tmp_path / "nowhere")}
    with pytest.raises(FileNotFoundError, match=r"config.model.init.tokenizer=.*nowhere.*no such"):
        write_random_pipeline(model, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()
