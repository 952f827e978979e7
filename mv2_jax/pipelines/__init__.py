"""Pipelines: loading diffusers-format folders, text-to-image (and the video stages to come)."""
