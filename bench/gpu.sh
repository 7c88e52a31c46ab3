#!/usr/bin/env bash
# Every GPU measurement of issues 18, 24 and 31 in one go, sized for about 8.5 minutes on an
# NVIDIA H200 (BUDGET below):
#   1. adapters (cooperative matrices, f16, subgroups), the kernel selftest and the
#      cooperative-matrix probe;
#   2. K models at once (issue 24): cnn4 at batch 16 trained as arrays of K = 1, 8, 16
#      (`gpu-train bench --seeds 1..K`) against PyTorch's K-model routes (K models one after
#      another, or torch.func.vmap over stacked parameters; eager, whole-step CUDA graph,
#      torch.compile reduce-overhead): seconds, dispatches and host seconds per member-step
#      (bench/compare.py --seeds; target: K=8 at least 5x K=1's member-steps per second,
#      and ahead of PyTorch's fastest K-model route);
#   3. gpu-train against PyTorch's fastest variants (eager, whole-step CUDA graph,
#      torch.compile reduce-overhead) in fp32/TF32 and AMP: cnn4 at batch 16, 128, 512,
#      cnn6 at 120 and the residual presets resnet20 (RGB 32x32) and resnet20-gray (28x28) at
#      128 (bench/compare.py, ratio_vs_best per precision class);
#   4. K models at once for fc-b at batch 16 and cnn6 at batch 120, K = 1 and 8, against
#      PyTorch eager and whole-step CUDA graph only (no compile: it does not fit the time);
#   5. the default (checked) build against unchecked shaders, and this commit's GEMM inner
#      product against the old one when .gl/shaders-old holds the old files;
#   6. per-kernel profiles with achieved TFLOP/s, dispatches and host time per step (cnn4 at
#      batch 16 also as an array of 8; resnet20 at 128);
#   7. mixed precision (cooperative-matrix dense GEMMs) against f32 on fc-b, and the dense
#      parity test binary if carried;
#   8. the speedrun preset to 99% over five seeds (time to accuracy, shader builds apart).
# Every bench and training run tunes its kernels first (--kernels tuned, cached after the first
# run of a shape); 5b times the tuned kernels against --kernels default side by side.
# The compare.py cases (2-4) share the time: each has a --deadline (after it nothing new is
# started; a PyTorch process still running is stopped there), the smaller of its own cap and
# what is left of BUDGET seconds once TAIL seconds are kept for sections 5-8. A case cut short
# records what did not run ("not run: --deadline reached"). `BUDGET=600 bash bench/gpu.sh`
# gives the cases more room.
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
# Caps (seconds) of the compare.py cases, in the order they run: the arrays of cnn4 (2), cnn4,
# cnn6 and the residual presets against PyTorch (3), the arrays of fc-b and cnn6 (4). TAIL: sections 5-8 (about twenty
# short bench runs and five speedrun trainings). Both are estimates, not yet timed on an H200:
# the log's [seconds] marks show where the time went.
if [ -n "$QUICK" ]; then
    STEPS=20; CSTEPS=30; ASTEPS=10; KS="1 2"; KS_SMALL="1 2"
    CAP_ARRAYS=120; CAP_A=120; CAP_B=60; CAP_R=60; CAP_SMALL=60; BUDGET=${BUDGET:-100000}; TAIL=0
else
    STEPS=300; CSTEPS=300; ASTEPS=200; KS="1 8 16"; KS_SMALL="1 8"
    CAP_ARRAYS=130; CAP_A=130; CAP_B=45; CAP_R=30; CAP_SMALL=25; BUDGET=${BUDGET:-510}; TAIL=100
fi
elapsed() { echo $(( $(date +%s) - START )); }
# The --deadline of a case: its cap, or what is left of the budget if that is less (never < 0).
deadline() { local left=$(( BUDGET - TAIL - $(elapsed) )); [ "$left" -lt 0 ] && left=0; echo $(( left < $1 ? left : $1 )); }
say() { echo "== [$(elapsed)s] $*" | tee -a "$LOG"; }

say "1. adapters, selftest, cooperative-matrix probe"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    command -v cc gcc || echo "no C compiler (torch.compile needs one for Triton)"
    $BIN devices
    $BIN selftest
    $BIN probe
} 2>&1 | tee -a "$LOG"

say "2. K models at once: cnn4 batch 16, K = $KS, against PyTorch's K-model routes (compare.py --seeds)"
$PY bench/compare.py --device gpu --arch cnn4 --batch 16 --seeds $KS --repeats 2 --steps "$ASTEPS" \
    --variants eager cudagraph compile-reduce-overhead --torch-timeout 150 --deadline "$(deadline $CAP_ARRAYS)" \
    --binary "$BIN" --name "gpu-arrays-cnn4-$STAMP" 2>&1 | tee -a "$LOG"

