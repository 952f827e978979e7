"""mv2-jax: the MagicVideo-V2 text-to-video cascade in JAX/Flax."""

from mv2_jax.weights.load import load_component

__all__ = ["load_component"]
__version__ = "0.1.0"
