"""mv2-jax: the MagicVideo-V2 text-to-video cascade in JAX/Flax."""

from mv2_jax.weights.load import load_component

__all__ = ["load_component", "load_pipeline"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Pipelines pull in tokenizers and samplers; `import mv2_jax` stays light until they are used.
    if name == "load_pipeline":
        from mv2_jax.pipelines.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'mv2_jax' has no attribute {name!r}")
