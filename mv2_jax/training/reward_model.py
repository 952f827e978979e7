"""The reward-model stage for the trainer (`config.stage = "reward_model"`, configs/reward.py):
a `RewardHead` (`mv2_jax.models.reward_head`) on the frozen VAE's latents and the frozen text
encoder's prompt embedding of a pipeline folder, trained Bradley–Terry on preference pairs.

Loss per pair (Bradley & Terry 1952; as PickScore and VideoAlign train their reward models):
    ℓ = −log σ(r(x_w, c) − r(x_l, c)) · weight,
averaged over the training pairs of the batch. Ties: the preference data keeps a tie as both
orders at weight ½ (`mv2_jax.data` preferences), which is exactly BT with the soft target ½
(PickScore's tie label): the two terms are minimal at r_a = r_b. Ties are left out of the
accuracy, which counts pairs of weight > ½ with r_w > r_l.

Held-out pairs: a pair whose prompt (its text; else its token ids or embedding) hashes into
`reward.heldout_fraction` never trains (weight 0 in the loss) and is scored every step:
`heldout_accuracy` over `heldout_pairs` is logged with the training `accuracy`; prompts, not
just pairs, are held out, so the figure is one of generalisation to new prompts.
`evaluate_pairs` scores a whole held-out stream at the end of a run.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.models.reward_head import RewardHead
from mv2_jax.training.stage import LatentDiffusionStage, dtype_of

PAIR_KEYS = ("chosen", "rejected")


def bradley_terry_loss(
    chosen: jax.Array, rejected: jax.Array, weight: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per pair `[B]`: −log σ(r_w − r_l) · weight (as softplus(r_l − r_w), stable at any
    margin), and the margin r_w − r_l."""
    margin = chosen - rejected
    return jax.nn.softplus(-margin) * weight, margin


def heldout_mask(prompt_rows: np.ndarray, fraction: float) -> np.ndarray:
    """`[B]` bool: the rows whose prompt (its text as bytes, or a row of token ids or of an
    embedding) hashes into the held-out `fraction`: the same prompt is held out in every epoch
    and process."""
    if fraction <= 0:
        return np.zeros(len(prompt_rows), bool)
    if prompt_rows.dtype == object:  # encoded prompt texts
        rows = list(prompt_rows)
    else:
        flat = np.ascontiguousarray(prompt_rows).reshape(len(prompt_rows), -1)
        rows = [r.tobytes() for r in flat]
    buckets = np.array([zlib.crc32(r) % 10_000 for r in rows])
    return buckets < fraction * 10_000


def as_clips(x: np.ndarray | jax.Array, image_ndim: int = 4):
    """Images `[B, H, W, C]` → one-frame clips `[B, 1, H, W, C]`; clips as they are."""
    return x[:, None] if x.ndim == image_ndim else x


