"""UNetMotionModel parity with diffusers (random weights, fp32): motion heads and temporal layers
per block, with and without the motion mid block, SDXL text-time conditioning, F=1 and F=4,
ControlNet residuals; an SD UNet + MotionAdapter merged as `UNetMotionModel.from_unet2d` does."""

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mv2_jax  # noqa: E402
from mv2_jax.diffusion.guidance import guidance_scale_embedding  # noqa: E402
from mv2_jax.models.motion import UNetMotionModel  # noqa: E402
from mv2_jax.weights.motion import load_motion_unet  # noqa: E402
from tests.reference import randomize_, relative_error  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

BASE = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    norm_num_groups=8,
    cross_attention_dim=24,
    motion_max_seq_length=8,
)
CONFIGS = {
    # AnimateDiff v2/v3's layout (all defaults) at tiny width
    "default": dict(num_attention_heads=2, motion_num_attention_heads=2, layers_per_block=2),
    "heads_per_block_two_temporal_layers": dict(
        num_attention_heads=(2, 4),
        motion_num_attention_heads=(4, 2),
        layers_per_block=1,
        temporal_transformer_layers_per_block=2,
        temporal_transformer_layers_per_mid_block=(1, 2),
        mid_block_layers=2,
    ),
    "no_motion_mid_block_sdxl_text_time": dict(
        down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion"),
        up_block_types=("CrossAttnUpBlockMotion", "UpBlockMotion"),
        num_attention_heads=(2, 4),
        motion_num_attention_heads=4,
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        use_motion_mid_block=False,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=12 + 6 * 8,
    ),
}


def _videos(cfg: dict, frames: int, seed: int = 0):
    """(sample [B,F,H,W,C], timesteps, context [B,L,D], kwargs) as numpy."""
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((2, frames, 8, 8, 4), np.float32)
    context = rng.standard_normal((2, 7, 24), np.float32)
    kwargs = {}
    if cfg.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": rng.standard_normal((2, 12), np.float32),
            "time_ids": np.array([[64, 64, 0, 0, 64, 64], [48, 64, 8, 4, 48, 64]], np.float32),
        }
    return sample, np.array([3.0, 741.0], np.float32), context, kwargs


def _torch_video(ref, sample, t, context, **kwargs):
    """diffusers' output as `[B,F,H,W,C]`; it takes `[B,C,F,H,W]` and one context per frame."""
    frames = sample.shape[1]
    kwargs = {
        k: {n: torch.from_numpy(v) for n, v in d.items()}
        if isinstance(d, dict)
        else torch.from_numpy(d)
        for k, d in kwargs.items()
    }
    with torch.no_grad():
        out = ref(
            torch.from_numpy(sample).permute(0, 4, 1, 2, 3),
            torch.from_numpy(t),
            torch.from_numpy(context).repeat_interleave(frames, 0),
            **kwargs,
        ).sample
    return out.permute(0, 2, 3, 4, 1).numpy()


