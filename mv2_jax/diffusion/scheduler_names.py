"""The sampling algorithms' names, without importing jax: what command lines check `--scheduler`
against before anything heavy loads (tests hold it equal to `schedulers.SCHEDULERS`)."""

SCHEDULER_NAMES = ("ddpm", "ddim", "dpmpp_2m", "euler", "euler_a", "lcm", "tcd", "unipc")
