"""Tests of mv2_jax.data."""
