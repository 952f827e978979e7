"""The training loop shared by every stage, in the order it runs: mesh → model → data →
sharded state (restored if the workdir has a checkpoint) → jitted step → loop with metrics
and checkpoints. `train.py` parses the command line and calls `train(config, workdir)`.
"""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path

import jax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from mv2_jax.parallel.mesh import make_mesh
from mv2_jax.parallel.sharding import batch_sharding
from mv2_jax.training import checkpoint
from mv2_jax.training.config_data import check_data_config
from mv2_jax.training.lora import LoraStage, lora_settings
from mv2_jax.training.metrics import MetricsWriter, step_flops
from mv2_jax.training.optim import learning_rate_schedule, make_optimizer, trainable_paths
from mv2_jax.training.random_pipeline import write_random_pipeline
from mv2_jax.training.stage_contract import (
    CountsSkipped,
    ReadsEma,
    TrainingStage,
    check_stage_class,
)
from mv2_jax.training.state import TrainState, create_state, init_state_on_mesh, state_shardings
from mv2_jax.training.step import make_train_step
from mv2_jax.weights.new_folder import written_once

log = logging.getLogger(__name__)

# config.stage → its class, imported when a run asks for it. Each class has every member of
# `mv2_jax.training.stage_contract.TrainingStage`, checked when the run starts.
STAGES = {
    "t2i": "mv2_jax.training.t2i:TextToImageStage",
    "i2v": "mv2_jax.training.i2v:ImageToVideoStage",
    "v2v": "mv2_jax.training.v2v:VideoToVideoStage",
    "vfi": "mv2_jax.training.vfi:FrameInterpolationStage",
    "vae": "mv2_jax.training.vae:AutoencoderStage",
    "clip": "mv2_jax.training.clip:ContrastiveStage",
    "reward_model": "mv2_jax.training.reward_model:RewardModelStage",
    "reward_gradient": "mv2_jax.training.reward_gradient:RewardGradientStage",
}


def stage_class(name: str) -> type[TrainingStage]:
    """The class of stage `name` (see STAGES), checked to have every member of `TrainingStage`."""
    if name not in STAGES:
        raise ValueError(f"config.stage={name!r}; choose one of {sorted(STAGES)}")
    module, cls = STAGES[name].split(":")
    return check_stage_class(getattr(importlib.import_module(module), cls), name)


def run_stage_class(config) -> type[TrainingStage]:
    """The class of the run's stage: config.stage's, or `LoraStage` around it where
    `config.model.lora.rank` > 0 (`mv2_jax.training.lora`); a config with a `dpo` section
    (configs/dpo.py) tunes that stage's model on preference pairs (`mv2_jax.training.dpo`); one
    with an `lcd` section distils it into a few-step LoRA student (`mv2_jax.training.lcd`)."""
    if config.get("dpo") is not None:
        from mv2_jax.training.dpo import PreferenceStage

        return check_stage_class(PreferenceStage, "dpo")
    if config.get("lcd") is not None:
        from mv2_jax.training.lcd import ConsistencyDistillationStage

        return check_stage_class(ConsistencyDistillationStage, "lcd")
    return LoraStage if lora_settings(config) else stage_class(config.stage)


def check_config(config) -> None:
    """Errors that would otherwise surface minutes later, deep in a trace."""
    stage_class(config.stage)
    cls = run_stage_class(config)
    lora_settings(config)  # a LoRA on a stage without one, or without targets
    per_step = jax.process_count() * config.grad_accum_steps
    if config.batch_size % per_step:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by processes × grad_accum_steps "
            f"= {jax.process_count()} × {config.grad_accum_steps}"
        )
    if cls.needs_pipeline and not (config.model.pipeline or config.model.init):
        raise ValueError("set config.model.pipeline (a pipeline folder) or config.model.init")
    if cls.needs_pipeline and config.model.pipeline and not Path(config.model.pipeline).is_dir():
        raise FileNotFoundError(
            f"config.model.pipeline={config.model.pipeline!r}: no such folder (a diffusers "
            "pipeline folder, or one written by convert/to_flax.py)"
        )
    if cls.uses_config_data:
        check_data_config(config)


def uses_pipeline(config) -> bool:
    """Whether the stage starts from a pipeline folder (the latent diffusion stages), rather
    than building its model from the config (vfi, vae, clip)."""
    return stage_class(config.stage).needs_pipeline


def model_folder(config, workdir: Path) -> Path:
    """The pipeline folder the run starts from; for a random init, written once (process 0)
    to WORKDIR/init_pipeline, where resumed runs and other processes find it."""
    if config.model.pipeline:
        return Path(config.model.pipeline)
    init = config.model.init.to_dict()
    return written_once(
        workdir / "init_pipeline", lambda out: write_random_pipeline(init, out, config.seed)
    )