@dataclass
class RewardModelStage(LatentDiffusionStage):
    # pairs, not the image/video data `check_data_config` knows: the preference pipeline
    # checks config.data itself (`preference_iterator`)
    uses_config_data: ClassVar[bool] = False

    head: RewardHead
    heldout_fraction: float
    settings: Any  # the config's `reward` section

    @classmethod
    def from_config(cls, config, pipeline: Path, mesh, workdir=None) -> RewardModelStage:
        """The head of `config.reward` on `pipeline`'s frozen VAE and text encoder."""
        r = config.reward
        if not 0 <= r.heldout_fraction < 1:
            raise ValueError(f"reward.heldout_fraction={r.heldout_fraction}: must be in [0, 1)")
        head = reward_head(r, dtype_of(config.compute_dtype), dtype_of(config.param_dtype))
        return cls.from_pipeline(
            config, pipeline, mesh, head=head, heldout_fraction=r.heldout_fraction, settings=r
        )

    # ---- the params that train: the head alone (replicated: it is small)

    def _init(self, key: jax.Array) -> dict:
        channels = self.vae.latent_channels
        latents = jnp.zeros((1, 2, 16, 16, channels), jnp.float32)
        context = jnp.zeros((1, 4, self.consts["empty_context"].shape[-1]), jnp.float32)
        return self.head.init(key, latents, context)["params"]

    def param_shapes(self) -> dict:
        shapes = jax.eval_shape(self._init, jax.random.key(0))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, self.param_dtype), shapes)

    def param_shardings(self, mesh, rules) -> dict:
        replicated = NamedSharding(mesh, PartitionSpec())
        return jax.tree.map(lambda _: replicated, self.param_shapes())

    def load_params(self, shardings=None) -> dict:
        params = jax.jit(self._init, out_shardings=shardings)(jax.random.key(self.seed))
        return jax.tree.map(lambda p: p.astype(self.param_dtype), params)

    # ---- data (host side)

    def make_data_iterator(self, config) -> Iterator[dict]:
        """Synthetic pairs (`reward.synthetic_pairs`: a check of the stage), else the
        preference pairs of `config.data` (`mv2_jax.data.preferences`)."""
        if config.reward.synthetic_pairs:
            return synthetic_pair_iterator(config, self.tokenizers[0].model_max_length)
        return preference_iterator(config)

    def prepare(self, batch: dict) -> dict:
        """A preference batch → `chosen` / `rejected` clips `[B, F, H, W, 3]` and token ids
        `[B, 1, L]`, or precomputed `*_latents` and `context`; `weight` and `heldout` `[B]`."""
        out = {"weight": np.asarray(batch["weight"], np.float32)}
        if "chosen_latents" in batch:
            for key in PAIR_KEYS:
                out[f"{key}_latents"] = as_clips(np.asarray(batch[f"{key}_latents"], np.float32))
            out["context"] = np.asarray(batch["prompt_embeds"], np.float32)
            prompt = out["context"]
        else:
            for key in PAIR_KEYS:
                out[key] = as_clips(np.asarray(batch[key], np.float32))
            if "input_ids" in batch:
                ids = np.asarray(batch["input_ids"], np.int32)
                out["input_ids"] = ids[:, None] if ids.ndim == 2 else ids
            else:
                out["input_ids"] = self.token_ids(batch["prompt"])
            prompt = out["input_ids"]
        if "prompt" in batch:  # the text itself, where the batch has it
            prompt = np.array([str(p).encode() for p in batch["prompt"]], dtype=object)
        out["heldout"] = heldout_mask(prompt, self.heldout_fraction).astype(np.float32)
        return out

    # ---- device side

    def latents_of(self, consts, clips: jax.Array) -> jax.Array:
        """Clips `[B, F, H, W, 3]` in [-1, 1] → the VAE posterior means' scaled latents
        `[B, F, h, w, c]` (deterministic: a reward needs no sampling noise)."""
        folded = clips.reshape(-1, *clips.shape[2:])
        posterior = self.vae.apply({"params": consts["vae"]}, folded, method="encode")
        latents = self.vae.to_diffusion_latents(posterior.mean)
        return latents.reshape(*clips.shape[:2], *latents.shape[1:])

    def pair_rewards(self, params, consts, batch) -> tuple[jax.Array, jax.Array]:
        """(r(x_w, c), r(x_l, c)), each `[B]`, in one pass of the head over both."""
        if "chosen_latents" in batch:
            latents = [batch[f"{k}_latents"] for k in PAIR_KEYS]
        else:
            latents = [self.latents_of(consts, batch[k]) for k in PAIR_KEYS]
        if "context" in batch:
            context = batch["context"]
        else:
            context, _ = self.encode_text(consts["text"], batch["input_ids"])
        both = jnp.concatenate([jax.lax.stop_gradient(x) for x in latents])
        rewards = self.head.apply({"params": params}, both, jnp.concatenate([context, context]))
        return rewards[: len(context)], rewards[len(context) :]

    def loss(self, params, consts, batch, keys) -> tuple[jax.Array, dict]:
        """Mean weighted BT loss over the training pairs; accuracies on both splits."""
        chosen, rejected = self.pair_rewards(params, consts, batch)
        heldout = batch["heldout"]
        train = 1.0 - heldout
        per_pair, margin = bradley_terry_loss(chosen, rejected, batch["weight"] * train)
        loss = jnp.sum(per_pair) / jnp.maximum(jnp.sum(train), 1.0)
        strict = (batch["weight"] > 0.5).astype(jnp.float32)  # ties excluded
        correct = (margin > 0).astype(jnp.float32) * strict
        n_train, n_held = jnp.sum(strict * train), jnp.sum(strict * heldout)
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum(correct * train) / jnp.maximum(n_train, 1.0),
            "heldout_accuracy": jnp.sum(correct * heldout) / jnp.maximum(n_held, 1.0),
            "heldout_pairs": n_held,
            "reward_margin": jnp.sum(margin * strict) / jnp.maximum(jnp.sum(strict), 1.0),
        }
        return loss, metrics

    def evaluate_pairs(self, params, batches: Iterable[dict]) -> dict:
        """Pair accuracy (ties excluded) and mean margin of `params` over prepared `batches`
        (e.g. a held-out split): `{"accuracy", "pairs", "reward_margin"}`."""
        score = jax.jit(lambda p, c, b: self.pair_rewards(p, c, b))
        correct = pairs = margin_sum = 0.0
        for batch in batches:
            batch = {k: v for k, v in batch.items() if k != "heldout"}
            chosen, rejected = map(np.asarray, score(params, self.consts, batch))
            strict = np.asarray(batch["weight"]) > 0.5
            correct += float(np.sum((chosen > rejected) & strict))
            margin_sum += float(np.sum((chosen - rejected) * strict))
            pairs += float(np.sum(strict))
        return {
            "accuracy": correct / max(pairs, 1.0),
            "pairs": int(pairs),
            "reward_margin": margin_sum / max(pairs, 1.0),
        }


