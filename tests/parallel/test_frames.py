"""Frame (sequence) parallelism of the video UNet on 8 simulated CPU devices: with the video's
frames split over the mesh's `frames` axis, the result equals one device's, every device does
its share of the work, and temporal attention swaps frames for pixels (all-to-all), in the
compute dtype."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mv2_jax.models.motion import AnimateDiffTransformer3D, UNetMotionModel
from mv2_jax.parallel import batch_sharding, make_mesh, module_shardings
from mv2_jax.parallel.collectives import collectives
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


def test_a_bf16_training_step_swaps_frames_and_pixels_in_bf16(tmp_path):
    """The motion module's frames ↔ pixels swaps (all-to-all, forward and backward) move the
    compute dtype: unconstrained after its GroupNorm, the partitioner swapped the fp32
    normalised values and their gradient instead (benchmarks/plan.py's video rows, issue 23).
    Read from the module right after SPMD partitioning: XLA:CPU widens bf16 collectives to
    f32 later, GPU and TPU do not."""
    module = AnimateDiffTransformer3D(
        num_attention_heads=2, attention_head_dim=32, num_frames=8, dtype=jnp.bfloat16
    )
    x = jnp.ones((4 * 8, 8, 8, 64), jnp.bfloat16)  # [B·F, H, W, C]
    params = jax.jit(module.init)(jax.random.key(0), x)
    mesh = make_mesh("data:2,fsdp:2,frames:2")

    def loss(p, x):
        return module.apply(p, x).astype(jnp.float32).sum()

    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp", "frames")))
    step = jax.jit(jax.grad(loss), in_shardings=(None, rows))
    dump = {"xla_dump_to": str(tmp_path), "xla_dump_hlo_pass_re": "spmd-partitioning"}
    with jax.set_mesh(mesh):
        step.lower(params, x).compile(dump)
    [partitioned] = tmp_path.glob("*jit_loss*after_spmd-partitioning*.txt")
    swaps = [op.shape for op in collectives(partitioned.read_text()) if op.kind == "all-to-all"]
    assert len(swaps) >= 3 and all(shape.startswith("bf16[") for shape in swaps), swaps