def place_consts(consts: dict, mesh) -> dict:
    """A stage's frozen arrays on `mesh`: replicated, except those the stage placed on the
    mesh itself (Diffusion-DPO's frozen reference, sharded like the params it copies)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(place, consts)


def global_batch(local: dict, mesh, rules) -> dict:
    """Each process's rows → one global array per key, sharded over the batch axes."""

    def place(x):
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        sharding = batch_sharding(mesh, x.ndim, shape=shape, rules=rules)
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return {k: place(v) for k, v in local.items()}


def train(config, workdir: str | Path, *, profile: bool = False) -> TrainState:
    """Train until `config.total_steps`, resuming from the newest checkpoint in `workdir`."""
    check_config(config)
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    # ---- mesh and model
    mesh = make_mesh(config.mesh)
    rules = tuple(tuple(rule) for rule in config.sharding_rules)
    folder = model_folder(config, workdir) if uses_pipeline(config) else None
    stage = run_stage_class(config).from_config(config, folder, mesh, workdir=workdir)
    param_shardings = stage.param_shardings(mesh, rules)
    abstract_params = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        stage.param_shapes(),
        param_shardings,
    )
    paths = trainable_paths(abstract_params, stage.trainable_patterns(config.trainable))
    optimizer = make_optimizer(config)
    replicated = NamedSharding(mesh, PartitionSpec())
    consts = place_consts(stage.consts, mesh)

    # ---- data and state: the newest checkpoint, else a fresh state from the pipeline's params
    iterator = stage.make_data_iterator(config)
    abstract_state = jax.eval_shape(
        lambda p: create_state(p, optimizer, paths, config.seed), abstract_params
    )
    shardings = state_shardings(abstract_state, param_shardings, optimizer, paths, mesh)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        abstract_state,
        shardings,
    )
    meta = {"model": checkpoint.model_signature(abstract_params), "stage": config.stage}
    manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
    state = checkpoint.restore(manager, abstract_state, iterator, meta)
    if state is None:
        params = stage.load_params(param_shardings)
        state = init_state_on_mesh(params, optimizer, paths, config.seed, shardings)
    else:
        log.info("resumed from %s at step %d", manager.directory, int(state.step))

    # ---- the jitted step
    step_fn = make_train_step(
        stage.loss,
        optimizer,
        paths,
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.ema_decay,
        learning_rate=learning_rate_schedule(config),
        ema_in_consts=isinstance(stage, ReadsEma) and stage.reads_ema,
    )
    jitted = jax.jit(step_fn, out_shardings=(shardings, replicated), donate_argnums=(0,))

    # ---- the loop
    start = int(jax.device_get(state.step))
    writer = MetricsWriter(
        workdir, enabled=is_main, peak_tflops=config.peak_tflops_per_device, start_step=start
    )
    bar = tqdm(
        total=config.total_steps, initial=start, disable=not is_main, desc="train", unit="step"
    )
    trace_until = None
    for step in range(start, config.total_steps):
        batch = global_batch(stage.prepare(next(iterator)), mesh, rules)
        if profile and step == start + 1:
            jax.profiler.start_trace(str(workdir / "profile"))
            trace_until = step + config.profile_steps
        # The step is traced on the mesh: the models' `constrain` and Pallas kernels read it.
        with jax.set_mesh(mesh):
            if writer.flops_per_step is None and step == start:
                writer.flops_per_step = step_flops(jitted.lower(state, consts, batch))
            state, metrics = jitted(state, consts, batch)
        done = step + 1
        if trace_until is not None and done >= trace_until:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            trace_until = None
        if step == start:
            writer.start_interval(done)
        elif done % config.log_every == 0 or done == config.total_steps:
            row = writer.write(done, metrics, config.batch_size, **_skipped(iterator))
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            _check_finite(row, done)
        if done % config.checkpoint_every == 0 or done == config.total_steps:
            checkpoint.save(manager, state, iterator, meta)
        bar.update(1)
    if trace_until is not None:  # the run ended inside the traced steps
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
    bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    return state


def _skipped(iterator) -> dict:
    counts = iterator.skipped if isinstance(iterator, CountsSkipped) else {}
    return {f"skipped/{reason}": int(n) for reason, n in counts.items()}


def _check_finite(row: dict, step: int) -> None:
    if not math.isfinite(row["loss"]):
        raise FloatingPointError(
            f"loss is {row['loss']} at step {step}; the last checkpoint is intact. Lower lr, "
            "raise warmup_steps or check the data."
        )
