"""`sample.py`'s subcommands, one module each with `add_parser(commands)` and
`run(args, argv) -> int`; the flags and checks they share live in `common.py` (all) and
`video.py` (the video subcommands)."""
