"""An evaluation's output folder: the records it has finished (`results.jsonl`, one line each,
appended as each one finishes, so a long evaluation never loses finished work), the settings
they were made with (`settings.json`), and the reports written from them at the end —
`results.json` (every record, the summaries) and `results.md` (tables to paste into
docs/benchmarks.md).

A rerun with the same folder skips the records it already holds; it must use the same
settings (models, steps, sizes, seeds, ablations), or its numbers would mix two evaluations —
`ResultsLog` refuses, naming what differs. The prompts and the number of seeds may change: a
rerun with more of them adds the missing records only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from mv2_jax.evaluation.shapes import GROUPS, METRICS, TARGETS, VFI_METRICS, summarise

RECORDS, SETTINGS, RESULTS_JSON, RESULTS_MD = (
    "results.jsonl",
    "settings.json",
    "results.json",
    "results.md",
)
GROUP_TITLES = {"heldout": "held-out", "train": "training", "all": "all"}


class SettingsMismatch(ValueError):
    """The folder holds records made with other settings."""


class ResultsLog:
    """The finished records of the evaluation in `folder` (created if missing). Each record is
    a JSON object with a "key" (unique: e.g. prompt and seed) and a "kind" ("sample" or
    "vfi")."""

    def __init__(self, folder: str | Path, settings: Mapping):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file
        self.folder.mkdir(parents=True, exist_ok=True)
        self._records = {r["key"]: r for r in _read_jsonl(self.folder / RECORDS)}
        self._check_settings()

    def _check_settings(self) -> None:
        """The folder's settings must be these once it holds records; until then (a first
        run, or one that stopped before its first record) they are (re)written."""
        path = self.folder / SETTINGS
        if not self._records or not path.exists():
            path.write_text(json.dumps(self.settings, indent=2) + "\n")
            return
        differ = _differences(json.loads(path.read_text()), self.settings)
        if differ:
            raise SettingsMismatch(
                f"{self.folder} holds results made with other settings "
                f"({'; '.join(differ)}); pass another output folder, or delete "
                f"{self.folder / RECORDS} and {path} to start over"
            )

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Mapping) -> None:
        """Append one finished record (written and flushed at once)."""
        record = _plain(dict(record))
        with open(self.folder / RECORDS, "a") as file:
            file.write(json.dumps(record) + "\n")
        self._records[record["key"]] = record

    def records(self, kind: str, keys=None) -> list[dict]:
        """The records of `kind`, in the order of `keys` (those present) or as added."""
        chosen = self._records if keys is None else [k for k in keys if k in self._records]
        return [self._records[k] for k in chosen if self._records[k]["kind"] == kind]


def _differences(there, now, where: str = "") -> list[str]:
    """ "key.sub: X there, Y now" for every leaf where two JSON values differ."""
    if isinstance(there, dict) and isinstance(now, dict):
        keys = sorted(set(there) | set(now))
        return [
            line
            for k in keys
            for line in _differences(there.get(k), now.get(k), f"{where}.{k}" if where else k)
        ]
    return [] if there == now else [f"{where}: {there!r} there, {now!r} now"]


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file. A last line cut off by an interrupted write is removed from
    the file (its record is redone), so that new records start on a line of their own."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not JSON; fix or delete it") from None
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _plain(value):
    """JSON-ready: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------- reports


def write_reports(
    folder: str | Path, settings: Mapping, samples: list, vfi: list, about: Mapping | None = None
) -> dict:
    """results.json and results.md in `folder` from the sample and VFI records (`about`: how
    they were made, e.g. the command and versions); returns the results.json content."""
    folder = Path(folder)
    results = _plain(
        {
            "settings": dict(settings),
            "about": dict(about or {}),
            "summary": summarise(samples),
            "vfi_summary": summarise(vfi, VFI_METRICS) if vfi else None,
            "samples": samples,
            "vfi": vfi,
        }
    )
    (folder / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    (folder / RESULTS_MD).write_text(markdown(results))
    return results


def markdown(results: Mapping) -> str:
    """The summaries as markdown tables (held-out / training / all columns), with the
    settings that made them."""
    settings = results["settings"]
    lines = [f"Shapes-world evaluation: {_describe(settings)}.", ""]
    lines += _table(results["summary"], METRICS, "prompts × seeds", with_targets=True)
    if results.get("vfi_summary"):
        lines += ["", *_table(results["vfi_summary"], VFI_METRICS, "world clips")]
    return "\n".join(lines) + "\n"


def _table(summary: Mapping, metrics, count_label: str, with_targets: bool = False) -> list[str]:
    header = ["metric", *(GROUP_TITLES[g] for g in GROUPS)]
    if with_targets:
        header.append("target")
    rows = [[count_label, *(str(summary[g]["count"]) for g in GROUPS)]]
    if with_targets:
        rows[0].append("")
    for key, title, style in metrics:
        values = [summary[g].get(key) for g in GROUPS]
        if all(v is None for v in values):
            continue  # not measured in this evaluation (e.g. key images only)
        row = [title, *(_format(v, style) for v in values)]
        if with_targets:
            row.append(f"≥ {TARGETS[key]:.0%}" if key in TARGETS else "")
        rows.append(row)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _format(value, style: str) -> str:
    if value is None:
        return "—"
    if style == "percent":
        return f"{value:.1%}"
    if style == "fine":
        return f"{value:.2%}"
    if style == "db":
        return f"{value:.2f}"
    return f"{value:.2f}"


def _describe(settings: Mapping) -> str:
    """One line on what was evaluated: stages, models, steps, ablations."""
    models = settings.get("models", {})
    parts = [f"stages {settings.get('stages')}"]
    parts += [f"{stage} {_short(path)}" for stage, path in models.items() if path]
    stages = settings.get("stage_settings", {})
    if stages:
        parts.append("steps " + ", ".join(f"{s} {v['steps']}" for s, v in stages.items()))
    if settings.get("ablate"):
        parts.append("I2V without " + ", ".join(settings["ablate"]))
    return "; ".join(parts)


def _short(path: str) -> str:
    """A model folder relative to the working directory when it is inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
