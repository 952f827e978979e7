"""FrameInterpolationPipeline: frame count and order, originals kept exactly, every new frame
equal to the interpolator applied to its pair at t = j/k, batching invariance, one compile,
loading from a folder, and the errors bad input gets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.models.vfi import FrameInterpolator
from mv2_jax.pipelines.vfi import FrameInterpolationPipeline, load_vfi_pipeline

TINY = dict(block_channels=(8, 8), block_scales=(2, 1), num_res=1, refine_channels=8)
HEIGHT, WIDTH = 12, 20  # not multiples of size_multiple (8): the pipeline pads and crops


def _random_params(module: FrameInterpolator) -> dict:
    """Random params of the model's shapes (traced, not run). Unlike an init, whose output
    heads start at zero (a fresh model just averages its two frames), flows, mask and
    refinement all act."""
    frame, t = jnp.zeros((1, 8, 8, 3)), jnp.full((1,), 0.5)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), frame, frame, t))["params"]
    leaves, tree = jax.tree.flatten(shapes)
    rng = np.random.default_rng(0)
    scale = [1 / np.sqrt(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 0.1 for x in leaves]
    leaves = [(rng.standard_normal(x.shape) * s).astype(np.float32) for x, s in zip(leaves, scale)]
    return jax.tree.unflatten(tree, [jnp.asarray(x) for x in leaves])


@pytest.fixture(scope="module")
def tiny():
    """(module, params, a pipeline shared by the tests so that its compiles are too)."""
    module = FrameInterpolator(**TINY)
    params = _random_params(module)
    return module, params, FrameInterpolationPipeline(module, params)


@pytest.fixture(scope="module")
def reference(tiny):
    """`reference(frame0s, frame1s, t)`: the model applied to the pairs by hand (edge-padded to
    16×24, cropped back); `[N,H,W,3]` float frames, t `[N]`."""
    module, params, _ = tiny
    apply = jax.jit(lambda f0, f1, t: module.apply({"params": params}, f0, f1, t))

    def run(frame0, frame1, t):
        pad = ((0, 0), (0, 16 - HEIGHT), (0, 24 - WIDTH), (0, 0))
        frame0, frame1 = (np.pad(f, pad, mode="edge") for f in (frame0, frame1))
        return np.asarray(apply(frame0, frame1, np.asarray(t, np.float32)))[:, :HEIGHT, :WIDTH]

    return run


def _video(frames=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8)


def test_frames_in_order_originals_exact_new_frames_at_j_over_k(tiny, reference):
    _, _, pipe = tiny
    video = _video()
    out = pipe(video, factor=3, batch_size=8)
    assert out.shape == ((3 - 1) * 3 + 1, HEIGHT, WIDTH, 3) and out.dtype == np.float32
    frames = video.astype(np.float32) / 255
    np.testing.assert_array_equal(out[::3], frames)
    pair = np.array([0, 0, 1, 1])  # (pair, t): (0, 1/3), (0, 2/3), (1, 1/3), (1, 2/3)
    expected = reference(frames[pair], frames[pair + 1], [1 / 3, 2 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(out[[1, 2, 4, 5]], expected, atol=1e-5)
    # the new frames differ from both neighbours and from each other (t acts)
    assert np.abs(out[1] - out[2]).max() > 1e-3 and np.abs(out[1] - out[0]).max() > 1e-3


def test_batch_size_does_not_change_frames_and_compiles_once(tiny):
    module, params, pipe = tiny
    video = _video(frames=4, seed=1)  # 3 pairs × 2 new frames = 6 jobs
    by_one = FrameInterpolationPipeline(module, params)
    one = by_one(video, factor=3, batch_size=1)
    assert by_one.trace_count == 1
    traced = pipe.trace_count
    four = pipe(video, factor=3, batch_size=4)  # 4 + 2 (padded to 4)
    np.testing.assert_allclose(one, four, atol=1e-5)
    pipe(video[::-1].copy(), factor=3, batch_size=4)
    assert pipe.trace_count - traced <= 1, "a new video of the same size recompiled"


def test_factor_one_and_batched_videos(tiny, reference):
    _, _, pipe = tiny
    video = _video(frames=3, seed=2)
    np.testing.assert_array_equal(pipe(video, factor=1), video.astype(np.float32) / 255)
    floats = np.stack([video, video[::-1]]).astype(np.float32) / 255  # [B=2, F=3, H, W, 3]
    out = pipe(floats, factor=2, batch_size=8)
    assert out.shape == (2, 5, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(out[:, ::2], floats)
    # jobs in order (video 0: pairs 0, 1; video 1: pairs 0, 1), all at t = 1/2
    frame0 = floats[:, :2].reshape(4, HEIGHT, WIDTH, 3)
    frame1 = floats[:, 1:].reshape(4, HEIGHT, WIDTH, 3)
    expected = reference(frame0, frame1, [0.5] * 4).reshape(2, 2, HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(out[:, 1::2], expected, atol=1e-5)


def test_a_bfloat16_video_reads_as_its_float32_values(tiny):
    """A bf16 cascade hands the interpolator bf16 frames in [0, 1] (ml_dtypes' bfloat16 is
    not a numpy floating type): read as the same values in float32."""
    _, _, pipe = tiny
    frames = jnp.asarray(_video(frames=3, seed=3).astype(np.float32) / 255, jnp.bfloat16)
    video = np.asarray(frames)
    out = pipe(video, factor=2)
    np.testing.assert_array_equal(out, pipe(video.astype(np.float32), factor=2))


def test_loads_from_a_folder_and_through_load_pipeline(tiny, tmp_path):
    from mv2_jax import load_pipeline
    from mv2_jax.weights.vfi import write_vfi_folder

    module, params, _ = tiny
    folder = write_vfi_folder(tmp_path / "vfi", module, params)
    for pipe in (load_vfi_pipeline(folder), load_pipeline(folder)):
        assert isinstance(pipe, FrameInterpolationPipeline) and pipe.module == module
        for a, b in zip(jax.tree.leaves(pipe.params), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_input_is_named(tiny, tmp_path):
    pipe = tiny[2]
    video = _video()
    with pytest.raises(ValueError, match="at least 2 frames"):
        pipe(video[:1])
    for factor in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="factor must be an integer"):
            pipe(video, factor=factor)
    with pytest.raises(ValueError, match="batch_size"):
        pipe(video, batch_size=0)
    with pytest.raises(ValueError, match=r"\[F,H,W,3\]"):
        pipe(video[..., :2])
    with pytest.raises(ValueError, match=r"\[F,H,W,3\]"):
        pipe(video[0])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pipe(video.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 or float"):
        pipe(video.astype(np.int32))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_vfi_pipeline(tmp_path / "missing")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match="not a FrameInterpolator"):
        load_vfi_pipeline(tmp_path / "unet")
