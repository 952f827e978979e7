"""Frame (sequence) parallelism of the video UNet on 8 simulated CPU devices: with the video's
frames split over the mesh's `frames` axis, the result equals one device's, every device does
its share of the work, and temporal attention swaps frames for pixels (all-to-all)."""

import jax
import numpy as np

from mv2_jax.models.motion import UNetMotionModel
from mv2_jax.parallel import batch_sharding, make_mesh, module_shardings
from tests.reference import relative_error

UNET = UNetMotionModel(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    norm_num_groups=8,
    cross_attention_dim=16,
    num_attention_heads=2,
    motion_num_attention_heads=2,
    layers_per_block=1,
    motion_max_seq_length=8,
)


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 8, 4), np.float32)
    t = np.array([3.0, 600.0], np.float32)
    context = rng.standard_normal((2, 5, 16), np.float32)
    return x, t, context


def test_frames_split_over_the_mesh_match_one_device():
    x, t, context = _inputs()
    params = jax.jit(UNET.init)(jax.random.key(0), x[:, :2], t, context)["params"]
    # motion modules' proj_out start at zero: give them weights so time mixing is tested
    params = jax.tree.map(lambda p: p + 0.02, params)

    def apply(p, x, t, c):
        return UNET.apply({"params": p}, x, t, c)

    expected = jax.jit(apply)(params, x, t, context)

    mesh = make_mesh("data:2,frames:4")
    video = batch_sharding(mesh, 5, frames=True, shape=x.shape)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = module_shardings(UNET, (x[:, :2], t, context), mesh)
    sharded = jax.jit(
        apply,
        in_shardings=(shardings, video, replicated, replicated),
        out_shardings=video,
    )
    with jax.set_mesh(mesh):
        out = sharded(params, x, t, context)
        compiled = sharded.lower(params, x, t, context).compile()
    assert out.sharding.spec == video.spec
    assert relative_error(out, expected) <= 1e-5

    # each device does an eighth of the work, and frames ↔ pixels are swapped by all-to-all
    # for temporal attention rather than gathered whole
    single = jax.jit(apply).lower(params, x, t, context).compile()
    flops = single.cost_analysis()["flops"] / compiled.cost_analysis()["flops"]
    assert flops >= 7.5, flops
    assert "all-to-all" in compiled.as_text()
