#!/usr/bin/env bash
# The GPU suite: one prepared script, at most about 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_suite.sh [--smoke] [--out DIR] [--cifar DIR] [--budget SECONDS]
#
# Writes DIR/gpu_suite.json (every section: ok with its figures, failed with the
# reason and the log's tail, or skipped with a reason) and DIR/gpu_suite.md (a short
# summary naming the card). Sections: equivalence checks (compiled / captured /
# sync-free vs eager), ResNet-32 step cost at batch 64 and 512 (eager, compiled,
# captured, reduce-overhead; SGD, SAM, ImbSAM, Focal-SAM, CC-SAM), CLIP ViT-B/16 step
# cost (bf16, batch 128), the loader on CUDA, 5 epochs of cifar10-lt-r100 with the
# projected 200-epoch time, and `focalsam compare` over 4 seeds in parallel.
# Each part runs under `timeout` (and within the suite's --budget); a failure is
# recorded and the suite goes on. Nothing is installed.
#
# --smoke: the CPU-runnable parts, tiny (device cpu, batch 8, 2 steps, 1 epoch, the
# demo preset), in well under a minute; GPU-only parts are reported as skipped.
# --cifar: the offline JPEG copy of CIFAR-10 (make_cifar10.py inside) or a folder
# holding cifar-10-batches-py; default: shared/data/cifar10, then ../shared/data/cifar10.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMOKE=0
OUT=""
CIFAR=""
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    --cifar) CIFAR="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (expected --smoke, --out DIR, --cifar DIR, --budget S)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$REPO/gpu_suite_out}"
mkdir -p "$OUT/parts"
OUT="$(cd "$OUT" && pwd)"
PARTS="$OUT/parts"
rm -f "$PARTS"/*.status "$PARTS"/*.json "$PARTS"/*.seconds "$PARTS"/*.log "$PARTS"/*.txt

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO/src:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
BENCH="$REPO/benchmarks"
if [ "$SMOKE" = 1 ]; then BUDGET="${BUDGET:-150}"; else BUDGET="${BUDGET:-470}"; fi
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$SMOKE" = 1 ]; then DEV=cpu; else DEV=cuda; fi
"$PYTHON" - "$PARTS/env.json" "$SMOKE" <<'EOF'
import datetime, json, platform, sys
import torch
cuda = torch.cuda.is_available()
env = {
    "card": torch.cuda.get_device_name(0) if cuda else f"no CUDA ({platform.machine()} CPU)",
    "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
    "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
}
json.dump(env, open(sys.argv[1], "w"))
EOF

now_ns() { date +%s%N; }
seconds_since() {  # seconds since a now_ns value, 3 decimals
  local ms=$(( ($(now_ns) - $1) / 1000000 ))
  printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 ))
}

skip() {  # skip NAME REASON
  echo "skipped $2" > "$PARTS/$1.status"
}

# part NAME LIMIT_S COMMAND...: run with stdout -> NAME.json, stderr -> NAME.log, under
# timeout (the smaller of LIMIT_S and what is left of the budget).
part() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then skip "$name" "suite time budget (${BUDGET} s) spent"; return; fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== $name (limit ${limit} s)" >&2
  local t0 rc
  t0=$(now_ns)
  timeout --kill-after=10 "$limit" "$@" > "$PARTS/$name.json" 2> "$PARTS/$name.log"
  rc=$?
  seconds_since "$t0" > "$PARTS/$name.seconds"
  if [ "$rc" = 0 ]; then echo ok > "$PARTS/$name.status"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "timeout after ${limit} s" > "$PARTS/$name.status"
  else echo "failed exit code $rc" > "$PARTS/$name.status"; fi
  echo "   $(cat "$PARTS/$name.status")" >&2
}

carry_over() {  # the section NAME takes NAME_run's status and log (it did not finish)
  cp "$PARTS/${1}_run.status" "$PARTS/$1.status"
  [ -f "$PARTS/${1}_run.log" ] && cp "$PARTS/${1}_run.log" "$PARTS/$1.log"
}

# ------------------------------------------------------------------ CIFAR-10 root
ROOT=""
find_cifar() {
  local c
  for c in ${CIFAR:+"$CIFAR"} "$REPO/shared/data/cifar10" "$REPO/../shared/data/cifar10"; do
    if [ -d "$c/cifar-10-batches-py" ]; then ROOT="$c"; return; fi
    if [ -f "$c/make_cifar10.py" ]; then
      if "$PYTHON" "$c/make_cifar10.py" "$WORK/cifar" > "$WORK/make_cifar.log" 2>&1; then
        ROOT="$WORK/cifar"; return
      fi
      echo "make_cifar10.py failed: $(tail -n 2 "$WORK/make_cifar.log")" >&2
    fi
  done
}
find_cifar
NO_CIFAR="no CIFAR-10 copy (tried ${CIFAR:+$CIFAR, }shared/data/cifar10 and ../shared/data/cifar10)"

FOCALSAM=("$PYTHON" -m focalsam)

# ------------------------------------------------------------------ the parts
if [ "$SMOKE" = 1 ]; then
  part checks 60 "$PYTHON" "$BENCH/gpu_checks.py" --device cpu --backend aot_eager \
    --steps 2 --batch-size 8 --json "$WORK/checks.json"
  cp "$PARTS/checks.json" "$PARTS/checks.txt"; cat "$PARTS/checks.txt" >&2
  [ -f "$WORK/checks.json" ] && cp "$WORK/checks.json" "$PARTS/checks.json"
  part step_cost_b64 60 "$PYTHON" "$BENCH/step_cost.py" --model small_cnn --device cpu \
    --batch-size 8 --methods sgd,sam,focal_sam --mode eager,captured --strict --rounds 1 \
    --steps-per-round 2 --warmup 1 --json
  skip step_cost_b512 "smoke mode: batch 512 is a GPU size"
  part vit_b16 60 "$PYTHON" "$BENCH/step_cost.py" --model vit_b16 --device cpu \
    --batch-size 2 --methods sgd,sam,focal_sam --rounds 1 --steps-per-round 1 --warmup 1 --json
  if [ -n "$ROOT" ]; then
    part loader 60 "$PYTHON" "$BENCH/loader.py" --root "$ROOT" --device cpu --repeats 1 \
      --workers 0 --limit 256 --json
  else
    skip loader "$NO_CIFAR"
  fi
  T0=$(now_ns)
  part train_run 60 "${FOCALSAM[@]}" train --preset demo epochs=1 run.device=cpu \
    "run.dir=$WORK/train"
  WALL=$(seconds_since "$T0")
  if [ "$(cat "$PARTS/train_run.status")" = ok ]; then
    part train 60 "$PYTHON" "$BENCH/suite_tools.py" train-summary "$WORK/train" "$WALL" --device cpu
  else
    carry_over train
  fi
  T0=$(now_ns)
  part compare_run 90 "${FOCALSAM[@]}" compare --preset demo --optimizers focal_sam \
    --seeds 0,1 --parallel 2 --out "$WORK/compare" epochs=1 run.device=cpu
  WALL=$(seconds_since "$T0")
  if [ "$(cat "$PARTS/compare_run.status")" = ok ]; then
    part compare 30 "$PYTHON" "$BENCH/suite_tools.py" compare-summary "$WORK/compare" "$WALL"
  else
    carry_over compare
  fi
else
  if [ "$CUDA" != 1 ]; then
    for s in checks step_cost_b64 step_cost_b512 vit_b16 loader train compare; do
      skip "$s" "no CUDA (torch.cuda.is_available() is False); run with --smoke on a CPU"
    done
  else
    part checks 120 "$PYTHON" "$BENCH/gpu_checks.py" --device cuda --json "$WORK/checks.json"
    cp "$PARTS/checks.json" "$PARTS/checks.txt"; cat "$PARTS/checks.txt" >&2
  [ -f "$WORK/checks.json" ] && cp "$WORK/checks.json" "$PARTS/checks.json"
    part step_cost_b64 150 "$PYTHON" "$BENCH/step_cost.py" --device cuda --batch-size 64 \
      --mode eager,compiled,captured,reduce_overhead --strict --json
    part step_cost_b512 120 "$PYTHON" "$BENCH/step_cost.py" --device cuda --batch-size 512 \
      --mode eager,compiled,captured,reduce_overhead --strict --rounds 3 --json
    part vit_b16 90 "$PYTHON" "$BENCH/step_cost.py" --model vit_b16 --device cuda \
      --batch-size 128 --rounds 3 --steps-per-round 3 --warmup 1 --json
    if [ -n "$ROOT" ]; then
      part loader 45 "$PYTHON" "$BENCH/loader.py" --root "$ROOT" --device cuda --repeats 2 --json
      T0=$(now_ns)
      part train_run 120 "${FOCALSAM[@]}" train --preset cifar10-lt-r100 "data_root=$ROOT" \
        epochs=5 run.device=cuda "run.dir=$WORK/train"
      WALL=$(seconds_since "$T0")
      if [ "$(cat "$PARTS/train_run.status")" = ok ]; then
        part train 60 "$PYTHON" "$BENCH/suite_tools.py" train-summary "$WORK/train" "$WALL" --device cuda
      else
        carry_over train
      fi
      T0=$(now_ns)
      part compare_run 150 "${FOCALSAM[@]}" compare --preset cifar10-lt-r100 \
        --optimizers focal_sam --seeds 0,1,2,3 --parallel 4 --out "$WORK/compare" \
        "data_root=$ROOT" epochs=5 run.device=cuda
      WALL=$(seconds_since "$T0")
      if [ "$(cat "$PARTS/compare_run.status")" = ok ]; then
        part compare 30 "$PYTHON" "$BENCH/suite_tools.py" compare-summary "$WORK/compare" "$WALL"
      else
        carry_over compare
      fi
    else
      for s in loader train compare; do skip "$s" "$NO_CIFAR"; done
    fi
  fi
fi

"$PYTHON" "$BENCH/suite_tools.py" report "$OUT" $([ "$SMOKE" = 1 ] && echo --smoke)
echo "wrote $OUT/gpu_suite.json and $OUT/gpu_suite.md ($(( $(date +%s) - START )) s)"
