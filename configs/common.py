"""Keys every training config has, with their meaning. Stage files (`configs/t2i.py`, …) start
from `base_config()` and set what differs. A `--config.key=value` for a key not listed here is
an error (the config is locked), so a typo never trains with a default.
"""

from __future__ import annotations

import ml_collections

from mv2_jax.parallel.rules import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = ""  # which stage's model and loss: "t2i", "i2v" or "v2v" (more as their issues land)
    c.seed = 0  # params init, noise, timesteps, caption dropout, data order

    # ---- run length and bookkeeping
    c.total_steps = 1000
    c.checkpoint_every = 100  # also at the last step; resume is exact from any of them
    c.keep_checkpoints = 3  # the newest N are kept
    c.log_every = 10  # metrics to WORKDIR/metrics.jsonl and TensorBoard events
    c.profile_steps = 3  # with `train.py --profile`: steps traced after the first one

    # ---- batch and optimizer (optax)
    c.batch_size = 8  # global, over all processes and devices
    c.grad_accum_steps = 1  # micro-batches of batch_size / grad_accum_steps, scanned in one step
    c.lr = 1e-4
    c.lr_schedule = "cosine"  # "cosine" (to lr · lr_end_factor at total_steps) or "constant"
    c.lr_end_factor = 0.0
    c.warmup_steps = 100  # linear from 0
    c.weight_decay = 1e-2  # AdamW, decoupled
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.grad_clip_norm = 1.0  # global norm; ≤ 0 turns clipping off
    c.ema_decay = 0.9999  # EMA of the trainable params, updated every step
    c.trainable = ("*",)  # globs over "/"-joined param names, e.g. ("unet/*motion_modules_*",)

    # ---- precision, memory, parallelism
    c.param_dtype = "float32"  # master weights and optimizer state
    c.compute_dtype = "bfloat16"  # activations and matmuls of the trained model
    c.remat_policy = "none"  # none | full | dots | dots_no_batch (mv2_jax.models.remat)
    c.mesh = "data:-1"  # axis sizes, e.g. "data:2,fsdp:4" (-1: the remaining devices)
    c.sharding_rules = DEFAULT_RULES  # logical axis name → mesh axes (mv2_jax.parallel.rules)
    c.peak_tflops_per_device = 0.0  # for MFU in the metrics; 0: not reported

    # ---- model
    c.model = ml_collections.ConfigDict()
    c.model.pipeline = ""  # a diffusers-format or converted pipeline folder to start from
    c.model.init = {}  # else: component configs for a random init (see configs/t2i.py:tiny)
    # i2v: a MotionAdapter folder (AnimateDiff) whose motion modules join the pipeline's SD UNet;
    # "": the pipeline's unet is a UNetMotionModel, or it has a motion_adapter/ folder
    c.model.motion_adapter = ""
    # i2v: or new motion modules for an SD UNet, from these MotionAdapter fields (e.g.
    # motion_num_attention_heads, motion_max_seq_length); their output projections start at 0
    c.model.new_motion_modules = ml_collections.ConfigDict()
    # t2i / i2v / v2v: train a LoRA instead of the params (docs/lora_training.md); rank 0: off
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0  # > 0: only LoRA factors train (config.trainable is then ignored)
    c.model.lora.alpha = 0.0  # the update is (alpha / rank) · down @ up; 0: alpha = rank
    # globs over the "/"-joined module paths of the kernels that get a LoRA (set per stage)
    c.model.lora.targets = ()
    c.model.lora.base_dtype = ""  # the frozen base's storage, e.g. "bfloat16"; "": param_dtype

    # ---- image-to-video conditioning on the clip's first frame (stage "i2v"; docs/training.md)
    c.i2v = ml_collections.ConfigDict()
    c.i2v.appearance_encoder = False  # reference attention; params "appearance/…" start as the
    # UNet's spatial weights
    c.i2v.controlnet = False  # SparseCtrl RGB ControlNet fed frame 0's latent; params
    # "controlnet/…" start from the UNet's encoder (zero output convs)
    c.i2v.controlnet_from = ""  # a SparseControlNetModel folder to start from instead

    # ---- video-to-video super-resolution (stage "v2v"; docs/training.md); the i2v.* keys
    # above switch its key-image conditionings
    c.v2v = ml_collections.ConfigDict()
    c.v2v.scale = 2.0  # the low-res input is the clip resized down by this (to whole latents)
    # its latents are noise-augmented at a level in [0, this]: the SD x4 upscaler's 350
    # (mv2_jax.diffusion.low_res.MAX_NOISE_LEVEL); < the UNet's num_class_embeds (1000)
    c.v2v.max_noise_level = 350

    # ---- diffusion loss
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.prediction_type = ""  # epsilon | v_prediction | sample; "": the scheduler's
    c.diffusion.min_snr_gamma = 5.0  # Min-SNR-γ loss weights; ≤ 0: plain MSE
    c.diffusion.offset_noise = 0.0  # per-channel noise offset (e.g. 0.05); 0: off
    c.diffusion.caption_dropout = 0.1  # fraction of captions replaced by "" (for CFG)

    # ---- data (mv2_jax.data; docs/data.md)
    c.data = ml_collections.ConfigDict()
    c.data.video_dir = ""  # tfds data_dir of a video-text dataset (python -m mv2_jax.data.build)
    c.data.image_dir = ""  # tfds data_dir of an image-text dataset
    c.data.image_ratio = 0.0  # with both: the fraction of steps that train on images
    c.data.precomputed_dir = ""  # latents + text embeddings written by precompute (instead)
    c.data.precomputed_image_dir = ""  # precomputed images beside it, mixed in by image_ratio
    c.data.num_frames = 16
    c.data.frame_stride = 1
    c.data.target_fps = 0.0  # > 0: sample frames at this rate where the fps is known
    c.data.height = 256
    c.data.width = 256
    c.data.random_crop = False
    c.data.scale_to = 0  # > 0: scale the shorter side to this, then crop (0: just cover it)
    c.data.num_workers = 0  # grain worker processes; 0 decodes in the training process
    c.data.prefetch = 2
    return c
