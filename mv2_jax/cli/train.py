"""Train a stage of the cascade: `python train.py --config configs/t2i.py:tiny --workdir DIR`.

Configs are ml_collections files with named variants (`file.py:variant`); any key can be
overridden with `--config.key=value` (unknown keys are an error). A run resumes from the newest
checkpoint in `--workdir` by itself. Multi-host: pass `--coordinator_address`,
`--num_processes` and `--process_id` (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID; on Cloud TPU nothing is needed). Installed, the same program is `mv2-train`;
it needs the [train] extra and says so in one line without it (mv2_jax/extras.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# absl comes with the core install too (optax, orbax and ml_collections need it).
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mv2_jax.commands.config_errors import parse_flags_or_exit
from mv2_jax.extras import require_train_extra

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/t2i.py:tiny.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, metrics and the config; a run resumes from it."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", None, "Multi-process on CPU: 'gloo' (for tests on one machine)."
)
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Write a jax.profiler trace of a few steps to WORKDIR/profile."
)
_PRECOMPUTE_TO = flags.DEFINE_string(
    "precompute_to",
    None,
    "Instead of training: encode the config's data (VAE latents, text embeddings) into a "
    "dataset in this folder, for --config.data.precomputed_dir.",
)
_PRECOMPUTE_EXAMPLES = flags.DEFINE_integer(
    "precompute_examples", None, "With --precompute_to: how many examples to encode."
)
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
    import jax

    if _CPU_COLLECTIVES.value:
        jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    explicit = _COORDINATOR.value or _NUM_PROCESSES.value is not None
    if explicit or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
        _use_coordination_barriers()


def _use_coordination_barriers() -> None:
    """orbax's checkpoint barriers through the coordination service (5 min timeout) rather
    than a device collective: on CPU that is gloo, which aborts the process when one process
    reaches a checkpoint more than 30 s after the other (seen with two processes on 2 busy
    cores). Set for this program only (an absl flag orbax defines); `--experimental_orbax_use_
    distributed_barrier=false` on the command line keeps orbax's default."""
    import orbax.checkpoint  # noqa: F401  (defines the flag)

    name = "experimental_orbax_use_distributed_barrier"
    if name in flags.FLAGS and not flags.FLAGS[name].present:
        flags.FLAGS[name].value = True


def _train(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every read at INFO
    logging.getLogger("mv2_jax").setLevel(logging.INFO)
    _initialize_distributed()
    if _PRECOMPUTE_TO.value:
        from mv2_jax.training.precompute import precompute

        if not _PRECOMPUTE_EXAMPLES.value:
            raise app.UsageError("--precompute_to needs --precompute_examples N")
        precompute(_CONFIG.value, _WORKDIR.value, _PRECOMPUTE_TO.value, _PRECOMPUTE_EXAMPLES.value)
    else:
        from mv2_jax.training.trainer import train

        train(_CONFIG.value, _WORKDIR.value, profile=_PROFILE.value)
    _shutdown_distributed()


def _shutdown_distributed() -> None:
    """Leave a multi-process run together, after a run that ended well. jax registers no
    shutdown at exit: without this, process 0's coordination service was torn down with the
    interpreter while process 1 still polled it, and on busy CPUs one of them aborted (SIGABRT,
    PollForError) after training had finished. `shutdown` waits at the service's shutdown
    barrier until every process has arrived."""
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def main() -> None:
    """`python train.py ...` and `mv2-train ...`: absl parses the flags and runs `_train`."""
    require_train_extra(Path(sys.argv[0]).name)
    _help_from_this_module()
    try:
        app.run(_train, flags_parser=parse_flags_or_exit)
    except SystemExit as exit_:  # absl ends --help with status 1; asking for help succeeded
        helped = {"--help", "-h", "-?", "--helpfull"} & set(sys.argv[1:])
        sys.exit(0 if helped and exit_.code == 1 else exit_.code)


def _help_from_this_module() -> None:
    """absl's --help prints the main module's docstring and flags; the main module is the thin
    train.py or the mv2-train script, so hand them this module's."""
    sys.modules["__main__"].__doc__ = __doc__
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
