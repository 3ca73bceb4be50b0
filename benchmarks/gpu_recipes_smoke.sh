#!/usr/bin/env bash
# Usage: benchmarks/gpu_recipes_smoke.sh [DATA_ROOT] [OUT]   (about 8 minutes on 2 cores)
# CPU smoke runs of the GPU recipes (issue 18, point 2): 256 training and 256 test images,
# one epoch a phase, each step's ADMM one iteration; the pruning and binary recipes start
# from the dense smoke run's weights, the Torch-Pruning runner from the ResNet-56 one's.
set -u
cd "$(dirname "$0")/.."
A=.venv/bin/admmcompress
D=$(realpath "${1:-../shared/datasets}")  # the data root that holds CIFAR10/
O=${2:-/tmp/gpu_recipes_smoke}
rm -rf $O; mkdir -p $O
S="--set data.train_subset=256 --set data.test_subset=256 --set runtime.progress=false"
n=0
t() { n=$((n+1)); local s=$(date +%s); "$@" > $O/call$n.log 2>&1; echo "exit $? in $(( $(date +%s) - s )) s: $*"; }
t $A run configs/gpu/vgg16_cifar10_dense.yaml --out $O/vgg_dense --data-dir $D $S --set pretrain.epochs=1
t $A run configs/gpu/vgg16_cifar10_prune.yaml --out $O/vgg_prune --data-dir $D $S --set init=$O/vgg_dense/model.safetensors --set admm.epochs=1 --set admm.period=1 --set retrain.epochs=1
t $A run configs/gpu/vgg16_cifar10_binary_all.yaml --out $O/vgg_binary --data-dir $D $S --set init=$O/vgg_dense/model.safetensors --set admm.epochs=1 --set admm.period=1 --set retrain.epochs=1
t $A run configs/gpu/resnet56_cifar10_dense.yaml --out $O/r56_dense --data-dir $D $S --set pretrain.epochs=1
t $A run configs/gpu/resnet56_cifar10_filter.yaml --out $O/r56_filter --data-dir $D $S --set init=$O/r56_dense/model.safetensors --set admm.epochs=1 --set admm.period=1 --set retrain.epochs=1
t $A export $O/r56_filter --compact
(cd benchmarks && t ../.venv/bin/python torch_pruning_runner.py --init $O/r56_dense/model.safetensors --target 2.14 --smoke --batch-size 512 --lr 0.02 --bf16 --name smoke_tp_resnet56 --data-dir $D)
rm -f benchmarks/results/smoke_tp_resnet56.*
for d in vgg_dense vgg_prune vgg_binary r56_dense r56_filter; do grep -h "^.*done:" $O/$d/run.log | tail -1; done
