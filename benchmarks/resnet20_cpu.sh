#!/usr/bin/env bash
# Usage: [THREADS=1] benchmarks/resnet20_cpu.sh [DATA_ROOT]   (about 9 hours on 2 CPU threads, alone)
# Every ResNet-20 / CIFAR-10 experiment of issue 17 after the dense reference model, one after
# the other (two trainings at once slow each other several-fold on 2 cores). Each starts from
# the shipped weights/resnet20_cifar10_dense.safetensors. Stop it at any time and start it
# again: finished runs are kept, killed ones resume bit-exactly (the Torch-Pruning runner,
# which has no checkpoints, starts its run again).
#   quantized (4-bit, ternary, ternary with 8-bit ends)       3 x 24 epochs
#   8-bit for int8 deployment                                 3 epochs
#   filter pruning at 2x and 3x fewer FLOPs, ours and Torch-Pruning's    4 x 32 epochs
#   Torch-Pruning at 2x in one round, ours at 2x with 16-channel widths   2 x 32 epochs
#   irregular 4x/8x/16x: one-shot and iterative magnitude, one-step and progressive ADMM,
#   12 epochs each, 2 steps for the iterative ones (benchmarks/baselines.py)  12 x 12 epochs
#   deployment speed and accuracy with the trained weights (benchmarks/deploy_speed.py)
set -euo pipefail
D=$(realpath "${1:-$(dirname "$0")/../../shared/datasets}")  # the data root that holds CIFAR10/
cd "$(dirname "$0")/.."
W=weights/resnet20_cifar10_dense.safetensors
# Finished runs are only kept while the weights they started from are the same file.
mkdir -p runs
stamp=runs/resnet20_cpu.weights.sha256
now=$(sha256sum "$W" | cut -d" " -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$now" ]; then
  echo "$W changed since the runs in runs/ were made: remove runs/resnet20_* (except" \
    "runs/resnet20_dense), runs/baselines/resnet20_cifar, benchmarks/results/tp_resnet20_*" \
    "and $stamp, then start again" >&2
  exit 2
fi
echo "$now" > "$stamp"
A=.venv/bin/admmcompress
PY=$(realpath .venv/bin/python)

run() {  # CONFIG OUT: run a recipe, or resume it, or skip it when it finished
  if [ -f "$2/report.json" ]; then echo "finished earlier: $2"; return; fi
  local resume=""
  [ -f "$2/checkpoint.pt" ] && resume="--resume"
  echo "$(date -u +%FT%TZ) $1 -> $2 $resume"
  # THREADS=1: every run on one thread. A run resumes only with the THREADS it started with
  # (runtime.threads is part of its config): the filter 2x, 4-bit and ternary runs of
  # 2026-12-01 ran on one thread each, two side by side (started by hand)
  $A run "$1" --out "$2" --data-dir "$D" --no-progress $resume ${THREADS:+--set runtime.threads=$THREADS}
}

tp() {  # TARGET NAME [ARGS]: Torch-Pruning at TARGET times fewer FLOPs, 32 fine-tuning epochs
  if [ -f "benchmarks/results/$2.json" ]; then echo "finished earlier: $2"; return; fi
  echo "$(date -u +%FT%TZ) Torch-Pruning ${1}x -> benchmarks/results/$2"
  (cd benchmarks && $PY torch_pruning_runner.py --init "../$W" --target "$1" --epochs 32 \
    --name "$2" --data-dir "$D" --threads "${THREADS:-2}" "${@:3}")
}

for v in 4bit ternary ternary_8bit_ends int8; do
  run configs/resnet20_cifar10_$v.yaml runs/resnet20_$v
done
for t in 2x 3x; do
  run configs/resnet20_cifar10_filter_$t.yaml runs/resnet20_filter_$t
  [ -f runs/resnet20_filter_$t/model_compact.admmz ] || $A export runs/resnet20_filter_$t --compact
  tp "${t%x}" tp_resnet20_$t
done
tp 2 tp_resnet20_2x_1round --rounds 1   # prune to 2x at once, then fine-tune all 32 epochs
run configs/resnet20_cifar10_filter_2x_aligned.yaml runs/resnet20_filter_2x_aligned
[ -f runs/resnet20_filter_2x_aligned/model_compact.admmz ] ||
  $A export runs/resnet20_filter_2x_aligned --compact
# EPOCHS_IRREGULAR=3: the budget of the 2026-12-02 table (BENCHMARKS.md), for lack of time
(cd benchmarks && $PY baselines.py --model resnet20_cifar --rates 4 8 16 \
  --epochs "${EPOCHS_IRREGULAR:-12}" --cycles 2 --init "../$W" --data-dir "$D" \
  --work ../runs/baselines ${THREADS:+--threads $THREADS})
# NAME: the results file (benchmarks/results/NAME.md), one per CPU kind
(cd benchmarks && $PY deploy_speed.py --init "../$W" --data-dir "$D" \
  --int8-from ../runs/resnet20_int8/model.safetensors --name "${NAME:-deploy_speed}" --trained \
  "ours 2x (trained)=../runs/resnet20_filter_2x/model_compact.admmz" \
  "ours 2x aligned (trained)=../runs/resnet20_filter_2x_aligned/model_compact.admmz" \
  "ours 3x (trained)=../runs/resnet20_filter_3x/model_compact.admmz" \
  "Torch-Pruning 2x (trained)=results/tp_resnet20_2x.pt" \
  "Torch-Pruning 3x (trained)=results/tp_resnet20_3x.pt")