say "3. against PyTorch (compare.py; the deadlines keep it within the window)"
$PY bench/compare.py --device gpu --arch cnn4 --batch 16 128 512 --precision both --repeats 2 --steps "$CSTEPS" \
    --variants eager cudagraph compile-reduce-overhead --torch-timeout 150 --deadline "$(deadline $CAP_A)" \
    --binary "$BIN" --name "gpu-cnn4-$STAMP" 2>&1 | tee -a "$LOG"
$PY bench/compare.py --device gpu --arch cnn6 --batch 120 --precision both --repeats 2 --steps "$CSTEPS" \
    --variants eager cudagraph compile-reduce-overhead --torch-timeout 150 --deadline "$(deadline $CAP_B)" \
    --binary "$BIN" --name "gpu-cnn6-$STAMP" 2>&1 | tee -a "$LOG"
for arch in resnet20 resnet20-gray; do
    $PY bench/compare.py --device gpu --arch "$arch" --batch 128 --precision f32 --repeats 2 --steps "$ASTEPS" \
        --variants eager cudagraph compile-reduce-overhead --torch-timeout 100 --deadline "$(deadline $CAP_R)" \
        --binary "$BIN" --name "gpu-$arch-$STAMP" 2>&1 | tee -a "$LOG"
done

say "4. K models at once: fc-b batch 16 and cnn6 batch 120, K = $KS_SMALL (PyTorch eager and CUDA graph)"
for spec in "fc-b 16" "cnn6 120"; do
    set -- $spec
    $PY bench/compare.py --device gpu --arch "$1" --batch "$2" --seeds $KS_SMALL --repeats 2 --steps "$ASTEPS" \
        --variants eager cudagraph --torch-timeout 60 --deadline "$(deadline $CAP_SMALL)" \
        --binary "$BIN" --name "gpu-arrays-$1-$STAMP" 2>&1 | tee -a "$LOG"
done

say "5. checked (default) against unchecked shaders, new GEMM inner product against the old"
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

say "5b. kernels tuned on this GPU against the default tiling (issue 32; bench/kernels.sh)"
GPU_TRAIN="$BIN" DEVICE=gpu STEPS="$STEPS" WARMUP=10 BUDGET=60 OUT="$RES/gpu-kernels-$STAMP.jsonl" \
    CASES="cnn4:16 cnn4:128 cnn6:120 cnn4:16:1..8 resnet20:128 resnet20-gray:128" bash bench/kernels.sh 2>&1 | tee -a "$LOG"

say "6. profiles: per-kernel time and TFLOP/s, dispatches and host time per step"
for spec in "cnn4 16" "cnn4 128" "cnn6 120" "speedrun 256" "resnet20 128"; do
    set -- $spec
    $BIN bench --arch "$1" --batch "$2" --steps "$STEPS" --backend gpu --profile \
        > "$RES/gpu-profile-$1-b$2-$STAMP.json" 2> "$RES/gpu-profile-$1-b$2-$STAMP.txt"
    cat "$RES/gpu-profile-$1-b$2-$STAMP.txt" >> "$LOG"
done
$BIN bench --arch cnn4 --batch 16 --seeds 1..8 --steps "$STEPS" --backend gpu --profile \
    > "$RES/gpu-profile-cnn4-b16-k8-$STAMP.json" 2> "$RES/gpu-profile-cnn4-b16-k8-$STAMP.txt"
cat "$RES/gpu-profile-cnn4-b16-k8-$STAMP.txt" >> "$LOG"

say "7. mixed precision (cooperative-matrix dense GEMMs) against f32"
for p in f32 mixed; do
    $BIN bench --arch fc-b --batch 128 --steps "$STEPS" --backend gpu --precision $p 2>&1 | tee -a "$LOG"
done
if [ -x .gl/suite ]; then
    CI=true .gl/suite gpu_parity::dense_products --nocapture 2>&1 | tail -20 | tee -a "$LOG"
fi

say "8. speedrun to 99%: five seeds (training time excludes shader builds and test evaluation)"
for s in 1 2 3 4 5; do
    $BIN --arch speedrun --backend gpu --seed "$s" --no-checkpoint --out "/tmp/speedrun-s$s.safetensors" 2>&1 | tee -a "$LOG"
done
$PY - "$LOG" <<'EOF' | tee -a "$LOG"
import re, sys
text = open(sys.argv[1]).read().split("8. speedrun")[-1]
runs = re.findall(r"done: (\d+) epochs in ([0-9.]+)s; test accuracy ([0-9.]+)%", text)
print(f"speedrun: {len(runs)} runs, training seconds {[float(r[1]) for r in runs]}, accuracy {[float(r[2]) for r in runs]}, "
      f"{sum(float(r[2]) >= 99.0 for r in runs)} of {len(runs)} at 99.0% or more")
EOF

say "done"
# The device tool returns at most 8 files from $OUT: send one archive.
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-results-$STAMP.tgz" "$RES"/*"$STAMP"* 2>/dev/null || true; fi
