"""Logical-axis rules: which mesh axes each logical name (on params, see
`mv2_jax.models.layers`, and on activations) is sharded over. Plain data, so configs can pass
their own or override a few names with `override_rules`."""

from __future__ import annotations

from collections.abc import Mapping

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    # Params. FSDP splits every large matrix over `fsdp` on its model-width axis; when two dims
    # of one param ask for the same mesh axis, the larger dim gets it (see sharding.mesh_spec).
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("vocab", "fsdp"),
    # Tensor parallelism (Megatron): attention heads and MLP hidden units over `tensor`.
    ("heads", "tensor"),
    ("mlp", "tensor"),
    # Conv input channels stay whole (their output channels already carry `fsdp`); norm
    # scales and biases are tiny, so copies are cheaper than the gathers.
    ("conv_in", None),
    ("norm", None),
    # Activations: the batch over every data-parallel axis, video frames over `frames`.
    ("batch", ("data", "fsdp")),
    ("frames", "frames"),
    # A video's batch folded with its frames ([B·F], spatial layers) or with its pixels
    # ([B·H·W], temporal layers): either way split over every axis, with no gather between.
    ("video_rows", ("data", "fsdp", "frames")),
)


def rule_table(rules: Rules) -> dict[str, tuple[str, ...]]:
    """`{logical name: mesh axes}` with every value a tuple; a name given twice is an error
    (an override that silently lost to an earlier rule would be hard to see)."""
    table: dict[str, tuple[str, ...]] = {}
    for name, axes in rules:
        if name in table:
            raise ValueError(f"logical axis {name!r} has two rules; use override_rules")
        table[name] = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return table


def override_rules(rules: Rules, overrides: Mapping[str, MeshAxes]) -> Rules:
    """`rules` with the names in `overrides` mapped anew (new names appended), e.g.
    `override_rules(DEFAULT_RULES, {"heads": None})` for pure FSDP."""
    kept = tuple((name, overrides.get(name, axes)) for name, axes in rules)
    known = {name for name, _ in rules}
    return kept + tuple((name, axes) for name, axes in overrides.items() if name not in known)
