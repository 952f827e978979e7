"""UNet2DConditionModel parity with diffusers (random weights, fp32) over SD1.x/2.x/SDXL-style
configs and the odd options: per-block heads, linear projections, several transformer layers,
class / text-time embeddings, ControlNet residuals, latents that do not halve evenly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.diffusion.guidance import guidance_scale_embedding  # noqa: E402
from tests.reference import nchw_to_nhwc, randomize_, relative_error  # noqa: E402

BASE = dict(norm_num_groups=8, sample_size=8)
CONFIGS = {
    "sd15": dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=2,
    ),
    "sd2_heads_per_block_linear_upcast": dict(
        block_out_channels=(16, 32, 48),
        down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=20,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        upcast_attention=True,
        layers_per_block=(1, 2, 1),
    ),
    "sdxl_text_time": dict(
        block_out_channels=(16, 32, 48),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 6),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=12 + 6 * 8,
    ),
    "inpaint_only_cross": dict(
        in_channels=9,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention=(True, False),
        cross_attention_dim=16,
        attention_head_dim=4,
    ),
    "upscaler_class_table": dict(
        in_channels=7,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=50,
        cross_attention_dim=16,
        attention_head_dim=4,
        use_linear_projection=True,
    ),
    "fourier_scale_shift_timestep_class": dict(
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        time_embedding_type="fourier",
        resnet_time_scale_shift="scale_shift",
        class_embed_type="timestep",
        class_embeddings_concat=True,
        time_embedding_act_fn="silu",
        timestep_post_act="silu",
        cross_attention_dim=16,
        attention_head_dim=2,
    ),
    "lcm_cond_projection_class_hid_proj": dict(
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        time_cond_proj_dim=12,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=10,
        encoder_hid_dim=18,
        cross_attention_dim=16,
        attention_head_dim=2,
        center_input_sample=True,
        mid_block_type="UNetMidBlock2D",
        conv_in_kernel=1,
        conv_out_kernel=1,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
    "asymmetric_transformer_layers": dict(
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=((1, 2), (2, 1)),
        reverse_transformer_layers_per_block=((1, 2, 1), (2, 1, 2)),
        cross_attention_dim=16,
        attention_head_dim=4,
        mid_block_type=None,
    ),
}


def _inputs(cfg: dict, unet, height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = 2
    sample = rng.standard_normal((batch, unet.config.in_channels, height, width), np.float32)
    timesteps = np.array([3.0, 741.0], np.float32)
    context_dim = cfg.get("encoder_hid_dim") or cfg["cross_attention_dim"]
    context = rng.standard_normal((batch, 7, context_dim), np.float32)
    kwargs = {}
    if cfg.get("addition_embed_type") == "text_time":
        text_dim = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {
            "text_embeds": rng.standard_normal((batch, text_dim), np.float32),
            "time_ids": np.array(
                [[1024, 1024, 0, 0, 1024, 1024], [512, 768, 16, 8, 512, 512]], np.float32
            ),
        }
    if "num_class_embeds" in cfg:
        kwargs["class_labels"] = np.array([3, 41])
    elif cfg.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = np.array([20.0, 250.0], np.float32)
    elif cfg.get("class_embed_type") == "projection":
        kwargs["class_labels"] = rng.standard_normal(
            (batch, cfg["projection_class_embeddings_input_dim"]), np.float32
        )
    if "time_cond_proj_dim" in cfg:
        kwargs["timestep_cond"] = rng.standard_normal(
            (batch, cfg["time_cond_proj_dim"]), np.float32
        )
    return sample, timesteps, context, kwargs


def _torch(x):
    if isinstance(x, dict):
        return {k: _torch(v) for k, v in x.items()}
    return torch.from_numpy(np.asarray(x))


def _load_pair(tmp_path, cfg, seed=0):
    ref = randomize_(diffusers.UNet2DConditionModel(**BASE, **cfg), seed=seed)
    ref.save_pretrained(tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    return ref, module, params


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(tmp_path, name):
    cfg = CONFIGS[name]
    ref, module, params = _load_pair(tmp_path, cfg)
    sample, t, context, kwargs = _inputs(cfg, ref, 16, 12)
    with torch.no_grad():
        expected = ref(_torch(sample), _torch(t), _torch(context), **_torch(kwargs)).sample.numpy()
    actual = module.apply({"params": params}, nchw_to_nhwc(sample), t, context, **kwargs)
    assert relative_error(actual, nchw_to_nhwc(expected)) <= 1e-4


@pytest.mark.parametrize("size", [(75, 75), (13, 22)])
def test_uneven_latent_sizes_follow_upsample_size(tmp_path, size):
    """600×600 images give 75×75 latents: 75 → 38 → 19 → 10 and back to exactly 75."""
    cfg = dict(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8,
        attention_head_dim=2,
        layers_per_block=1,
    )
    ref, module, params = _load_pair(tmp_path, cfg)
    sample, t, context, _ = _inputs(cfg, ref, *size)
    with torch.no_grad():
        expected = ref(_torch(sample), _torch(t), _torch(context)).sample.numpy()
    actual = module.apply({"params": params}, nchw_to_nhwc(sample), t, context)
    assert actual.shape == (2, *size, 4)
    assert relative_error(actual, nchw_to_nhwc(expected)) <= 1e-4


def test_controlnet_residuals(tmp_path):
    cfg = CONFIGS["sd15"]
    ref, module, params = _load_pair(tmp_path, cfg)
    sample, t, context, _ = _inputs(cfg, ref, 16, 16)
    rng = np.random.default_rng(1)
    # one residual per skip connection: conv_in, then each down block's layers and downsampler
    shapes = [(16, 16, 16), (16, 16, 16), (16, 16, 16), (16, 8, 8)]
    shapes += [(32, 8, 8), (32, 8, 8), (32, 4, 4), (32, 4, 4), (32, 4, 4)]
    down = [rng.standard_normal((2, *s), np.float32) for s in shapes]
    mid = rng.standard_normal((2, 32, 4, 4), np.float32)
    with torch.no_grad():
        expected = ref(
            _torch(sample),
            _torch(t),
            _torch(context),
            down_block_additional_residuals=[_torch(d) for d in down],
            mid_block_additional_residual=_torch(mid),
        ).sample.numpy()
    actual = module.apply(
        {"params": params},
        nchw_to_nhwc(sample),
        t,
        context,
        down_block_additional_residuals=[nchw_to_nhwc(d) for d in down],
        mid_block_additional_residual=nchw_to_nhwc(mid),
    )
    assert relative_error(actual, nchw_to_nhwc(expected)) <= 1e-4


def test_lcm_guidance_embedding_with_and_without_timestep_cond(tmp_path):
    """An LCM-distilled SD1.5-like UNet (`time_cond_proj_dim`, as LCM-Dreamshaper): conditioned on
    the guidance embedding of w = guidance_scale − 1 as diffusers' LCM pipeline builds it, and
    with no `timestep_cond`, where diffusers skips cond_proj."""
    cfg = {**CONFIGS["sd15"], "time_cond_proj_dim": 32}
    ref, module, params = _load_pair(tmp_path, cfg)
    assert params["time_embedding"]["cond_proj"]["kernel"].shape == (32, 16)
    sample, t, context, _ = _inputs(cfg, ref, 16, 16)
    embedding = np.asarray(guidance_scale_embedding(np.array([8.0 - 1, 2.0 - 1]), 32))
    outputs = []
    for cond in (embedding, None):
        with torch.no_grad():
            torch_cond = None if cond is None else _torch(cond)
            expected = ref(
                _torch(sample), _torch(t), _torch(context), timestep_cond=torch_cond
            ).sample.numpy()
        actual = module.apply(
            {"params": params}, nchw_to_nhwc(sample), t, context, timestep_cond=cond
        )
        assert relative_error(actual, nchw_to_nhwc(expected)) <= 1e-4
        outputs.append(actual)
    assert relative_error(outputs[0], outputs[1]) > 1e-2  # the embedding acts


@pytest.mark.parametrize("implementation", ["xla", "chunked", "cudnn"])
def test_attention_implementations_agree(tmp_path, implementation):
    cfg = CONFIGS["sd15"]
    ref, module, params = _load_pair(tmp_path, cfg)
    sample, t, context, _ = _inputs(cfg, ref, 32, 32)
    with torch.no_grad():
        expected = ref(_torch(sample), _torch(t), _torch(context)).sample.numpy()
    module = module.clone(attention_implementation=implementation)
    actual = module.apply({"params": params}, nchw_to_nhwc(sample), t, context)
    assert relative_error(actual, nchw_to_nhwc(expected)) <= 1e-4


def test_bf16_is_finite_and_close(tmp_path):
    cfg = CONFIGS["sdxl_text_time"]
    ref, module32, params32 = _load_pair(tmp_path, cfg)
    module16, params16 = mv2_jax.load_component(tmp_path, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params16))
    sample, t, context, kwargs = _inputs(cfg, ref, 16, 16)
    out32 = module32.apply({"params": params32}, nchw_to_nhwc(sample), t, context, **kwargs)
    out16 = module16.apply({"params": params16}, nchw_to_nhwc(sample), t, context, **kwargs)
    assert out16.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out16, np.float32)).all()
    # measured 3.0e-2 (bf16 params and compute through 3 stages); bf16 keeps 8 mantissa bits
    assert relative_error(np.asarray(out16, np.float32), out32) <= 4e-2
