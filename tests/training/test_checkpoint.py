"""`mv2_jax.training.checkpoint` keeps its orbax type handlers to itself: using it leaves
orbax's process-wide registry as it was (its handler for `jax.Array`s is its own, in a local
registry), and params still round-trip through its manager."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mv2_jax.training import checkpoint


def global_handlers() -> dict:
    return {t: ocp.type_handlers.get_type_handler(t) for t in ocp.type_handlers.supported_types()}


def test_the_global_registry_is_left_as_it_was(tmp_path):
    before = global_handlers()
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    with checkpoint.make_manager(tmp_path / "run") as manager:
        after = global_handlers()
        assert all(after[t] is before[t] for t in before)
        manager.save(0, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params)))
        manager.wait_until_finished()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
        )
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        target = ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args)
        restored = manager.restore(0, args=ocp.args.Composite(params=target))["params"]
    jax.tree.map(np.testing.assert_array_equal, restored, params)
    assert all(global_handlers()[t] is before[t] for t in before)
    local = checkpoint.array_type_handlers().get(jax.Array)
    assert local is not before[jax.Array]
