"""The command-line programs, one module each with `main`: `sample` (`python sample.py`,
`mv2-sample`), `train` (`train.py`, `mv2-train`), `evaluate` (`evaluate.py`, `mv2-evaluate`)
and `convert` (`convert/to_flax.py`, `mv2-convert`). The scripts at the top of a checkout and
the installed entry points (pyproject.toml) both call these; sample.py's subcommands are in
`mv2_jax/commands/`."""
