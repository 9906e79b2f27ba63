#!/usr/bin/env bash
# One command measures a GPU: on a machine with one NVIDIA GPU and this checkout, from nothing, in about 8 minutes.
#
#   benchmarks/gpu_check.sh             # the GPU check (see "The interpreter" below for what it installs)
#   benchmarks/gpu_check.sh --cpu-dry   # the same stages on the CPU with tiny sizes: checks the script itself
#
# Stages, each bounded by the time left (GPU_CHECK_BUDGET seconds, default 470), each logged to $OUT/<stage>.log:
#   install     ./install.sh, unless the interpreter (GPU_CHECK_PY, default .venv/bin/python) already imports clmerge
#   preflight   torch, its CUDA build, the GPU and driver, one training step with a new head and LoRA on the device
#               (benchmarks/gpu_preflight.py); a GPU that torch cannot use stops the check here
#   tests       tests/test_gpu_path.py, tests/test_compile.py and tests/test_device_placement.py on the machine (the
#               step-loop sync test runs on CUDA under torch.cuda.set_sync_debug_mode("error"); every method's whole
#               lifecycle, kill and resume included, runs on CUDA)
#   throughput  benchmarks/gpu_throughput.py at full size, compiled, every batch full (12,800 images: 1,280 in task 0):
#               seq-lora and pm — img/s, MFU, peak memory, compile seconds, host syncs in the timed loop
#   resume      benchmarks/gpu_resume_check.py: kill -9 mid-task, resume, equality with an uninterrupted run (and a
#               second one), with deterministic kernels; host syncs and AdamW's step counters in every step loop
#   fused       (time left) seq-lora compiled with the fused q|k|v + LoRA-down path (--fused-qkv), to compare
#   eager       (time left) the eager step loop of seq-lora, for the compile speed-up
# A compact summary ends the output and is in $OUT/summary.txt (OUT: default ./gpu-check-out).
set -u -o pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--cpu-dry" ]] && DRY=1
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}
OUTDIR=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
SUM="$OUTDIR/summary.txt"
: > "$SUM"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 CLMERGE_RESULTS="$WORK/results"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "$*" | tee -a "$SUM"; }
# stage NAME MAX_SECONDS CMD...: bounded by the time left, output in $OUTDIR/NAME.log, exit status in RC
stage() {
  local name=$1 max=$2; shift 2
  local t=$(( $(left) - 5 )); (( t > max )) && t=$max
  if (( t < 10 )); then say "[$name] skipped: no time left"; : > "$OUTDIR/$name.log"; RC=124; return; fi
  local s=$(date +%s)
  timeout -k 5 "$t" "$@" > "$OUTDIR/$name.log" 2>&1; RC=$?
  say "[$name] rc=$RC$( ((RC == 124)) && echo " (timed out)") $(( $(date +%s) - s ))s (limit ${t}s)"
}

say "== clmerge GPU check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$( ((DRY)) && echo " (CPU dry run)") budget ${BUDGET}s"
say "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"

# The interpreter, first that works: GPU_CHECK_PY; .venv/bin/python; the machine's python3 when it already has a CUDA
# torch, timm and peft (a GPU node's own torch, as install.sh advises on clusters), plus any wheels carried in .whl/ for
# what it lacks (an offline machine: `pip download --no-deps -d .whl submitit datasets ...` where PyPI is reachable);
# last, ./install.sh.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
works() { "$1" -c "import torch, timm, peft, submitit, datasets, harness.cli" > /dev/null 2>&1; }
PY=${GPU_CHECK_PY:-.venv/bin/python}
if ! works "$PY" && [[ -z "${GPU_CHECK_PY:-}" ]] && python3 -c "import torch, timm, peft" > /dev/null 2>&1; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
      > "$OUTDIR/wheels.log" 2>&1 && export PYTHONPATH="$PYTHONPATH:$WORK/site"
  fi
  works python3 && PY=python3
fi
if ! works "$PY"; then
  stage install 300 ./install.sh
  PY=.venv/bin/python
  if ! works "$PY"; then
    tail -5 "$OUTDIR/install.log" | tee -a "$SUM"; say "ABORT: no working environment ($PY)"; exit 1
  fi
fi
say "python: $PY ($("$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)" 2>&1))"

if ((DRY)); then
  DEVICE=cpu
  BENCH=(--device cpu --tiny --steps 2 --warmup 1 --images 400 --repeats 1)
  RESUME=(--device cpu --method seq-lora --overrides '{"backbone.preset": "vit-micro-test", "train.epochs": 2, "train.epoch_repeats": 1}')
else
  DEVICE=auto
  BENCH=(--images 12800 --steps 25 --warmup 6 --repeats 1)
  RESUME=(--device auto --method pm --deterministic on --twice)
fi

stage preflight 90 "$PY" benchmarks/gpu_preflight.py --device "$DEVICE"
grep -E '^[a-zA-Z ]+:' "$OUTDIR/preflight.log" | tee -a "$SUM"
if ! grep -q "PREFLIGHT OK" "$OUTDIR/preflight.log"; then
  tail -3 "$OUTDIR/preflight.log" | tee -a "$SUM"; say "ABORT: pre-flight failed (see preflight.log)"; exit 1
fi

if ((DRY)); then
  say "[tests] skipped in the dry run (the suite runs them on the CPU)"
else
  stage tests 170 "$PY" -m pytest -p no:cacheprovider --tb=line -rfE tests/test_gpu_path.py tests/test_compile.py \
    tests/test_device_placement.py
  grep -E "passed|failed|^FAILED|^ERROR" "$OUTDIR/tests.log" | cut -c1-220 | tail -12 | tee -a "$SUM"
fi

stage throughput 230 "$PY" benchmarks/gpu_throughput.py "${BENCH[@]}"
grep -E '^device|^\| |^P&M|Error' "$OUTDIR/throughput.log" | tee -a "$SUM"

stage resume 120 "$PY" benchmarks/gpu_resume_check.py "$WORK/resume" "${RESUME[@]}"
grep -E '^RESUME|Error' "$OUTDIR/resume.log" | tail -3 | tee -a "$SUM"

if ! ((DRY)); then
  stage fused 90 "$PY" benchmarks/gpu_throughput.py --fused-qkv --methods seq-lora --images 12800 --steps 25 --warmup 6 --repeats 1
  grep -E '^\| seq' "$OUTDIR/fused.log" | sed 's/^/fused q|k|v: /' | tee -a "$SUM"
  stage eager 90 "$PY" benchmarks/gpu_throughput.py --compile off --methods seq-lora --images 12800 --steps 10 --warmup 2 --repeats 1
  grep -E '^\| seq' "$OUTDIR/eager.log" | sed 's/^/eager: /' | tee -a "$SUM"
fi
say "== total $(( $(date +%s) - T0 ))s; logs in $OUTDIR"
rm -rf "$WORK"
