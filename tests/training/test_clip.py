"""The contrastive text encoder stage (configs/clip.py:tiny): the loss falls on a fixed batch
whose captions repeat, the multi-positive loss, labels and storyboard behave as documented,
the export loads with load_component and transformers, and mistakes give clear errors.
(`train()` itself runs this stage like any other; its own tests cover the loop.)"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.clip import get_config
from mv2_jax import load_component
from mv2_jax.data import shapes
from mv2_jax.pipelines.text import load_tokenizer
from mv2_jax.training.clip import (
    ContrastiveStage,
    caption_labeller,
    contrastive_loss,
    export_clip,
    label_ids,
    stacked_frames,
    storyboard,
    write_clip_folders,
)
from mv2_jax.training.tokenizer import write_bpe_tokenizer

STEPS = 10


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_bpe_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer", max_length=16)


def tiny_config(tokenizer_dir):
    config = get_config("tiny")
    config.clip.tokenizer = str(tokenizer_dir)
    return config


@pytest.fixture(scope="module")
def stage(tokenizer_dir):
    return ContrastiveStage.from_config(tiny_config(tokenizer_dir), None, None)


def fixed_batch() -> dict:
    """Four shapes-world clips at 8², each twice under two wordings ("a …" / "the …"), which
    the tiny config's labels (articles dropped) make positives of each other."""
    rng = np.random.default_rng(0)
    combos = [("red", "circle", "left"), ("blue", "square", "right"), ("white", "triangle", "up"),
              ("green", "circle", "down")]  # fmt: skip
    pixels, captions = [], []
    for colour, shape, motion in combos:
        clip = dataclasses.replace(
            shapes.sample_clip(rng, num_frames=4), colour=colour, shape=shape, motion=motion
        )
        frames = shapes.render(clip, 8, np.arange(4)) * 2 - 1
        pixels += [frames, frames]
        captions += [f"a {colour} {shape} moving {motion}", f"the {colour} {shape} moving {motion}"]
    return {"pixels": np.stack(pixels), "caption": np.asarray(captions, object)}