def _apply(module, params, *args, **kwargs):
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, **kwargs))(params, *args)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_motion_unet_matches_diffusers(tmp_path, name):
    cfg = {**BASE, **CONFIGS[name]}
    ref = randomize_(diffusers.UNetMotionModel(**cfg))
    ref.save_pretrained(tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    assert isinstance(module, UNetMotionModel)
    for frames in (1, 4):
        sample, t, context, kwargs = _videos(cfg, frames)
        expected = _torch_video(ref, sample, t, context, **kwargs)
        actual = _apply(module, params, sample, t, context, **kwargs)
        assert actual.shape == (2, frames, 8, 8, 4)
        assert relative_error(actual, expected) <= 1e-4, frames


def test_lcm_guidance_embedding_with_and_without_timestep_cond(tmp_path):
    """`time_cond_proj_dim` on the motion UNet: one guidance embedding per video (diffusers
    repeats the time embedding over the frames), and none, where diffusers skips cond_proj."""
    cfg = {**BASE, **CONFIGS["default"], "layers_per_block": 1, "time_cond_proj_dim": 24}
    ref = randomize_(diffusers.UNetMotionModel(**cfg))
    ref.save_pretrained(tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    assert module.time_cond_proj_dim == 24
    sample, t, context, _ = _videos(cfg, 3)
    embedding = np.asarray(guidance_scale_embedding(np.array([6.0 - 1, 1.5 - 1]), 24))
    outputs = []
    for kwargs in ({"timestep_cond": embedding}, {}):
        expected = _torch_video(ref, sample, t, context, **kwargs)
        actual = _apply(module, params, sample, t, context, **kwargs)
        assert relative_error(actual, expected) <= 1e-4, list(kwargs)
        outputs.append(actual)
    assert relative_error(outputs[0], outputs[1]) > 1e-2  # the embedding acts


def test_controlnet_residuals_per_video(tmp_path):
    cfg = {**BASE, **CONFIGS["heads_per_block_two_temporal_layers"]}
    ref = randomize_(diffusers.UNetMotionModel(**cfg))
    ref.save_pretrained(tmp_path)
    module, params = mv2_jax.load_component(tmp_path)
    sample, t, context, _ = _videos(cfg, 3)
    rng = np.random.default_rng(1)
    # conv_in, down block 0 (1 layer + downsampler), down block 1 (1 layer); [B,F,h,w,c]
    shapes = [(8, 8, 16), (8, 8, 16), (4, 4, 16), (4, 4, 32)]
    down = [rng.standard_normal((2, 3, *s), np.float32) for s in shapes]
    mid = rng.standard_normal((2, 3, 4, 4, 32), np.float32)

    def per_frame_nchw(x):  # diffusers: [B·F, c, h, w]
        return torch.from_numpy(x.reshape(-1, *x.shape[2:])).permute(0, 3, 1, 2)

    with torch.no_grad():
        expected = ref(
            torch.from_numpy(sample).permute(0, 4, 1, 2, 3),
            torch.from_numpy(t),
            torch.from_numpy(context).repeat_interleave(3, 0),
            down_block_additional_residuals=[per_frame_nchw(d) for d in down],
            mid_block_additional_residual=per_frame_nchw(mid),
        ).sample.permute(0, 2, 3, 4, 1)
    actual = _apply(module, params, sample, t, context, None, down, mid)
    assert relative_error(actual, expected.numpy()) <= 1e-4


def test_unet2d_plus_motion_adapter_matches_from_unet2d(tmp_path):
    """`load_motion_unet(unet, adapter)` = diffusers' `UNetMotionModel.from_unet2d`, and with
    `skip_motion_for_images` a one-frame video is exactly the SD UNet's image."""
    unet = randomize_(
        diffusers.UNet2DConditionModel(
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=8,
            cross_attention_dim=24,
            attention_head_dim=2,  # diffusers' historical name for the number of heads
            layers_per_block=1,
        ),
        seed=1,
    )
    adapter = randomize_(
        diffusers.MotionAdapter(
            block_out_channels=(16, 32),
            motion_layers_per_block=1,
            motion_num_attention_heads=(2, 4),
            motion_transformer_layers_per_block=(1, 2),
            motion_norm_num_groups=8,
            motion_max_seq_length=8,
        ),
        seed=2,
    )
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "adapter")
    ref = diffusers.UNetMotionModel.from_unet2d(unet, adapter).eval()

    module, params, config = load_motion_unet(tmp_path / "unet", tmp_path / "adapter")
    assert module == UNetMotionModel.from_config(dict(ref.config))
    assert config["_class_name"] == "UNetMotionModel"
    sample, t, context, _ = _videos({}, 4)
    expected = _torch_video(ref, sample, t, context)
    assert relative_error(_apply(module, params, sample, t, context), expected) <= 1e-4

    image = sample[:, :1]
    with torch.no_grad():
        expected = unet(
            torch.from_numpy(image[:, 0]).permute(0, 3, 1, 2),
            torch.from_numpy(t),
            torch.from_numpy(context),
        ).sample.permute(0, 2, 3, 1)
    skipping = module.clone(skip_motion_for_images=True)
    actual = _apply(skipping, params, image, t, context)
    assert relative_error(actual[:, 0], expected.numpy()) <= 1e-4


def test_errors_name_the_problem(tmp_path):
    module = UNetMotionModel.from_config({**BASE, "num_attention_heads": 2, "layers_per_block": 1})
    args = (np.zeros((1,)), np.zeros((1, 7, 24), np.float32))
    with pytest.raises(ValueError, match="at most 8"):
        jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 9, 8, 8, 4)), *args)
    with pytest.raises(ValueError, match=r"videos \[B,F,H,W,C\]"):
        jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 8, 8, 4)), *args)
    for key, value in (("act_fn", "gelu"), ("encoder_hid_dim_type", "text_proj")):
        bad = UNetMotionModel.from_config({**BASE, key: value})
        with pytest.raises(NotImplementedError, match=key):
            jax.eval_shape(bad.init, jax.random.key(0), np.zeros((1, 2, 8, 8, 4)), *args)


