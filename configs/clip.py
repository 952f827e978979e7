"""The text encoder (stage "clip"): a small CLIP text model trained contrastively against a
vision tower that sees each clip as a storyboard (mv2_jax/training/clip.py), on a captioned
video (or image) dataset: no pipeline folder.

    python train.py --config configs/clip.py:shapes --workdir runs/shapes/clip
    python -m mv2_jax.training.export --workdir runs/shapes/clip --out runs/shapes/export/clip

(the shapes world's dataset and the order of its runs: docs/shapes.md).

The export writes `text_encoder/` (CLIPTextModel), `image_encoder/`
(CLIPVisionModelWithProjection) and `tokenizer/`. Variants: `tiny` (tests) and `shapes`
(the shapes world's text encoder).

Keys beyond configs/common.py, under `clip`:
- `tokenizer`: a CLIPTokenizer folder to use; "" builds the project's BPE tokenizer
  (`mv2_jax.training.tokenizer`; in WORKDIR/tokenizer when the stage is given the workdir).
- `max_length`: the built tokenizer's `model_max_length`: captions are padded / cut to it.
- `num_merges`: BPE merges of the built tokenizer (vocabulary 514 + num_merges).
- `projection_dim`: size of the shared text / image embedding space (both projections).
- `text`: transformers `CLIPTextConfig` keys of the text model; `vocab_size` 0 takes the
  tokenizer's size, and the special token ids always come from the tokenizer.
  `max_position_embeddings` must be ≥ `max_length`.
- `vision`: transformers `CLIPVisionConfig` keys of the vision tower; `image_size` is the
  storyboard's side.
- `grid`: the storyboard is `grid × grid` frames spread evenly over the clip (reading order),
  each tile `image_size / grid` (frames are resized if the data's size differs).
- `channel_frames`: k > 0 shows the vision tower k frames spread evenly over the clip stacked
  on the channels (`num_channels` 3k, `grid` must be 1) instead of a storyboard, so motion is
  visible within each patch: the storyboard ViT learns the axis of a motion, not its sign.
- `init_temperature`: the softmax temperature at the start (`logit_scale` = ln 1/T, learned,
  capped at ln 100 as in CLIP).
- `caption_label`: "module:function" mapping a caption to a label; examples with equal labels
  are positives for each other. "": the caption itself, lower-cased, words only, without
  `ignore_words`.
- `ignore_words`: words the default labelling drops (e.g. articles).
The batch is the contrastive set: with `grad_accum_steps > 1` each micro-batch contrasts only
within itself.
"""

from __future__ import annotations

import ml_collections

from configs import shapes
from configs.common import base_config
from mv2_jax.training.tokenizer import DEFAULT_MERGES


def _transformer(hidden: int, layers: int, heads: int, **extra) -> dict:
    return {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "hidden_act": "quick_gelu", **extra}  # fmt: skip


def clip_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tokenizer = ""
    c.max_length = 16
    c.num_merges = DEFAULT_MERGES
    c.projection_dim = 64
    c.text = _transformer(64, 3, 4, vocab_size=0, max_position_embeddings=16)
    c.vision = _transformer(64, 3, 4, image_size=64, patch_size=8)
    c.grid = 2
    c.channel_frames = 0
    c.init_temperature = 0.07
    c.caption_label = ""
    c.ignore_words = ("a", "an", "the")
    return c


def get_config(variant: str = "shapes"):
    config = base_config()
    config.stage = "clip"
    config.clip = clip_section()
    config.compute_dtype = "float32"
    config.data.num_frames = 8
    config.data.height = config.data.width = 32
    config.weight_decay = 1e-4
    config.adam_b2 = 0.98  # CLIP's
    config.lr_end_factor = 0.05
    if variant == "tiny":
        config.clip.projection_dim = 16
        config.clip.text = _transformer(32, 1, 2, vocab_size=0, max_position_embeddings=16)
        config.clip.vision = _transformer(32, 1, 2, image_size=16, patch_size=8)
        config.data.num_frames = 4
        config.data.height = config.data.width = 8
        config.batch_size = 8
        config.lr = 1e-3  # 1e-2 collapses the tiny towers to one embedding (loss ln B)
        config.warmup_steps = 0
        config.lr_schedule = "constant"
        config.total_steps = 4
        config.checkpoint_every = 4
        config.log_every = 2
        config.ema_decay = 0.9
    elif variant == "shapes":
        # every wording of a (colour, shape, motion) is the same caption
        config.clip.caption_label = "mv2_jax.data.shapes:parse_prompt"
        config.data.video_dir = shapes.DATA["video128"]
        # 4 frames on the channels at 32² (patch 4: 64 tokens, as the 2×2 storyboard of 32²
        # tiles at patch 8 had): that storyboard plateaued at in-batch top-1 0.72 with
        # left / right (and up / down) one embedding — the text encoder kept the sign of a
        # motion only on its own token, and the I2V UNet never learnt it.
        config.clip.grid = 1
        config.clip.channel_frames = 4
        config.clip.vision.image_size = 32
        config.clip.vision.patch_size = 4
        # Sized on this 2-core CPU (5-minute trials, shared machine): 0.3–0.8 s per step, so
        # 800 steps take 4–10 minutes; at step 275 in-batch top-1 was ≈0.7 and rising, with
        # lr 2e-3 ahead of 1e-3 (zero-shot over the 84 captions at step 250: colour 1.0,
        # shape 0.87, motion 0.47 vs 0.78 and 0.38).
        config.batch_size = 64
        config.lr = 2e-3
        config.warmup_steps = 100
        config.total_steps = 1200  # motion words are learnt last
        config.checkpoint_every = 100
        config.log_every = 25
        config.ema_decay = 0.995
    else:
        raise ValueError(f"configs/clip.py: unknown variant {variant!r}; choose tiny or shapes")
    return config
