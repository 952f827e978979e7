"""`sample.py batch --prompts FILE --seeds N --out DIR [cascade flags]`: the cascade of
`sample.py "a prompt"` over a list of (prompt, seed) items, one `DIR/<stem>.mp4` with its JSON
sidecar (`mv2_jax.studies.sidecar`) per item — an arm of a side-by-side study.

The models load once. Each item's video is the one `sample.py "PROMPT" --seed SEED` makes with
the same flags (the item's seed plays --seed). Reruns skip finished items: the name of an
item's files comes from its (prompt, seed), and its sidecar must hold this run's settings (a
folder made with other settings is refused, so an arm never mixes two). The video and then
its sidecar are renamed into place; Ctrl-C leaves neither half-written. `--shard i/n` takes
every n-th item from the i-th; processes joined by jax.distributed (JAX_COORDINATOR_ADDRESS
set, as for train.py) split their shard further, unless --mesh makes them one program: then
they run every item together and process 0 writes (DIR on a shared file system).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from mv2_jax.commands.cascade import CascadeFlags, outside_the_shipped_world
from mv2_jax.commands.common import (
    RuntimeFlags,
    UsageError,
    build_mesh,
    from_namespace,
    output_problems,
    say,
    versions,
)
from mv2_jax.commands.prompt_list import (
    BatchItem,
    read_items,
    shard_flag,
    shard_items,
    shard_problems,
)
from mv2_jax.commands.session import Session
from mv2_jax.commands.stages import (
    StageRunFlags,
    add_stage_flags,
    build_cascade,
    stage_run_flags,
    stage_run_problems,
    stage_settings,
    stage_settings_record,
)
from mv2_jax.commands.video import command_line, stage_video
from mv2_jax.studies.sidecar import read_sidecar

POSTFIX_LENGTH = 40  # characters of the stage line shown after the bar


@dataclass(frozen=True)
class BatchFlags:
    prompts: str
    seeds: int
    out: str
    shard: tuple[int, int] | None
    stages: StageRunFlags

    @property
    def runtime(self) -> RuntimeFlags:
        return self.stages.runtime


def add_parser(commands) -> None:
    batch = commands.add_parser(
        "batch",
        help="the cascade over a prompt list: one video + JSON sidecar per (prompt, seed), "
        "resumable, shardable (a study's arm)",
        description='Run the whole cascade (as `sample.py "a prompt"`, with every one of its '
        "flags) for each (prompt, seed) of a prompt list, loading the models once. Writes "
        "OUT/<stem>.mp4 and OUT/<stem>.json per item; a rerun skips finished items.",
    )
    flag = batch.add_argument
    flag(
        "--prompts",
        required=True,
        metavar="FILE",
        help="a .txt file, one prompt a line (blank lines and # comments skipped), or a .jsonl "
        'file, one {"prompt": …, "seed": …, "negative": …} a line (seed and negative optional)',
    )
    flag(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="seeds of each prompt without its own: --seed … --seed+N−1 (default 1: seed 0)",
    )
    flag("--out", required=True, metavar="DIR", help="the arm's folder (created if missing)")
    flag(
        "--shard",
        type=shard_flag,
        metavar="I/N",
        help="make only shard I of N (0 ≤ I < N): every N-th item from the I-th, for N "
        "machines sharing the work (default: all, or this process's part under jax.distributed)",
    )
    add_stage_flags(batch)


def settings(args: argparse.Namespace) -> BatchFlags:
    return from_namespace(BatchFlags, args, stages=stage_run_flags(args))


def check(flags: BatchFlags) -> None:
    """Every cheap check, all problems at once: the cascade's flags, the prompt list, the
    shard and the output folder."""
    problems = stage_run_problems(flags.stages, key_image=None)
    if flags.seeds < 1:
        problems.append(f"--seeds {flags.seeds}: at least 1 seed a prompt")
    else:
        try:
            read_items(flags.prompts, flags.seeds, flags.stages.seed)
        except UsageError as e:
            problems.append(str(e))
    problems += shard_problems(flags.shard)
    problems += output_problems("--out", flags.out, folder=True)
    if problems:
        raise UsageError("\n".join(problems))


# ------------------------------------------------------------------------ what an item is


def item_stages(stages: StageRunFlags, item: BatchItem) -> StageRunFlags:
    """The cascade flags of `sample.py "PROMPT" --seed SEED`: the item's seed as --seed, its
    negative prompt (if it has one) as --negative-prompt."""
    negative = stages.negative_prompt if item.negative_prompt is None else item.negative_prompt
    return replace(stages, seed=item.seed, negative_prompt=negative)


def item_record(stages: StageRunFlags, item: BatchItem) -> dict:
    """The head of the item's sidecar: everything that decides its pixels, known before a
    model loads; a rerun compares it to find the item finished. As JSON reads it back."""
    own = item_stages(stages, item)
    record = {
        "prompt": item.prompt,
        "seed": item.seed,
        "negative_prompt": own.negative_prompt,
        "video": f"{item.stem}.mp4",
        "models": {stage: None if folder is None else str(Path(folder).resolve())
                   for stage, folder in own.models.items()},
        "loras": {stage: [str(lora) for lora in given.lora]
                  for stage, given in own.stages.items() if given.lora},
        "cascade": {"skip": sorted(own.skipped(None)), "num_frames": own.num_frames,
                    "factor": own.factor},
        "stages": stage_settings_record(stage_settings(own)),
        "fps": own.fps,
        "dtype": own.device.dtype,
    }  # fmt: skip
    return json.loads(json.dumps(record))  # tuples become lists, as in the file


def first_difference(found: dict, expected: dict, where: str = "") -> str | None:
    """The first key of `expected` whose value `found` does not hold, said in words."""
    for key, value in expected.items():
        name = f"{where}{key}"
        if key not in found:
            return f"{name} missing there"
        if isinstance(value, dict) and isinstance(found[key], dict):
            inner = first_difference(found[key], value, f"{name}.")
            if inner:
                return inner
        elif found[key] != value:
            return f"{name} is {found[key]!r} there, {value!r} here"
    return None


def sort_items(folder: Path, records: dict[BatchItem, dict]) -> tuple[list, list]:
    """(finished, to make) of the items; a UsageError when sidecars in `folder` hold other
    settings for any of them. An unreadable sidecar or a missing video: made again."""
    finished, to_make, conflicts = [], [], []
    for item, record in records.items():
        sidecar = folder / f"{item.stem}.json"
        try:
            found = read_sidecar(sidecar) if sidecar.is_file() else None
        except ValueError:
            found = None
        difference = None if found is None else first_difference(found, record)
        if difference:
            conflicts.append(f"{sidecar.name}: {difference}")
        elif found is not None and (folder / record["video"]).is_file():
            finished.append(item)
        else:
            to_make.append(item)
    if conflicts:
        raise UsageError(
            f"--out {folder}: {len(conflicts)} video(s) there were made with other settings "
            f"(first: {conflicts[0]}); pass another --out for these settings, or delete those "
            "videos to make them again"
        )
    return finished, to_make


# ------------------------------------------------------------------------------------ run


class StageLines:
    """Where the cascade reports each stage: progress lines, then (once the bar is open) the
    bar's postfix, so that lines do not break it."""

    def __init__(self, progress):
        self.progress, self.bar = progress, None

    def __call__(self, line: str, **_) -> None:
        if self.bar is None:
            self.progress(line)
        else:
            brief = line if len(line) <= POSTFIX_LENGTH else line[: POSTFIX_LENGTH - 1] + "…"
            self.bar.set_postfix_str(brief, refresh=True)

    def written(self, line: str) -> None:
        """A line on stdout that names what was written."""
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.write(line, file=sys.stdout)


