"""Data, FSDP, tensor and frame parallelism: meshes (`mesh`), logical-axis rules (`rules`) and
the shardings they give params and inputs (`sharding`)."""

from mv2_jax.parallel.mesh import MESH_AXES, make_mesh, parse_mesh_spec, single_device_mesh
from mv2_jax.parallel.rules import DEFAULT_RULES, override_rules
from mv2_jax.parallel.sharding import (
    batch_sharding,
    component_shardings,
    constrain,
    init_sharded,
    logical_specs,
    mesh_spec,
    module_shardings,
    module_shardings_for,
    param_shardings,
    per_device_bytes,
    shard_params,
    sharded_init,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "batch_sharding",
    "component_shardings",
    "constrain",
    "init_sharded",
    "logical_specs",
    "make_mesh",
    "mesh_spec",
    "module_shardings",
    "module_shardings_for",
    "override_rules",
    "param_shardings",
    "parse_mesh_spec",
    "per_device_bytes",
    "shard_params",
    "sharded_init",
    "single_device_mesh",
]
