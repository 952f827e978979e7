"""Pipeline folders written compactly, to ship inside the package: weights in float16, and a
component that several stages' pipelines share (the VAE, text encoder, tokenizer and scheduler
of the shapes world's T2I, I2V and V2V) stored once, the later folders linking to the first
(a relative symlink). `load_pipeline` reads the result like any pipeline folder; params are
cast back to the dtype asked for when loaded.

    python -m mv2_jax.weights.ship --out mv2_jax/assets/shapes \\
        t2i=runs/shapes/export/t2i i2v=runs/shapes/export/i2v v2v=runs/shapes/export/v2v
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import jax.numpy as jnp

from mv2_jax.weights.convert import write_component
from mv2_jax.weights.load import load_component, read_config
from mv2_jax.weights.new_folder import new_folder


def folder_digest(folder: Path) -> str:
    """A hash of every file below `folder` (names and bytes): equal for copies."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ship_pipelines(sources: dict[str, Path], out: Path, dtype=jnp.float16) -> dict[str, Path]:
    """Write each `name → pipeline folder` of `sources` to `out/name` (in order), weights in
    `dtype`, components identical to one written before linked to it. `out` must not exist
    (it is written as `out.partial` and renamed when complete)."""
    out = Path(out)
    with new_folder(out, action="ship") as partial:
        _write_shipped(sources, partial, dtype)
    return {name: out / name for name in sources}


def _write_shipped(sources: dict[str, Path], partial: Path, dtype) -> None:
    written: dict[str, Path] = {}  # digest of a source component → where it was written
    for name, source in sources.items():
        source = Path(source)
        index = json.loads((source / "model_index.json").read_text())
        (partial / name).mkdir(parents=True)
        shutil.copy(source / "model_index.json", partial / name / "model_index.json")
        for component, entry in index.items():
            if not (isinstance(entry, list) and entry[0]):
                continue
            src, dst = source / component, partial / name / component
            digest = folder_digest(src)
            if digest in written:
                os.symlink(os.path.relpath(written[digest], dst.parent), dst)
                continue
            if (src / "config.json").exists() and component != "scheduler":
                _, params = load_component(src, dtype=dtype)
                write_component(dst, read_config(src), params)
            else:  # tokenizer, scheduler: small text files
                shutil.copytree(src, dst)
            written[digest] = dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mv2_jax.weights.ship",
        description="Write pipeline folders compactly (float16, shared components once) for "
        "shipping in the package.",
    )
    parser.add_argument("pipelines", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--out", required=True, help="the new folder (must not exist)")
    args = parser.parse_args(argv)
    sources = {}
    for item in args.pipelines:
        name, _, folder = item.partition("=")
        if not folder or not (Path(folder) / "model_index.json").is_file():
            parser.error(f"{item!r}: give NAME=FOLDER with a pipeline folder (model_index.json)")
        sources[name] = Path(folder)
    try:
        shipped = ship_pipelines(sources, Path(args.out))
    except (OSError, ValueError) as e:
        print(f"ship: error: {e}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"wrote {', '.join(map(str, shipped.values()))}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
