#!/usr/bin/env bash
# The accelerator check (issue 23), for a borrowed single-GPU machine (NVIDIA H100/H200) that
# reaches no package registry, in one run of a few minutes:
#   1. install diffusers and ml_collections from the carried wheel folder .whl/
#      (benchmarks/accelerator_wheels.sh makes it here; the image has jax, torch, flax, …);
#   2. print the card, the versions and the devices jax and torch see;
#   3. run the parity tests (UNet, motion, VAE, CLIP, ControlNet, attention against diffusers /
#      transformers) with jax on the GPU, in fp32 with TF32 off;
#   4. time one CFG step of the SD1.5 UNet (512²), the SDXL UNet (1024²) and the motion UNet
#      (512² × 16) in bf16, mv2_jax against diffusers (benchmarks/accelerator_step.py), and
#      print the table.
# Each section runs under its own time cap (seconds; the MV2_CHECK_*_S variables below), so a
# hang in one still lets the rest print. check.log, one JSON per model and table.md go to $OUT
# (or a fresh temp folder). Exit status: 0 when every section passed.
#
#   bash benchmarks/accelerator_check.sh            # on the GPU machine (device tool, carry .whl)
#   bash benchmarks/accelerator_check.sh --dry-run  # anywhere: tiny models on CPU, no install
set -uo pipefail  # no -e: a failed section is reported and the next one runs
cd "$(dirname "$0")/.." || exit

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,17p' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WHEELS=${MV2_CHECK_WHEELS:-.whl}
MODELS=${MV2_CHECK_MODELS:-sd15 sdxl motion}
# Time caps in seconds; a dry run on a shared CPU gets more (its compiles are slower there).
cap() { if [ "$DRY_RUN" -eq 1 ]; then echo 300; else echo "$1"; fi; }
CAP_INFO=${MV2_CHECK_INFO_S:-60}
CAP_TESTS=${MV2_CHECK_TESTS_S:-$(cap 100)}
CAP_SD15=${MV2_CHECK_SD15_S:-$(cap 80)}
CAP_SDXL=${MV2_CHECK_SDXL_S:-$(cap 140)}
CAP_MOTION=${MV2_CHECK_MOTION_S:-$(cap 110)}
# The parity tests that say whether the models compute the same numbers on this backend
# (MV2_CHECK_TESTS="" skips them).
read -r -d "" -a TESTS <<<"${MV2_CHECK_TESTS-tests/models/test_attention.py
  tests/models/test_conv.py tests/models/test_unet.py tests/models/test_motion.py
  tests/models/test_vae.py tests/models/test_clip.py tests/models/test_clip_vision.py
  tests/models/test_controlnet.py tests/weights/test_unet.py tests/weights/test_animatediff.py}" \
  || true  # -d "": every line
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # mv2_jax from the checkout
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the card
if [ "$DRY_RUN" -eq 1 ]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  # compiles ~2.5× faster, same computation (as tests/conftest.py does)
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
else
  export JAX_PLATFORMS=cuda,cpu
fi

SUMMARY=()
FAILED=0

section() {  # section NAME CAP_S SIGNAL COMMAND...: run it under its cap, note how it ended
  local name=$1 cap=$2 signal=$3
  shift 3
  echo
  echo "== $name (cap ${cap} s)"
  local t0=$SECONDS status="ok"
  # SIGNAL at the cap (pytest prints its summary on INT), KILL 20 s later if it is still there
  timeout -s "$signal" -k 20 "$cap" "$@"
  local rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="stopped at its ${cap} s cap"
  elif [ "$rc" -ne 0 ]; then
    status="failed (exit $rc)"
  fi
  if [ "$rc" -ne 0 ]; then FAILED=$((FAILED + 1)); fi
  SUMMARY+=("$name: $status, $((SECONDS - t0)) s")
}

install_wheels() {
  echo "== install from $WHEELS"
  local wanted=(diffusers ml_collections)
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "dry run: would run $PYTHON -m pip install --no-index --find-links $WHEELS ${wanted[*]}"
    return
  fi
  if [ ! -d "$WHEELS" ]; then
    echo "no $WHEELS folder: carry it (bash benchmarks/accelerator_wheels.sh makes it)"
    SUMMARY+=("install: no $WHEELS folder")
    FAILED=$((FAILED + 1))
    return
  fi
  if compgen -G "$WHEELS/av-*.whl" >/dev/null; then wanted+=(av); fi
  # Into the image's own environment (the machine is thrown away afterwards): what the image
  # already has satisfies the wheels' requirements, and pip names any that is missing.
  if "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "${wanted[@]}"; then
    SUMMARY+=("install: ok (${wanted[*]})")
  else
    SUMMARY+=("install: failed")
    FAILED=$((FAILED + 1))
  fi
}

main() {
  local start=$SECONDS
  install_wheels
  if command -v nvidia-smi >/dev/null; then
    section gpu "$CAP_INFO" TERM nvidia-smi \
      --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  fi
  section info "$CAP_INFO" TERM "$PYTHON" benchmarks/accelerator_step.py --info

  if [ "${#TESTS[@]}" -eq 0 ]; then
    echo
    echo "== tests: none selected (MV2_CHECK_TESTS)"
  elif [ "$DRY_RUN" -eq 1 ]; then
    # The selection must exist and import; running it on the CPU is what CI does anyway.
    section tests "$CAP_TESTS" INT "$PYTHON" -m pytest -q -p no:cacheprovider --collect-only \
      "${TESTS[@]}"
  else
    # fp32 parity: TF32 off in cuBLAS and cuDNN for both frameworks (NVIDIA_TF32_OVERRIDE=0);
    # jax's matmul precision is "highest" (tests/conftest.py); the torch references run on the
    # CPU, 4 workers of 4 threads.
    local workers=()
    if "$PYTHON" -c "import xdist" 2>/dev/null; then workers=(-n 4 --dist loadfile); fi
    section tests "$CAP_TESTS" INT env NVIDIA_TF32_OVERRIDE=0 OMP_NUM_THREADS=4 \
      MV2_REQUIRE_REFERENCE=1 "$PYTHON" -m pytest -q -p no:cacheprovider "${workers[@]}" \
      "${TESTS[@]}"
  fi

  local step_flags=() jsons=() model cap
  if [ "$DRY_RUN" -eq 1 ]; then step_flags=(--dry-run); fi
  for model in $MODELS; do
    case "$model" in
      sd15) cap=$CAP_SD15 ;;
      sdxl) cap=$CAP_SDXL ;;
      motion) cap=$CAP_MOTION ;;
      *)
        echo "unknown model $model (sd15, sdxl, motion)"
        FAILED=$((FAILED + 1))
        continue
        ;;
    esac
    rm -f "$OUT/$model.json"
    jsons+=("$OUT/$model.json")
    section "$model" "$cap" TERM "$PYTHON" benchmarks/accelerator_step.py --model "$model" \
      --out "$OUT/$model.json" "${step_flags[@]}"
  done

  if [ "${#jsons[@]}" -gt 0 ]; then
    echo
    "$PYTHON" benchmarks/accelerator_step.py --table "${jsons[@]}" | tee "$OUT/table.md"
  fi
  echo
  echo "== summary ($((SECONDS - start)) s; files in $OUT)"
  printf '%s\n' "${SUMMARY[@]}"
  return "$((FAILED > 0))"
}

main 2>&1 | tee "$OUT/check.log"
exit "${PIPESTATUS[0]}"
