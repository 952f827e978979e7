"""PyTorch → Flax weights: safetensors IO, declarative key mappings, component loading."""
