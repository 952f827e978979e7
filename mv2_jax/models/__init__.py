"""Flax (linen) models, channels-last, with diffusers' / transformers' names and configs."""
