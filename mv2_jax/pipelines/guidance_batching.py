"""Classifier-free guidance's two halves as one UNet batch or one after the other.

Under guidance every denoising step evaluates the UNet on the unconditional and the conditional
half of the batch. `"batched"` runs them as one batch of 2B, the fastest where memory allows;
`"sequential"` runs them as two calls of batch B inside the same sampler step (a two-step
`lax.map`, so only one half's activations are ever live: about half the UNet's activation
memory, for a second pass over its weights), with the same numbers. `"auto"` compiles the
batched program, reads what it needs from its memory figures (`Compiled.memory_analysis`) and
runs the sequential one when that exceeds the device's memory (`memory_stats()["bytes_limit"]`);
a device that states no limit (CPU) runs batched without compiling anything to decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mv2_jax.diffusion.guidance import classifier_free_guidance

log = logging.getLogger(__name__)


def guided_model(
    predict: Callable[[dict, jax.Array, jax.Array], jax.Array],
    inputs: dict,
    batch: int,
    use_cfg: bool,
    sequential: bool,
    guidance,
    rescale=0.0,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`model_fn(x [B,...], t)` for `denoise`. `predict(inputs, x, t)` is one model evaluation.
    Without guidance it sees `x` and `inputs` as they are; with it, either `[x; x]` (batched)
    and `inputs`, whose entries with a leading axis of 2B hold the halves `[unconditional;
    conditional]`, or (sequential) `x` twice with each half of those entries in turn. The two
    outputs are combined by classifier-free guidance (`guidance`, `rescale` may be traced)."""
    if not use_cfg:
        return lambda x, t: predict(inputs, x, jnp.broadcast_to(t, (x.shape[0],)))
    if not sequential:

        def batched(x, t):
            both = jnp.concatenate([x, x])
            out = predict(inputs, both, jnp.broadcast_to(t, (both.shape[0],)))
            uncond, cond = jnp.split(out, 2)
            return classifier_free_guidance(uncond, cond, guidance, rescale)

        return batched
    stacked, half_inputs = split_halves(inputs, batch)

    def one_after_the_other(x, t):
        t = jnp.broadcast_to(t, (x.shape[0],))
        out = jax.lax.map(lambda half: predict(half_inputs(half), x, t), stacked)
        return classifier_free_guidance(out[0], out[1], guidance, rescale)

    return one_after_the_other


def split_halves(inputs: dict, batch: int) -> tuple[list[jax.Array], Callable[[list], dict]]:
    """`(stacked, half_inputs)`: every leaf of `inputs` whose leading axis is `2·batch` (the
    guided pairs: text context, pooled and image embeddings, reference features, ControlNet
    conditions, low-res latents, class labels) as `[2, batch, ...]`, and `half_inputs(parts)`,
    `inputs` with those leaves replaced by `parts` (one half of each, in the same order). Leaves
    of `batch` rows (noise, images) and scalars are left whole."""
    leaves, tree = jax.tree.flatten(inputs)
    doubled = [
        i for i, leaf in enumerate(leaves) if jnp.ndim(leaf) and jnp.shape(leaf)[0] == 2 * batch
    ]
    stacked = [jnp.reshape(leaves[i], (2, batch, *jnp.shape(leaves[i])[1:])) for i in doubled]

    def half_inputs(parts: Sequence[jax.Array]) -> dict:
        halves = list(leaves)
        for i, part in zip(doubled, parts, strict=True):
            halves[i] = part
        return jax.tree.unflatten(tree, halves)

    return stacked, half_inputs


# ------------------------------------------------------------------------------- "auto"


def device_memory_limit(devices: Sequence[Any]) -> int | None:
    """The smallest `memory_stats()["bytes_limit"]` of `devices`, None when one of them states
    none (CPU)."""
    limits = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except (jax.errors.JaxRuntimeError, NotImplementedError):
            stats = None
        if not stats or "bytes_limit" not in stats:
            return None
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def program_bytes(compiled) -> int | None:
    """The device memory a compiled program needs: its arguments, outputs and temporaries
    (`memory_analysis()`, per device), less what outputs share with donated arguments; None
    where the backend does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def choose(compile_batched: Callable[[], Any], devices: Sequence[Any], name: str) -> str:
    """`"batched"` or `"sequential"` for an `"auto"` program: sequential when the batched
    program (`compile_batched()`, called only where `devices` state a memory limit) needs more
    than that limit. `name` says which program in the one log line that gives both figures."""
    limit = device_memory_limit(devices)
    if limit is None:
        return "batched"
    need = program_bytes(compile_batched())
    if need is None:
        log.info("%s: the backend gives no memory figures; guidance halves batched", name)
        return "batched"
    mode = "sequential" if need > limit else "batched"
    log.log(
        logging.WARNING if mode == "sequential" else logging.INFO,
        "%s: the guided batch needs %s, the device holds %s: guidance halves %s",
        name,
        _bytes(need),
        _bytes(limit),
        "one after the other" if mode == "sequential" else "batched",
    )
    return mode


def _bytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.2f} MB"
