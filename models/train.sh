#!/usr/bin/env bash
# How the shipped models in models/ were trained: every preset with its own recipe (cnn4 with
# two seeds), then five seeds of cnn5 for the ensemble, one cnn5 with its schedule over 60
# epochs, and the same with weight averaging (--ema). Logs and checkpoints go to runs/; rerun
# one line to reproduce one model (add --backend gpu on a machine with a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
mkdir -p runs
train() { # name preset seed [extra args]
    local name=$1 arch=$2 seed=$3; shift 3
    ./target/release/gpu-train --arch "$arch" --seed "$seed" --out "runs/$name.safetensors" "$@" 2>&1 | tee "runs/$name.log"
}
train mlp mlp 1 --backend cpu
train cnn-a cnn-a 1 --backend cpu
train fc-b fc-b 1 --backend cpu
train cnn2 cnn2 1 --backend cpu
train cnn4 cnn4 1 --backend cpu
train cnn4-s2 cnn4 2 --backend cpu
for s in 1 2 3 4 5; do train "cnn5-s$s" cnn5 "$s" --backend cpu; done
train cnn5-e60-s6 cnn5 6 --epochs 60 --backend cpu
train cnn5-e60-s7 cnn5 7 --epochs 60 --backend cpu   # a second sample of the line above
# The same run with weight averaging: the live weights follow the run above bit for bit.
train cnn5-e60-ema-s6 cnn5 6 --epochs 60 --ema 0.999 --backend cpu
train cnn5-ema-s1 cnn5 1 --ema 0.999 --backend cpu   # likewise, cnn5-s1 with averaging
train cnn6-s1 cnn6 1 --backend cpu   # the no-pooling design, for ensembles with cnn5
# Seeds 2-5 on a lent NVIDIA H100 (Vulkan), with GPU_TRAIN_UNCHECKED_SHADERS=1 (the shaders
# without wgpu's runtime checks, as measured in README's Speed section): about 65 s each.
# Seed 2 ran its first 4 epochs there with the kernels before commit 0ebdc06, then, when the
# session's device time ran short, epochs 5-30 on the CPU (the same line with --backend cpu
# --resume), so rerunning its line alone does not give that file bit for bit.
for s in 2 3 4 5; do GPU_TRAIN_UNCHECKED_SHADERS=1 train "cnn6-s$s" cnn6 "$s" --backend gpu; done
train cnn3 cnn3 1 --backend cpu
