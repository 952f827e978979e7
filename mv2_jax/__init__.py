"""mv2-jax: the MagicVideo-V2 text-to-video cascade in JAX/Flax."""

__all__ = ["load_component", "load_pipeline"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # jax, flax and the pipelines load when first used, so that `import mv2_jax` (and a command
    # line checking its flags) takes milliseconds.
    if name == "load_component":
        from mv2_jax.weights.load import load_component

        return load_component
    if name == "load_pipeline":
        from mv2_jax.pipelines.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'mv2_jax' has no attribute {name!r}")
