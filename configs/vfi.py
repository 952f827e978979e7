"""Frame interpolation (stage 4): a FrameInterpolator and a PatchGAN discriminator trained on
clips the stage renders itself (mv2_jax.data.motion_clips): no pipeline folder, no dataset.

    python train.py --config configs/vfi.py:default --workdir runs/vfi
    python -m mv2_jax.training.export --workdir runs/vfi --out models/vfi

Variants: `tiny` (a small model on 32² crops, for tests) and `default` (the model shipped in
mv2_jax/assets/vfi, 64² crops, sized to train on a 2-core CPU in about half an hour). Keys
beyond configs/common.py are under `vfi` and documented here.
"""

from __future__ import annotations

import ml_collections

from configs.common import base_config


def vfi_section() -> ml_collections.ConfigDict:
    v = ml_collections.ConfigDict()
    # FrameInterpolator fields (mv2_jax/models/vfi.py)
    v.model = ml_collections.ConfigDict(
        {"block_channels": (96, 64, 48), "block_scales": (4, 2, 1), "num_res": 4,
         "refine_channels": 32, "global_motion": True}
    )  # fmt: skip
    v.discriminator_channels = (32, 64, 128)  # PatchGAN, one stride-2 conv each
    v.max_motion = 12.0  # pixels moved between frame0 and frame1 (camera and object, each)
    v.object_probability = 0.5  # clips with a foreground object on its own path
    v.num_clips = 0  # > 0: cycle through this many clips (a fixed batch, to check learning)
    v.coarse_weight = 0.5  # Charbonnier on the fused frame of every block but the last
    v.census_weight = 0.1
    v.flow_weight = 0.1  # Charbonnier of each block's flow (pixels) to the clip's true flow
    v.adv_weight = 1e-3  # hinge-GAN term of the generator, from adv_start_step on
    v.adv_start_step = 1000  # the discriminator trains from step 0 regardless
    v.read_threads = 2  # threads rendering clips ahead of the step
    return v


def get_config(variant: str = "default"):
    config = base_config()
    config.stage = "vfi"
    config.vfi = vfi_section()
    config.compute_dtype = "float32"
    config.data.num_frames = 3
    config.lr_schedule = "cosine"
    config.lr_end_factor = 0.05
    config.weight_decay = 1e-4
    config.adam_b1 = 0.9
    config.adam_b2 = 0.99
    # One clip over generator and discriminator together: the discriminator's gradient would
    # set the generator's step size at 1.0, so the clip is only a guard against blow-ups.
    config.grad_clip_norm = 20.0
    if variant == "tiny":
        config.vfi.model = ml_collections.ConfigDict(
            {"block_channels": (16,), "block_scales": (1,), "num_res": 1,
             "refine_channels": 8, "global_motion": True}
        )  # fmt: skip
        config.vfi.discriminator_channels = (8,)
        config.vfi.max_motion = 4.0
        config.vfi.adv_start_step = 4
        config.vfi.read_threads = 1
        config.vfi.num_clips = 4  # every step the same batch: the loss must fall
        config.data.height = config.data.width = 32
        config.batch_size = 4
        config.lr = 3e-3
        config.warmup_steps = 2
        config.lr_schedule = "constant"
        config.total_steps = 12
        config.checkpoint_every = 6
        config.log_every = 2
        config.ema_decay = 0.9
    elif variant == "default":
        config.data.height = config.data.width = 64
        config.batch_size = 16
        config.lr = 1e-3
        config.warmup_steps = 50
        config.total_steps = 1400
        config.checkpoint_every = 100
        config.log_every = 20
        config.ema_decay = 0.995
        config.vfi.adv_start_step = 900
    else:
        raise ValueError(f"configs/vfi.py: unknown variant {variant!r}; choose tiny or default")
    return config
