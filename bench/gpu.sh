#!/usr/bin/env bash
# Every GPU measurement of issue 18 in one go, in about 8 minutes on an NVIDIA H200:
#   1. adapters (cooperative matrices, f16, subgroups), the kernel selftest and the
#      cooperative-matrix probe;
#   2. gpu-train against PyTorch's fastest variants (eager, whole-step CUDA graph,
#      torch.compile reduce-overhead) in fp32/TF32 and AMP: cnn4 at batch 16, 128, 512 and
#      cnn6 at 120 (bench/compare.py, ratio_vs_best per precision class);
#   3. the default (checked) build against unchecked shaders, and this commit's GEMM inner
#      product against the old one when .gl/shaders-old holds the old files;
#   4. per-kernel profiles with achieved TFLOP/s, dispatches and host time per step;
#   5. mixed precision (cooperative-matrix dense GEMMs) against f32 on fc-b, and the dense
#      parity test binary if carried;
#   6. the speedrun preset to 99% over five seeds (time to accuracy, shader builds apart).
# Results go to bench/results/*-$STAMP* and, as one archive, to $OUT (the device tool returns
# at most 8 files).
#
# On the lent NVIDIA machines (no Rust there, no network): `bash bench/prepare-gpu.sh` here
# fills the git-ignored .gl/ with the stripped binaries, the Vulkan loader and GL dispatch
# libraries the NVIDIA Vulkan driver needs (without libglvnd0 and friends wgpu finds no
# adapter there) and the old GEMM shaders; then `run` "bash bench/gpu.sh" carrying [".gl"].
#
# QUICK=1 shrinks every step count (to try the script on lavapipe or a CPU-only machine).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
BIN=${BIN:-./target/release/gpu-train}
[ -x .gl/gpu-train ] && [ "$BIN" = ./target/release/gpu-train ] && BIN=./.gl/gpu-train
PY=${PY:-python3}
RES=bench/results
STAMP=${STAMP:-$(date +%Y-%m-%d)}
START=$(date +%s)
mkdir -p "$RES"
LOG="$RES/gpu-run-$STAMP.txt"
QUICK=${QUICK:-}
if [ -n "$QUICK" ]; then STEPS=20; CSTEPS=30; DEADLINE_A=120; DEADLINE_B=60; else STEPS=300; CSTEPS=300; DEADLINE_A=250; DEADLINE_B=100; fi
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "== [$(elapsed)s] $*" | tee -a "$LOG"; }

say "1. adapters, selftest, cooperative-matrix probe"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    command -v cc gcc || echo "no C compiler (torch.compile needs one for Triton)"
    $BIN devices
    $BIN selftest
    $BIN probe
} 2>&1 | tee -a "$LOG"

say "2. against PyTorch (compare.py; the deadlines keep it within the window)"
$PY bench/compare.py --device gpu --arch cnn4 --batch 16 128 512 --precision both --repeats 2 --steps "$CSTEPS" \
    --variants eager cudagraph compile-reduce-overhead --torch-timeout 150 --deadline "$DEADLINE_A" \
    --binary "$BIN" --name "gpu-cnn4-$STAMP" 2>&1 | tee -a "$LOG"
$PY bench/compare.py --device gpu --arch cnn6 --batch 120 --precision both --repeats 2 --steps "$CSTEPS" \
    --variants eager cudagraph compile-reduce-overhead --torch-timeout 150 --deadline "$DEADLINE_B" \
    --binary "$BIN" --name "gpu-cnn6-$STAMP" 2>&1 | tee -a "$LOG"

say "3. checked (default) against unchecked shaders, new GEMM inner product against the old"
for spec in "cnn6 120" "cnn4 128" "cnn4 16"; do
    set -- $spec
    for variant in default unchecked old; do
        if [ $variant = old ] && [ ! -d .gl/shaders-old ]; then continue; fi
        case $variant in
            default) env -u GPU_TRAIN_UNCHECKED_SHADERS -u GPU_TRAIN_SHADER_DIR \
                $BIN bench --arch "$1" --batch "$2" --steps "$STEPS" --backend gpu ;;
            unchecked) GPU_TRAIN_UNCHECKED_SHADERS=1 $BIN bench --arch "$1" --batch "$2" --steps "$STEPS" --backend gpu ;;
            old) GPU_TRAIN_SHADER_DIR=.gl/shaders-old $BIN bench --arch "$1" --batch "$2" --steps "$STEPS" --backend gpu ;;
        esac > "$RES/gpu-checks-$1-b$2-$variant-$STAMP.json" 2>>"$LOG"
        echo "$1 b$2 $variant: $(grep -o '"seconds_per_step":[0-9.e-]*' "$RES/gpu-checks-$1-b$2-$variant-$STAMP.json")" | tee -a "$LOG"
    done
done

say "4. profiles: per-kernel time and TFLOP/s, dispatches and host time per step"
for spec in "cnn4 16" "cnn4 128" "cnn6 120" "speedrun 256"; do
    set -- $spec
    $BIN bench --arch "$1" --batch "$2" --steps "$STEPS" --backend gpu --profile \
        > "$RES/gpu-profile-$1-b$2-$STAMP.json" 2> "$RES/gpu-profile-$1-b$2-$STAMP.txt"
    cat "$RES/gpu-profile-$1-b$2-$STAMP.txt" >> "$LOG"
done

say "5. mixed precision (cooperative-matrix dense GEMMs) against f32"
for p in f32 mixed; do
    $BIN bench --arch fc-b --batch 128 --steps "$STEPS" --backend gpu --precision $p 2>&1 | tee -a "$LOG"
done
if [ -x .gl/gpu_parity ]; then
    CI=true .gl/gpu_parity dense_products --nocapture 2>&1 | tail -20 | tee -a "$LOG"
fi

say "6. speedrun to 99%: five seeds (training time excludes shader builds and test evaluation)"
for s in 1 2 3 4 5; do
    $BIN --arch speedrun --backend gpu --seed "$s" --no-checkpoint --out "/tmp/speedrun-s$s.safetensors" 2>&1 | tee -a "$LOG"
done
$PY - "$LOG" <<'EOF' | tee -a "$LOG"
import re, sys
text = open(sys.argv[1]).read().split("6. speedrun")[-1]
runs = re.findall(r"done: (\d+) epochs in ([0-9.]+)s; test accuracy ([0-9.]+)%", text)
print(f"speedrun: {len(runs)} runs, training seconds {[float(r[1]) for r in runs]}, accuracy {[float(r[2]) for r in runs]}, "
      f"{sum(float(r[2]) >= 99.0 for r in runs)} of {len(runs)} at 99.0% or more")
EOF

say "done"
# The device tool returns at most 8 files from $OUT: send one archive.
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-results-$STAMP.tgz" "$RES"/*"$STAMP"* 2>/dev/null || true; fi
