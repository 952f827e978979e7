#!/usr/bin/env bash
# The wheel folder benchmarks/accelerator_check.sh installs from, made here (where PyPI is
# reachable) for the borrowed GPU machines (which reach no registry). Their image holds jax with
# the CUDA plugin, torch, flax, optax, orbax, transformers, safetensors, peft, absl-py, PyYAML,
# zipp, huggingface-hub, … but not diffusers, ml_collections, nor importlib_metadata (a need of
# diffusers) and lazy-importer (of importlib_metadata): those travel as wheels in .whl/
# (git-ignored), named in the device tool's `carry`. Versions are this environment's, so the GPU
# runs what CI runs. (Checked offline: `pip install --no-index --find-links .whl diffusers
# ml_collections` in a fresh venv holding only the image's packages that they need.)
#
#   bash benchmarks/accelerator_wheels.sh            # diffusers, ml_collections and their needs
#   bash benchmarks/accelerator_wheels.sh --with-av  # PyAV too, if it fits (it does not: below)
#
# All of these are pure-Python wheels (py3-none-any), so the GPU image's Python version does not
# matter (diffusers itself needs ≥ 3.11; the image seen so far has 3.12). PyAV is the one binary
# package: its smallest manylinux wheel (abi3, CPython ≥ 3.11) is 33–34 MiB, and the working tree
# alone is ~31 MiB of the 64 MiB that travels, so it is left out by default; nothing the check
# runs (the parity tests it selects, the UNet timings) imports it. What travels is the tracked
# and untracked-not-ignored files plus this folder: over 64 MiB, this script fails and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.whl
LIMIT_MIB=64
PYTHON=${PYTHON:-python3}
WITH_AV=0
for arg in "$@"; do
  case "$arg" in
    --with-av) WITH_AV=1 ;;
    -h | --help)
      sed -n '2,19p' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

version() {  # version DIST: its version in this environment, or a pin when it is not installed
  "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" \
    2>/dev/null || echo "$2"
}

pure=(
  "diffusers==$(version diffusers 0.42.1)"
  "ml_collections==$(version ml_collections 1.1.0)"
  "importlib_metadata==$(version importlib_metadata 10.2.0)"
  # importlib_metadata's needs: zipp, should the image's be older; lazy-importer (Python < 3.15)
  "zipp==$(version zipp 4.1.2)"
  "lazy-importer==$(version lazy-importer 0.1.0)"
)

rm -rf "$DIR"
mkdir -p "$DIR"
echo "== pure-Python wheels: ${pure[*]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  -d "$DIR" "${pure[@]}"
if [ "$WITH_AV" -eq 1 ]; then
  av="av==$(version av 18.1.0)"
  echo "== $av for manylinux x86_64, CPython 3.12 (abi3 wheels cover 3.11+)"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR" "$av"
fi

# What the device tool sends: the tracked and untracked-not-ignored files, and the carried folder.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard |
  xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
wheel_bytes=$(find "$DIR" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
echo "== $DIR:"
ls -l "$DIR"
awk -v t="$tree_bytes" -v w="$wheel_bytes" -v limit="$LIMIT_MIB" 'BEGIN {
  mib = 2 ^ 20
  printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the %d MiB that travels\n",
    w / mib, t / mib, (t + w) / mib, limit
}'
if [ $((tree_bytes + wheel_bytes)) -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "too large: the device tool refuses a working tree plus carry over $LIMIT_MIB MiB;" \
    "leave out what the check does not need (--with-av) or shrink the tree; $DIR removed" >&2
  rm -rf "$DIR"
  exit 1
fi
echo "carry it: run(command=\"bash benchmarks/accelerator_check.sh\", carry=[\"$DIR\"])"