def join_processes() -> None:
    """Join the other processes of a jax.distributed launch (JAX_COORDINATOR_ADDRESS set)."""
    import jax

    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def this_process_items(flags: BatchFlags, items: list[BatchItem]) -> tuple[list, bool]:
    """(this process's items, whether it writes them): its --shard, split further among the
    processes of a jax.distributed launch unless one --mesh spans them (then process 0 writes)."""
    import jax

    index, count = flags.shard or (0, 1)
    mine = shard_items(items, index, count)
    if jax.process_count() == 1:
        return mine, True
    if flags.stages.device.mesh is not None:
        return mine, jax.process_index() == 0
    return shard_items(mine, jax.process_index(), jax.process_count()), True


def run(flags: BatchFlags, session: Session) -> int:
    join_processes()
    items = read_items(flags.prompts, flags.seeds, flags.stages.seed)
    mine, writes = this_process_items(flags, items)
    folder = Path(flags.out)
    records = {item: item_record(flags.stages, item) for item in mine}
    finished, to_make = sort_items(folder, records)
    share = f"{len(mine)} of {len(items)}" if len(mine) < len(items) else f"{len(items)}"
    say(f"{share} (prompt, seed) items; {len(finished)} already in {folder}")
    if not to_make:
        print(f"no new videos: all {len(mine)} are in {folder}")
        return 0
    note_prompts_outside_the_shipped_world(flags, to_make)
    mesh = build_mesh(flags.stages.device.mesh)
    lines = StageLines(session.progress)
    cascade = build_cascade(flags.stages, None, lines)
    facts = {
        "mesh": None if mesh is None else dict(mesh.shape),
        "command": command_line(session),
        "prompt_file": str(Path(flags.prompts).resolve()),
        "versions": versions(),
    }
    for number, item in enumerate(to_make):
        if number == 0:
            session.progress("compiling or restoring the compiled programs of every stage")
        elif lines.bar is None:  # from the second video on, compiled: a bar with a fair ETA
            session.progress(f"sampling {len(to_make) - 1} more videos", reminders=False)
            lines.bar = open_bar(len(mine), len(finished) + 1, enabled=writes)
        frames, plan = make_video(cascade, item_stages(flags.stages, item), item.prompt, mesh)
        if writes:
            record = {**records[item], "plan": asdict(plan), **facts, "prompt_line": item.line}
            path = write_item(replace(session, progress=lines), folder, item, frames, record)
            lines.written(f"wrote {path} ({frames.shape[0]} frames)")
        if lines.bar is not None:
            lines.bar.update(1)
    if lines.bar is not None:
        lines.bar.close()
    print(f"{len(to_make)} new video(s) in {folder}, {len(finished)} already there")
    return 0


