"""The shapes world's models (issue 7; docs/shapes.md): what the `shapes` variants of
configs/{t2i,i2v,v2v}.py share — the denoiser configs, the noise schedule and where the trained
VAE and text encoder are. Every stage of the world trains with `train.py`; the order and the
exact commands are in docs/shapes.md. Paths are relative to the directory train.py runs in.

The cascade it makes: 64² key image → 64² × 8 keyframes → 128² × 8 → ×3 frame interpolation.
Latents are 16² (the VAE halves twice) at 64², 32² at 128².
"""

from __future__ import annotations

RUNS = "runs/shapes"  # workdirs, datasets and exported components of the world's runs
DATA = {
    "image64": f"{RUNS}/data/image64",  # first frames with their clip's caption
    "video128": f"{RUNS}/data/video128",  # 8-frame clips (I2V reads them resized to 64²)
    # the VAE latents and caption embeddings of those, precomputed by train.py --precompute_to
    "t2i_latents": f"{RUNS}/data/t2i_latents",  # image64: 20,000 × [1, 16, 16, 4]
    "i2v_latents": f"{RUNS}/data/i2v_latents",  # video128 at 64²: 12,000 × [8, 16, 16, 4]
}
VAE = f"{RUNS}/export/vae"  # python -m mv2_jax.training.export of configs/vae.py:shapes
CLIP = f"{RUNS}/export/clip"  # … of configs/clip.py:shapes: text_encoder/, tokenizer/
T2I = f"{RUNS}/export/t2i"
I2V = f"{RUNS}/export/i2v"

FRAMES = 8  # keyframes of the I2V and V2V stages
TEXT_WIDTH = 64  # the text encoder's hidden size (configs/clip.py:shapes)
BLOCKS = [32, 64, 64]
CROSS_ATTENTION = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]

# the I2V stage's new motion modules on the T2I UNet (config.model.new_motion_modules)
MOTION_MODULES = {"motion_num_attention_heads": 4, "motion_max_seq_length": FRAMES}

# v-prediction on a zero-terminal-SNR schedule sampled with trailing timesteps: at the last
# training step no trace of the clean latents is left, so sampling from pure noise matches
# training — at 16² the colour of the object would otherwise leak through ᾱ_T.
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# Every stage of the world trains plain v-MSE (as SD 2.x trains v-models): Min-SNR-γ's v weight
# min(SNR, γ)/(SNR + 1) is 0 at this schedule's last step and < 0.06 above t = 700, where
# sampling from pure noise decides the layout (T2I) and the motion (I2V).
MIN_SNR_GAMMA = 0.0


def image_unet() -> dict:
    """The T2I UNet (1.5 M params): three levels of 16², 8², 4² latents."""
    return {
        "_class_name": "UNet2DConditionModel",
        "block_out_channels": BLOCKS,
        "down_block_types": CROSS_ATTENTION,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": TEXT_WIDTH,
        "attention_head_dim": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 16,
    }


def text_to_image_model() -> dict:
    """`config.model.init` of the T2I run: a new UNet on the trained VAE and text encoder."""
    return {
        "unet": image_unet(),
        "vae": VAE,
        "text_encoder": f"{CLIP}/text_encoder",
        "tokenizer": f"{CLIP}/tokenizer",
        "scheduler": dict(SCHEDULER),
    }
