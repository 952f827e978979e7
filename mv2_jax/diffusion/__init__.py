"""Noise schedules, schedulers, guidance and the lax.scan denoising loop."""