@pytest.fixture(scope="module")
def trained(stage):
    """(params, loss and metrics per step) of STEPS AdamW steps on the fixed batch."""
    batch = stage.prepare(fixed_batch())
    optimizer = optax.adamw(1e-3, b2=0.98)
    params = stage.load_params()

    @jax.jit
    def step(params, opt_state):
        grads, metrics = jax.grad(lambda p: stage.loss(p, {}, batch, None), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    opt_state, history = optimizer.init(params), []
    for _ in range(STEPS):
        params, opt_state, metrics = step(params, opt_state)
        history.append({k: float(v) for k, v in metrics.items()})
    return params, history


@pytest.fixture(scope="module")
def exported(stage, trained, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_export") / "clip"
    return write_clip_folders(out, stage.settings, trained[0], tokenizer_dir)


def test_loss_falls_with_repeated_captions(trained):
    _, history = trained
    assert all(h["positives"] == 2 for h in history)
    assert history[-1]["loss"] < 0.75 * history[0]["loss"], [h["loss"] for h in history]
    # the floor with two equally matching positives per row is ln 2, not 0
    assert history[-1]["loss"] > np.log(2) - 1e-3
    assert history[-1]["acc_t2i"] == history[-1]["acc_i2t"] == 1.0


def test_identical_captions_are_both_targets():
    text = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    image = jnp.asarray([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    labels = jnp.asarray([7, 7, 3])
    loss_fn = jax.jit(contrastive_loss)  # one compile, not one per operation
    loss, metrics = loss_fn(text, image, labels, jnp.log(50.0))
    # text 0's best image is image 1 (a positive): right, though not its own row
    assert float(metrics["acc_t2i"]) == 1.0 and float(metrics["acc_i2t"]) == 1.0
    assert float(metrics["positives"]) == pytest.approx(5 / 3)
    # the floor of a row with two equally close positives is ln 2 (uniform target over both)
    logits = (
        50.0 * np.asarray(text) @ (np.asarray(image) / np.linalg.norm(image, axis=1)[:, None]).T
    )
    target = np.asarray([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])

    def cross_entropy(rows):
        shifted = rows - rows.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -(target * log_p).sum(axis=1).mean()

    expected = (cross_entropy(logits) + cross_entropy(logits.T)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # as one-hot targets (labels all distinct), text 0 → image 1 is a wrong retrieval
    _, distinct = loss_fn(text, image, jnp.arange(3), jnp.log(50.0))
    assert float(distinct["acc_t2i"]) < 1.0


def test_caption_labels():
    config = get_config("shapes")
    same = [
        "a red circle moving to the left",
        "Red circle moves left.",
        "the red circle going left",
    ]
    ids = label_ids([*same, "a red circle moving right"], caption_labeller(config.clip))
    assert len(set(ids[:3])) == 1 and ids[3] != ids[0]
    assert config.clip.caption_label.endswith(":parse_prompt") and shapes.parse_prompt(same[1])
    plain = caption_labeller(get_config("tiny").clip)  # words, articles dropped
    assert plain("A red  circle!") == plain("the red circle") != plain("a red circles")


def test_storyboard_tiles_frames_in_reading_order():
    frames = np.linspace(-1, 1, 7, dtype=np.float32)  # frame k is a flat image of value v_k
    clip = np.broadcast_to(frames[None, :, None, None, None], (1, 7, 4, 4, 3))
    board = np.asarray(jax.jit(storyboard, static_argnums=(1, 2))(clip, 2, 8))
    unit = board[..., 0] * 0.26862954 + 0.48145466  # undo CLIP's normalisation
    tiles = unit[0, ::4, ::4]  # one pixel per tile
    np.testing.assert_allclose(tiles, (frames[[0, 2, 4, 6]].reshape(2, 2) + 1) / 2, atol=1e-6)
    image = np.asarray(jax.jit(storyboard, static_argnums=(1, 2))(clip[:, :1], 2, 8))
    np.testing.assert_allclose(image, image[:, :1, :1].repeat(8, 1).repeat(8, 2), atol=1e-6)


def test_stacked_frames_are_channels_in_time_order(tokenizer_dir, tmp_path):
    frames = np.linspace(-1, 1, 7, dtype=np.float32)
    clip = np.broadcast_to(frames[None, :, None, None, None], (1, 7, 4, 4, 3))
    stacked = np.asarray(jax.jit(stacked_frames, static_argnums=(1, 2))(clip, 3, 8))
    assert stacked.shape == (1, 8, 8, 9)
    unit = stacked[0, 0, 0, ::3] * 0.26862954 + 0.48145466  # red of each slot, unnormalised
    np.testing.assert_allclose(unit, (frames[[0, 3, 6]] + 1) / 2, atol=1e-6)

    config = tiny_config(tokenizer_dir)
    config.clip.channel_frames = 3
    with pytest.raises(ValueError, match=r"set clip\.grid=1"):
        ContrastiveStage.from_config(config, None, None)
    config.clip.grid = 1
    stage = ContrastiveStage.from_config(config, None, None)
    params = stage.load_params()
    assert params["vision"]["vision_model"]["embeddings"]["patch_embedding"]["kernel"].shape[2] == 9
    embeds = jax.jit(stage.embed_clips)(params, jnp.asarray(fixed_batch()["pixels"][:2]))
    assert embeds.shape == (2, config.clip.projection_dim)
    folder = write_clip_folders(tmp_path / "clip", stage.settings, params, tokenizer_dir)
    vision, _ = load_component(folder / "image_encoder")
    assert vision.num_channels == 9


def test_export_loads_with_load_component(stage, trained, exported):
    """The folders hold exactly the trained params (the text model without its projection)
    and build the same models, so load_component gives the trained outputs."""
    params = trained[0]
    text, text_params = load_component(exported / "text_encoder")
    assert type(text).__name__ == "CLIPTextModel"
    want = {"text_model": params["text"]["text_model"]}
    jax.tree.map(np.testing.assert_array_equal, text_params, want)
    vision, vision_params = load_component(exported / "image_encoder")
    assert type(vision).__name__ == "CLIPVisionModelWithProjection"
    jax.tree.map(np.testing.assert_array_equal, vision_params, params["vision"])
    for ours, trained_model in ((text, stage.text), (vision, stage.vision)):
        fields = [
            f.name for f in dataclasses.fields(trained_model) if f.name not in ("parent", "name")
        ]
        assert {f: getattr(ours, f) for f in fields} == {
            f: getattr(trained_model, f) for f in fields
        }


@pytest.mark.torch
def test_export_loads_in_transformers(exported):
    torch = pytest.importorskip("torch")
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    tokenizer = load_tokenizer(exported / "tokenizer")
    ids = tokenizer(["the red circle moving left"], padding="max_length", return_tensors="np")
    ids = ids["input_ids"]
    pixels = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    text, text_params = load_component(exported / "text_encoder")
    vision, vision_params = load_component(exported / "image_encoder")
    ours_text = jax.jit(text.apply)({"params": text_params}, ids)
    ours_image = jax.jit(vision.apply)({"params": vision_params}, pixels).image_embeds
    theirs_text = CLIPTextModel.from_pretrained(exported / "text_encoder").eval()
    theirs_vision = CLIPVisionModelWithProjection.from_pretrained(exported / "image_encoder")
    with torch.no_grad():
        want = theirs_text(torch.from_numpy(ids).long())
        pixels = torch.from_numpy(pixels.transpose(0, 3, 1, 2))
        want_image = theirs_vision.eval()(pixel_values=pixels).image_embeds
    np.testing.assert_allclose(ours_text.last_hidden_state, want.last_hidden_state, atol=1e-5)
    np.testing.assert_allclose(ours_text.pooler_output, want.pooler_output, atol=1e-5)
    np.testing.assert_allclose(ours_image, want_image, atol=1e-5)


def test_clear_errors(tmp_path, tokenizer_dir, exported, trained, stage):
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        export_clip(tmp_path, tmp_path / "out")
    config = tiny_config(tokenizer_dir)
    (tmp_path / "config.json").write_text(config.to_json())
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        export_clip(tmp_path, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already exists"):
        write_clip_folders(exported, stage.settings, trained[0], tokenizer_dir)
    config.clip.tokenizer = ""
    with pytest.raises(ValueError, match="pass workdir="):
        ContrastiveStage.from_config(config, None, None)
    config.clip.tokenizer = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"clip\.tokenizer="):
        ContrastiveStage.from_config(config, None, None)
    config = tiny_config(tokenizer_dir)
    config.clip.text.max_position_embeddings = 8
    with pytest.raises(ValueError, match="max_position_embeddings=8 < "):
        ContrastiveStage.from_config(config, None, None)
    config.clip.text.max_position_embeddings = 16
    config.clip.grid = 3
    with pytest.raises(ValueError, match=r"not a multiple of clip\.grid=3"):
        ContrastiveStage.from_config(config, None, None)
    config.clip.grid = 2
    config.data.precomputed_dir = str(tmp_path)
    with pytest.raises(ValueError, match="not precomputed_dir"):
        ContrastiveStage.from_config(config, None, None)