def reward_head(section, dtype=jnp.float32, param_dtype=jnp.float32) -> RewardHead:
    """The `RewardHead` of a config's `reward` section."""
    return RewardHead(
        channels=tuple(section.channels),
        keypoints=section.keypoints,
        hidden=section.hidden,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def preference_iterator(config) -> Iterator[dict]:
    """The preference pairs of `config.data` (`preference_dir`, built by `python -m
    mv2_jax.data.build preferences`, or `precomputed_dir`), this process's share, endless and
    checkpointable (`mv2_jax.data.preference_pipeline`); prompts are tokenised in `prepare`."""
    from mv2_jax.data.preference_pipeline import preference_iterator as pairs

    return pairs(config)


@dataclass(frozen=True)
class SyntheticPairSource:
    """Random-access pairs of a separable task (a check that the stage learns): prompt `p`
    asks for a bright square or a dark one, and the chosen image has the square the prompt
    asks for, the rejected one the other. Example `i` is a pure function of (seed, i)."""

    size: int
    token_length: int
    seed: int = 0

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, int(index)))
        wants_bright = bool(rng.integers(2))
        images = []
        for bright in (wants_bright, not wants_bright):
            image = np.full((self.size, self.size, 3), -0.6, np.float32)
            side = self.size // 3
            y, x = rng.integers(0, self.size - side, 2)
            image[y : y + side, x : x + side] = 0.8 if bright else -0.2
            images.append(image + rng.normal(0, 0.05, image.shape).astype(np.float32))
        ids = np.zeros(self.token_length, np.int32)  # the prompt: its variant and a tag
        ids[:2] = (1 + wants_bright, int(rng.integers(3, 50)))
        return {
            "chosen": images[0],
            "rejected": images[1],
            "input_ids": ids,
            "weight": np.float32(1.0),
            "position": np.int64(index),
        }


def synthetic_pair_iterator(config, token_length: int) -> Iterator[dict]:
    """A checkpointable grain iterator of `SyntheticPairSource` batches, process `p` taking
    global positions p, p + P, …"""
    import grain

    source = SyntheticPairSource(config.data.height, token_length, config.seed)
    positions = grain.MapDataset.range(2**40)[jax.process_index() :: jax.process_count()]
    examples = positions.map(source.__getitem__).batch(config.batch_size // jax.process_count())
    return iter(examples.to_iter_dataset())


def load_reward_model(workdir: str | Path, ema: bool = True):
    """(`RewardHead`, params) of a reward_model run's latest checkpoint (EMA by default)."""
    from mv2_jax.training.checkpoint import restore_params, run_config

    config = run_config(workdir, "reward_model")
    return reward_head(config.reward), restore_params(workdir, ema=ema)
