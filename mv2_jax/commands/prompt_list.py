"""The prompt list of `sample.py batch`: a .txt file (one prompt a line, blank lines and
`#` comments skipped) or a .jsonl file (one object a line: "prompt", optional "seed", optional
"negative"), expanded into (prompt, seed) items and split into shards."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from mv2_jax.commands.common import UsageError
from mv2_jax.studies.sidecar import video_stem

TEXT_SUFFIXES = (".txt", "")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSONL_KEYS = {"prompt", "seed", "negative", "negative_prompt"}


@dataclass(frozen=True)
class BatchItem:
    """One video to make: `negative_prompt` None means --negative-prompt's; `line`: where the
    prompt is in the file (1-based)."""

    prompt: str
    seed: int
    negative_prompt: str | None
    line: int

    @property
    def stem(self) -> str:
        return video_stem(self.prompt, self.seed)


@dataclass(frozen=True)
class PromptEntry:
    """One prompt of the file; `seed` None: it takes the run's seeds."""

    prompt: str
    seed: int | None
    negative_prompt: str | None
    line: int


def read_items(path: str, seeds: int, first_seed: int = 0) -> list[BatchItem]:
    """Every (prompt, seed) item of the prompt file, in file order: an entry without a seed
    gets `first_seed` … `first_seed + seeds − 1`. A UsageError names the file, the line and the
    fix for a missing or empty file, a malformed line, or a (prompt, seed) given twice."""
    entries = read_entries(path)
    items, first_line = [], {}
    for entry in entries:
        given = [entry.seed] if entry.seed is not None else range(first_seed, first_seed + seeds)
        for seed in given:
            key = (entry.prompt, seed)
            if key in first_line:
                raise UsageError(
                    f"--prompts {path} line {entry.line}: {entry.prompt!r} with seed {seed} "
                    f"again (line {first_line[key]} has it); each (prompt, seed) makes one "
                    "video: remove one of them"
                )
            first_line[key] = entry.line
            items.append(BatchItem(entry.prompt, seed, entry.negative_prompt, entry.line))
    return items


def read_entries(path: str) -> list[PromptEntry]:
    """The prompts of a .txt or .jsonl file (see the module docstring)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (*TEXT_SUFFIXES, *JSONL_SUFFIXES):
        raise UsageError(
            f"--prompts {path}: give a .txt file (one prompt a line) or a .jsonl file (one "
            '{"prompt": …, "seed": …, "negative": …} a line)'
        )
    if not file.is_file():
        raise UsageError(f"--prompts {path}: no such file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"--prompts {path}: cannot read it ({e}); give a UTF-8 text file"
        ) from None
    read = _jsonl_entry if suffix in JSONL_SUFFIXES else _text_entry
    entries = [read(path, number, line.strip()) for number, line in enumerate(lines, start=1)]
    entries = [entry for entry in entries if entry is not None]
    if not entries:
        raise UsageError(f"--prompts {path} holds no prompts; write one a line")
    return entries


def _text_entry(path: str, number: int, line: str) -> PromptEntry | None:
    if not line or line.startswith("#"):
        return None
    return PromptEntry(line, None, None, number)


def _jsonl_entry(path: str, number: int, line: str) -> PromptEntry | None:
    if not line:
        return None
    where = f"--prompts {path} line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f'{where}: not JSON ({e.msg}); write {{"prompt": "…"}}') from None
    if not isinstance(entry, dict):
        raise UsageError(f'{where}: a JSON object a line, e.g. {{"prompt": "…", "seed": 0}}')
    unknown = sorted(set(entry) - JSONL_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; use prompt, seed, negative")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f'{where}: needs "prompt", a non-empty string')
    seed = entry.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UsageError(f'{where}: "seed" is {seed!r}; give an integer or leave it out')
    if "negative" in entry and "negative_prompt" in entry:
        raise UsageError(f'{where}: give "negative" or "negative_prompt", not both')
    negative = entry.get("negative", entry.get("negative_prompt"))
    if negative is not None and not isinstance(negative, str):
        raise UsageError(f'{where}: "negative" is {negative!r}; give a string or leave it out')
    return PromptEntry(prompt, seed, negative, number)  # as written: arms pair by it


# -------------------------------------------------------------------------------- shards


def shard_flag(text: str) -> tuple[int, int]:
    """`--shard i/n` as (i, n); its range is checked with the other flags (`shard_problems`)."""
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        return int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give i/n, e.g. 0/4 (shards 0/4 … 3/4)"
        ) from None


def shard_problems(shard: tuple[int, int] | None) -> list[str]:
    if shard is None:
        return []
    index, count = shard
    if count < 1:
        return [f"--shard {index}/{count}: n is the number of shards, at least 1"]
    if not 0 <= index < count:
        return [
            f"--shard {index}/{count}: i counts from 0 to n−1 "
            f"(--shard 0/{count} … --shard {count - 1}/{count})"
        ]
    return []


def shard_items(items: list[BatchItem], index: int, count: int) -> list[BatchItem]:
    """Shard `index` of `count`: every count-th item from the index-th, so that the shards
    together hold each item once and get as many prompts each as they can."""
    return items[index::count]