def test_remat_wraps_the_motion_modules():
    """Under a remat policy each motion module is a `jax.checkpoint` of its own, next to the
    ResNet (gradients are then equal by construction; tests/models/test_remat.py checks that
    for the spatial layers)."""
    import jax.numpy as jnp

    from mv2_jax.models.motion import DownBlockMotion

    x, temb = jnp.zeros((6, 4, 4, 8)), jnp.zeros((6, 32))  # B=2 videos of F=3

    def checkpoints(policy):
        block = DownBlockMotion(
            16, 2, temb_channels=32, resnet_groups=4, num_frames=3, motion_num_attention_heads=2,
            motion_transformer_layers=(1, 1), add_downsample=False, remat_policy=policy,
        )  # fmt: skip
        variables = jax.eval_shape(block.init, jax.random.key(0), x, temb)  # shapes only
        assert {"motion_modules_0", "motion_modules_1"} <= set(variables["params"])
        jaxpr = jax.make_jaxpr(lambda v: block.apply(v, x, temb))(variables)
        return sum(e.primitive.name in ("remat2", "checkpoint") for e in jaxpr.jaxpr.eqns)

    assert checkpoints("none") == 0
    assert checkpoints("full") == 4  # 2 ResNets + 2 motion modules


def test_noise_level_table_matches_unet2d_and_acts(tmp_path):
    """`num_class_embeds` (the SD x4 upscaler's noise-level table): a one-frame video with the
    motion modules skipped is diffusers' UNet2DConditionModel given the same `class_labels`, for
    two sets of labels that change the output; videos with motion modules take them too."""
    spatial = dict(
        block_out_channels=(16, 32),
        norm_num_groups=8,
        cross_attention_dim=24,
        layers_per_block=1,
        in_channels=8,
        num_class_embeds=10,
    )
    ref = randomize_(
        diffusers.UNet2DConditionModel(
            **spatial,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
        ),
        seed=3,
    )
    ref.save_pretrained(tmp_path)
    _, params = mv2_jax.load_component(tmp_path)  # the spatial params, class_embedding included
    module = UNetMotionModel.from_config(
        {**BASE, **spatial, "num_attention_heads": 2, "motion_num_attention_heads": 2}
    )
    rng = np.random.default_rng(4)
    image = rng.standard_normal((2, 1, 8, 8, 8), np.float32)
    t, context = np.array([3.0, 741.0], np.float32), rng.standard_normal((2, 7, 24), np.float32)
    skipping = module.clone(skip_motion_for_images=True)
    apply = jax.jit(lambda labels: skipping.apply({"params": params}, image, t, context, None,
                                                  None, None, labels))  # fmt: skip
    outputs = []
    for labels in (np.array([2, 7], np.int32), np.array([7, 0], np.int32)):
        with torch.no_grad():
            expected = ref(
                torch.from_numpy(image[:, 0]).permute(0, 3, 1, 2),
                torch.from_numpy(t),
                torch.from_numpy(context),
                class_labels=torch.from_numpy(labels).long(),
            ).sample.permute(0, 2, 3, 1)
        outputs.append(apply(labels)[:, 0])
        assert relative_error(outputs[-1], expected.numpy()) <= 1e-4
    assert relative_error(outputs[0][0], outputs[1][0]) > 1e-2

    video = np.zeros((2, 3, 8, 8, 8), np.float32)  # shapes only: a compile costs seconds here
    init = lambda *a, **k: module.init(jax.random.key(0), video, t, context, *a, **k)  # noqa: E731
    variables = nn.unbox(jax.eval_shape(init, class_labels=np.zeros(2, np.int32)))
    assert variables["params"]["class_embedding"]["embedding"].shape == (10, 64)
    assert "motion_modules_0" in variables["params"]["down_blocks_0"]
    with pytest.raises(ValueError, match="pass class_labels"):
        jax.eval_shape(init)
