"""The JSON sidecar beside each video of a study arm, and reading an arm folder back.

`sample.py batch` writes `DIR/<stem>.mp4` with `DIR/<stem>.json` beside it; the sidecar holds
the prompt, seed, negative prompt and the video's file name, plus every setting that made it.
A study pairs the videos of two arms by (prompt, seed) through `read_arm`. Videos made by
another system join a study through `write_sidecar`. No jax here: the study server imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

SLUG_LENGTH = 48  # characters of the prompt kept in a file name; the hash keeps names apart
HASH_LENGTH = 10  # hex digits of sha256: 40 bits, so two items of one arm never share a stem


@dataclass(frozen=True)
class ArmVideo:
    """One video of an arm: its (prompt, seed), the video's absolute path and the sidecar."""

    prompt: str
    seed: int
    video: Path
    sidecar: dict


def video_stem(prompt: str, seed: int) -> str:
    """The file name (without suffix) of the item (prompt, seed): the prompt's words, the seed
    and a short hash of both, e.g. `a-red-circle-moving-right-s0-1f0c2a9d3e`. The same item
    gets the same name on every run and machine, which is how a rerun finds finished videos."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:SLUG_LENGTH].strip("-")
    digest = hashlib.sha256(json.dumps([prompt, seed]).encode()).hexdigest()[:HASH_LENGTH]
    return f"{slug or 'prompt'}-s{seed}-{digest}"


def sidecar_path(video: Path) -> Path:
    return Path(video).with_suffix(".json")


def read_sidecar(path: Path) -> dict:
    """A sidecar's JSON object; ValueError naming the file for anything else."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path}: not a readable JSON sidecar ({e}); fix it or remove it from the folder"
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: a sidecar holds one JSON object; fix it or remove it")
    return record


def is_item_sidecar(record: dict) -> bool:
    """Whether a JSON file describes one (prompt, seed) video (others, e.g. a study's own
    settings, may share the folder)."""
    return "prompt" in record and "seed" in record


def write_sidecar(
    video: Path, prompt: str, seed: int, negative_prompt: str | None = None, **settings
) -> Path:
    """`video`'s sidecar for a study (the video made by any system), written atomically:
    {"prompt", "seed", "negative_prompt", "video": its file name, **settings}. Returns its path."""
    video = Path(video)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed {seed!r}: give an integer")
    record = {
        "prompt": prompt,
        "seed": seed,
        "negative_prompt": negative_prompt,
        "video": video.name,
        **settings,
    }
    path = sidecar_path(video)
    temporary = path.with_name(f".{path.stem}-partial-{os.getpid()}.json")
    temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)
    return path


def read_arm(folder: str | os.PathLike) -> dict[tuple[str, int], ArmVideo]:
    """Every video of an arm folder by (prompt, seed), from the `*.json` files there that have
    "prompt" and "seed" (hidden files, e.g. a run's partial outputs, are passed over).
    ValueError, naming the file and the fix, for malformed JSON, a bad prompt or seed, a video
    that is missing, or two sidecars of one (prompt, seed)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(
            f"arm folder {folder}: no such folder; pass the --out of `sample.py batch`"
        )
    root = root.resolve()
    found: dict[tuple[str, int], ArmVideo] = {}
    sources: dict[tuple[str, int], Path] = {}
    for path in sorted(root.glob("*.json")):
        if path.name.startswith("."):
            continue
        record = read_sidecar(path)
        if not is_item_sidecar(record):
            continue
        key = _item_key(path, record)
        video = _video_path(path, record)
        if key in found:
            raise ValueError(
                f"{sources[key]} and {path}: both hold prompt {key[0]!r} seed {key[1]}; one video "
                "per (prompt, seed) in an arm: remove one of them (with its video)"
            )
        found[key] = ArmVideo(prompt=key[0], seed=key[1], video=video, sidecar=record)
        sources[key] = path
    return found


def _item_key(path: Path, record: dict) -> tuple[str, int]:
    prompt, seed = record["prompt"], record["seed"]
    if not isinstance(prompt, str):
        raise ValueError(f'{path}: "prompt" is {prompt!r}; write the prompt as a string')
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f'{path}: "seed" is {seed!r}; write the seed as an integer')
    return prompt, seed


def _video_path(path: Path, record: dict) -> Path:
    """The sidecar's video, relative to the sidecar's folder unless absolute; it must exist."""
    name = record.get("video")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f'{path}: no "video" entry; add "video": "{path.stem}.mp4" (the video\'s file name)'
        )
    video = (path.parent / name).resolve()
    if not video.is_file():
        raise ValueError(
            f"{path}: its video {name} is missing ({video}); generate it again "
            "(`sample.py batch` resumes) or remove the sidecar"
        )
    return video
