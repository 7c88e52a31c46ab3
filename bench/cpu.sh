#!/usr/bin/env bash
# Every CPU measurement of issue 33 in one go, on the machine it runs on (about 25 minutes on
# a 2-core machine; run it on an otherwise idle machine, since both programs use every core):
#   1. per-op profiles (`gpu-train bench --backend cpu --profile`): cnn4 at batch 16 and 128,
#      cnn6 at 120, speedrun at 256 alone and as an array of 8, resnet20-gray at 128, each op's
#      share of the step (bench/results/cpu-profile-$NAME.txt);
#   2. gpu-train against PyTorch's fastest CPU mode (eager and torch.compile, same threads),
#      side by side in one run per model (bench/compare.py): cnn4 at 16 and 128, cnn6 at 120,
#      resnet20-gray at 128, and speedrun's array of 8 at 256 against its K = 1 and PyTorch's
#      K-model routes (bench/results/cpu-*-$NAME.json).
# The direct convolutions use the best instruction set of the CPU; GPU_TRAIN_CPU_ISA=avx2 on an
# AVX-512 machine measures the AVX2 kernels there (the device line of each result says which
# ran). NAME (default: the CPU's vector width and the date) tells machines apart:
#   NAME=zen3-avx2 bash bench/cpu.sh
#   GPU_TRAIN_CPU_ISA=avx2 NAME=xeon-forced-avx2 bash bench/cpu.sh
# PY names a Python with torch (default python3); QUICK=1 shrinks every step count (to try the
# script).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/gpu-train}
PY=${PY:-python3}
RES=bench/results
NAME=${NAME:-$(grep -q avx512f /proc/cpuinfo && echo avx512 || echo avx2)-$(date +%Y-%m-%d)}
QUICK=${QUICK:-}
mkdir -p "$RES"
[ -x "$BIN" ] || cargo build --release
q() { if [ -n "$QUICK" ]; then echo "$2"; else echo "$1"; fi; }

prof="$RES/cpu-profile-$NAME.txt"
{
    echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) $(nproc) cores GPU_TRAIN_CPU_ISA=${GPU_TRAIN_CPU_ISA:-}"
    for c in "cnn4 16 $(q 100 3)" "cnn4 128 $(q 15 2)" "cnn6 120 $(q 12 2)" "speedrun 256 $(q 12 2)" \
        "speedrun 256 $(q 6 1) 1..8" "resnet20-gray 128 $(q 8 1)"; do
        set -- $c
        seeds=${4:+--seeds $4}
        echo "## $BIN bench --backend cpu --arch $1 --batch $2 --steps $3 --warmup 2 --profile $seeds"
        "$BIN" bench --backend cpu --arch "$1" --batch "$2" --steps "$3" --warmup 2 --profile $seeds 2>&1
    done
} >"$prof"
echo "profiles: $prof"

cmp() { "$PY" bench/compare.py --device cpu --python "$PY" --variants eager compile "$@"; }
cmp --arch cnn4 --batch 16 128 --steps "$(q 60 3)" --warmup 5 --repeats "$(q 3 1)" --name "cpu-cnn4-$NAME"
cmp --arch cnn6 --batch 120 --steps "$(q 12 2)" --warmup 2 --repeats "$(q 3 1)" --name "cpu-cnn6-$NAME"
cmp --arch resnet20-gray --batch 128 --steps "$(q 8 2)" --warmup 2 --repeats "$(q 2 1)" --name "cpu-resnet20-gray-$NAME"
cmp --arch speedrun --batch 256 --seeds 1 8 --steps "$(q 10 2)" --warmup 2 --repeats "$(q 3 1)" --name "cpu-arrays-speedrun-$NAME"
