"""`train.py`'s flag and config errors as one line each (exit code 2), not a traceback: an
unknown `--config.KEY` names the nearest key and where keys are documented, a bad value or an
unknown flag says what absl said. Given to absl as `app.run(main, flags_parser=...)`."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

KEYS_DOCUMENTED = "configs/common.py"


def parse_flags_or_exit(argv: Sequence[str], prog: str = "train.py") -> list[str]:
    """absl's parse of `argv` (the arguments it leaves); any error ends the process with one
    line, `PROG: error: …`, and exit code 2."""
    from absl import flags

    try:
        rest = flags.FLAGS(list(argv))
        line = _unloadable_config(argv)
    except Exception as e:  # absl's flags.Error, and what loading or overriding a config raises
        line = unknown_config_key(argv) or _one_line(str(e)) or type(e).__name__
    if line is None:
        return rest
    print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)


def unknown_config_key(argv: Sequence[str]) -> str | None:
    """The first `--config.KEY` override whose key the config lacks, as a line naming the
    nearest key; None when every key exists (or the config itself cannot be loaded)."""
    from absl import flags

    spec = _flag_value(argv, "--config")
    if spec is None or "config" not in flags.FLAGS:
        return None
    try:
        config = flags.FLAGS["config"].parser.parse(spec)
    except Exception:  # the config file is the problem; absl's message says so
        return None
    for path in _overrides(argv):
        node, walked = config, []
        for key in path.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if key not in keys:
                where = ".".join(["config", *walked])
                near = difflib.get_close_matches(key, keys, n=1, cutoff=0.0)
                hint = f"the nearest is --{where}.{near[0]}" if near else f"{where} has no keys"
                return (
                    f"--config.{path}: no such key in {spec}; {hint} (keys are documented in "
                    f"{KEYS_DOCUMENTED})"
                )
            node, walked = node[key], [*walked, key]
    return None


def _unloadable_config(argv: Sequence[str]) -> str | None:
    """config_flags keeps a config file it cannot load as an error raised at first use; that
    error as one line, None when the config loaded."""
    from absl import flags

    if "config" not in flags.FLAGS or flags.FLAGS["config"].value is None:
        return None
    try:
        flags.FLAGS["config"].value.keys()
    except OSError as e:
        reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        return f"--config {_flag_value(argv, '--config')}: cannot load it ({reason})"
    return None


def _one_line(message: str) -> str:
    """A message as one line; of one that quotes a traceback (a config's `get_config` raised),
    its last line, the exception itself."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return " ".join(lines)


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _overrides(argv: Sequence[str]) -> list[str]:
    """The dotted keys of `--config.KEY=VALUE` / `--config.KEY VALUE` flags."""
    return [arg[len("--config.") :].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
