"""mv2_jax.data.precompute: encode a pipeline's batches with a stand-in encoder (2×2 average
pooling for 'latents', caption lengths for 'text embeddings'), store them, and read them back
sharded, shuffled and resumable, with every stored value equal to what the encoder gave."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from mv2_jax.data.pipeline import make_train_iterator
from mv2_jax.data.precompute import make_precomputed_iterator, precompute_dataset


def pool_encoder(seen: dict):
    def encode(batch):
        pixels = batch["pixels"]  # [b, F, 16, 16, 3]
        b, f, h, w, c = pixels.shape
        latents = pixels.reshape(b, f, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))
        lengths = np.array([len(t) for t in batch["caption"]], np.float32)
        text = np.broadcast_to(lengths[:, None, None], (b, 3, 4)).astype(ml_dtypes.bfloat16)
        for caption, latent in zip(batch["caption"], latents):
            seen.setdefault(caption, latent)  # the 9th example (epoch 1) is not stored
        return {"latents": latents, "text_embeds": text}

    return encode


@pytest.fixture(scope="module")
def precomputed(video_data, tmp_path_factory):
    batches = make_train_iterator(
        video_dir=video_data, image_dir=None, image_ratio=0.0, global_batch_size=3,
        num_frames=4, height=16, width=16, frame_stride=2,
    )  # fmt: skip
    seen: dict = {}
    out = tmp_path_factory.mktemp("precomputed")
    folder = precompute_dataset(batches, pool_encoder(seen), out, num_examples=8)
    return out, folder, seen


def test_round_trip_values(precomputed):
    out, folder, seen = precomputed
    assert json.loads((folder / "metadata.json").read_text()) == {
        "is_image": False,
        "num_examples": 8,
    }
    it = make_precomputed_iterator(out, global_batch_size=4, seed=2)
    for _ in range(4):  # 16 examples: two epochs of 8
        batch = next(it)
        assert batch["latents"].shape == (4, 4, 8, 8, 3) and batch["latents"].dtype == np.float32
        assert batch["text_embeds"].shape == (4, 3, 4) and batch["text_embeds"].dtype == np.float32
        np.testing.assert_array_equal(batch["is_image"], [False] * 4)
        for caption, latent, text in zip(batch["caption"], batch["latents"], batch["text_embeds"]):
            np.testing.assert_array_equal(latent, seen[caption])
            assert (text == len(caption)).all()
    assert len(seen) == 8  # one epoch of the 8 videos: every caption once


def test_sharding_and_resume(precomputed):
    out, _, _ = precomputed
    whole = make_precomputed_iterator(out, global_batch_size=4, seed=1)
    halves = [make_precomputed_iterator(out, 4, 1, p, 2) for p in range(2)]
    for _ in range(3):
        full = next(whole)["caption"].tolist()
        parts = [next(h)["caption"].tolist() for h in halves]
        assert full == [parts[k % 2][k // 2] for k in range(4)]
    state = json.loads(json.dumps(whole.get_state()))
    expected = [next(whole) for _ in range(2)]
    resumed = make_precomputed_iterator(out, global_batch_size=4, seed=1)
    resumed.set_state(state)
    for batch in expected:
        np.testing.assert_array_equal(next(resumed)["latents"], batch["latents"])


def test_joint_precomputed_schedule(precomputed, image_data, tmp_path):
    out, _, _ = precomputed
    images = make_train_iterator(
        video_dir=None, image_dir=image_data, image_ratio=1.0, global_batch_size=2,
        num_frames=4, height=16, width=16,
    )  # fmt: skip
    precompute_dataset(images, pool_encoder({}), tmp_path, num_examples=5)
    it = make_precomputed_iterator(out, 2, image_data_dir=tmp_path, image_ratio=0.5)
    shapes = [(bool(b["is_image"][0]), b["latents"].shape[1]) for b in (next(it) for _ in range(4))]
    assert shapes == [(False, 4), (True, 1), (False, 4), (True, 1)]


def test_precompute_errors(precomputed, video_data, tmp_path):
    out, _, _ = precomputed
    batches = make_train_iterator(
        video_dir=video_data, image_dir=None, image_ratio=0.0, global_batch_size=2,
        num_frames=2, height=8, width=8,
    )  # fmt: skip
    with pytest.raises(FileExistsError, match="overwrite"):
        precompute_dataset(batches, pool_encoder({}), out, num_examples=2)
    with pytest.raises(ValueError, match=r"arrays \[b, ...\] with b = 2"):
        precompute_dataset(batches, lambda b: {"latents": np.zeros(3)}, tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="precompute_dataset"):
        make_precomputed_iterator(tmp_path / "nothing", global_batch_size=2)
