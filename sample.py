"""Sampling from the command line.

    python sample.py t2i --model FOLDER --prompt "a red fox in snow" --out samples/
    python sample.py t2v --model FOLDER --prompt "a red fox running" --out fox.mp4
    python sample.py i2v --model FOLDER --image key.png --prompt "a red fox running" --out k.mp4
    python sample.py v2v --model FOLDER --input k.mp4 --prompt "a red fox running" --out hi.mp4
    python sample.py vfi --input keyframes.mp4 --factor 3 --out frames.mp4
    python sample.py "a prompt" --t2i-model SD --i2v-model ANIMATEDIFF --out video.mp4
                                        the whole cascade: T2I → I2V → V2V → VFI

Every image is written as `OUT/00000.png` with `OUT/00000.json` beside it holding the settings
and library versions that made it; a video `OUT.mp4` gets `OUT.json`. Each subcommand lives in
`mv2_jax/commands/` (its flags, checks, run); this file picks one and reports errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from a checkout: make the package next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mv2_jax.commands import cascade, i2v, t2i, t2v, v2v, vfi
from mv2_jax.commands.common import run_reporting_errors, use_compilation_cache

COMMANDS = {"cascade": cascade, "t2i": t2i, "t2v": t2v, "i2v": i2v, "v2v": v2v, "vfi": vfi}
COMING: dict[str, str] = {}
CASCADE = 'python sample.py "a prompt" ... runs the whole cascade (`sample.py cascade --help`)'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sample.py",
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] not in (*COMMANDS, *COMING) and not argv[0].startswith("-"):
        argv = ["cascade", *argv]  # the default subcommand: a prompt comes first
    if argv[0] in COMING and not {"-h", "--help"} & set(argv):
        print(f"sample.py {argv[0]}: {COMING[argv[0]]}; not available yet", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    use_compilation_cache(getattr(args, "compilation_cache", None))
    return run_reporting_errors(f"sample.py {args.command}", COMMANDS[args.command].run, args, argv)


if __name__ == "__main__":
    sys.exit(main())
