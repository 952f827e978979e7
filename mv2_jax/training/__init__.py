"""Training: the train state, losses, the jitted step, checkpoints and the loop `train.py` runs.

`restore_params(workdir, step=None, ema=False)` returns a run's trained params (outside
checks use it)."""

from mv2_jax.training.checkpoint import restore_params

__all__ = ["restore_params"]
