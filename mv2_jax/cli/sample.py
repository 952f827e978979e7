"""Sampling from the command line.

    python sample.py t2i --model FOLDER --prompt "a red fox in snow" --out samples/
    python sample.py t2v --model FOLDER --prompt "a red fox running" --out fox.mp4
    python sample.py i2v --model FOLDER --image key.png --prompt "a red fox running" --out k.mp4
    python sample.py v2v --model FOLDER --input k.mp4 --prompt "a red fox running" --out hi.mp4
    python sample.py vfi --input keyframes.mp4 --factor 3 --out frames.mp4
    python sample.py "a prompt" --t2i-model SD --i2v-model ANIMATEDIFF --out video.mp4
                                        the whole cascade: T2I → I2V → V2V → VFI
    python sample.py batch --prompts prompts.txt --seeds 4 --out arm/
                                        the cascade for every prompt × seed (a study's arm)

Every image is written as `OUT/00000.png` with `OUT/00000.json` beside it holding the settings
and library versions that made it; a video `OUT.mp4` gets `OUT.json`. Each subcommand lives in
`mv2_jax/commands/` (its flags, settings, checks, run); this module picks one. Progress goes
to stderr; Ctrl-C ends a run with one line and exit status 130, leaving no output behind.
Installed, the same program is `mv2-sample`.
"""

from __future__ import annotations

import sys
import time

from mv2_jax.commands import batch, cascade, i2v, t2i, t2v, v2v, vfi
from mv2_jax.commands.common import OneLineParser
from mv2_jax.commands.session import run_command

COMMANDS = {
    "cascade": cascade,
    "t2i": t2i,
    "t2v": t2v,
    "i2v": i2v,
    "v2v": v2v,
    "vfi": vfi,
    "batch": batch,
}
COMING: dict[str, str] = {}
CASCADE = 'python sample.py "a prompt" ... runs the whole cascade (`sample.py cascade --help`)'


def build_parser(prog: str = "sample.py") -> OneLineParser:
    parser = OneLineParser(
        prog=prog,
        description="Sample from the MagicVideo-V2 stages (JAX/Flax).",
        epilog=f"Without a subcommand: {CASCADE}.",
    )
    names = ",".join([*COMMANDS, *COMING])
    commands = parser.add_subparsers(dest="command", metavar=f"{{{names}}}")
    for command in COMMANDS.values():
        command.add_parser(commands)
    for name, text in COMING.items():
        commands.add_parser(name, help=f"{text}; not available yet", description=text)
    return parser


def main(
    argv: list[str] | None = None, started: float | None = None, prog: str = "sample.py"
) -> int:
    """`sample.py ARGS`; `started` (on `time.perf_counter()`'s clock): when the process began,
    for `--timings` (default: now); `prog` names the program in its messages."""
    started = time.perf_counter() if started is None else started
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in (*COMMANDS, *COMING) and not argv[0].startswith("-"):
        argv = ["cascade", *argv]  # the default subcommand: a prompt comes first
    if argv[0] in COMING and not {"-h", "--help"} & set(argv):
        print(f"{prog} {argv[0]}: {COMING[argv[0]]}; not available yet", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    return run_command(f"{prog} {args.command}", COMMANDS[args.command], args, argv, started)


def installed_main() -> int:
    """The installed `mv2-sample` command: `main` under that name."""
    return main(prog="mv2-sample")


if __name__ == "__main__":
    sys.exit(main())