def note_prompts_outside_the_shipped_world(flags: BatchFlags, items: list[BatchItem]) -> None:
    """`sample.py "a prompt"`'s note for prompts the shipped models were not trained on, once."""
    prompts = dict.fromkeys(item.prompt for item in items)
    notes = [
        outside_the_shipped_world(CascadeFlags(p, None, "", False, flags.stages)) for p in prompts
    ]
    notes = [note for note in notes if note]
    if notes:
        more = f" ({len(notes) - 1} more prompts like it)" if len(notes) > 1 else ""
        say(notes[0] + more)


def make_video(cascade, stages: StageRunFlags, prompt: str, mesh):
    """The frames `[N,H,W,3]` of `prompt` and the plan, called as `sample.py cascade` calls the
    cascade."""
    settings = stage_settings(stages)
    call = dict(key_image=None, num_frames=stages.num_frames, factor=stages.factor)
    plan = cascade.plan(**call, **settings)
    out = cascade(
        prompt,
        negative_prompt=stages.negative_prompt,
        **call,
        **settings,
        vfi_batch_size=stages.vfi_batch_size,
        mesh=mesh,
        progress=stages.device.step_progress,
        guidance_batching=stages.device.guidance_batching,
    )
    return out.frames, plan


def write_item(session: Session, folder: Path, item: BatchItem, frames, record: dict) -> Path:
    """The item's video, then its sidecar (`record` + the frame count and the time), renamed
    into place together, after the partial files a killed run left for the item are removed."""
    record = {
        **record,
        "frames": int(frames.shape[0]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for partial in folder.glob(f".{item.stem}-partial-*"):
        partial.unlink(missing_ok=True)
    path = stage_video(session, frames, str(folder / record["video"]), record["fps"], record)
    session.guard.commit()
    return path


def open_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="video",
        desc="videos",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not enabled,
    )
